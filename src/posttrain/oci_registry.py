"""Does an image exist? A HEAD of its manifest over the OCI distribution API
(`/v2/<repository>/manifests/<tag or digest>`), as a kubelet would resolve it.

References follow Docker's rules: no registry host means Docker Hub
(registry-1.docker.io, one-part names under `library/`), no tag means
`latest`, a digest wins over a tag. Registries answer an anonymous request
with 401 and a `WWW-Authenticate: Bearer realm=...,service=...,scope=...`
challenge; the client fetches a token from the realm and asks again (or sends
Basic credentials when the challenge is Basic).

Credentials, optional (public images need none): inline `auths` entries of a
Docker config JSON, from the env var REGISTRY_AUTH (e.g. the `.dockerconfigjson`
key of an image pull Secret mapped by cluster.secrets), else
`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`. Credential helpers
(`credsStore`, `credHelpers`) are not run. Without credentials a private
image cannot be verified: that is a warning, not a problem, since nodes pull
with their own image pull secrets.

HTTPS only, except for registries on 127.0.0.1 / localhost (tests, and local
registries such as kind's).
"""

from __future__ import annotations

import base64
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from posttrain.cluster_checks import CALL_TIMEOUT_S, Finding, one_line, problem, warning

REGISTRY_AUTH_ENV = "REGISTRY_AUTH"
DOCKER_HUB = "registry-1.docker.io"
_DOCKER_HUB_ALIASES = {DOCKER_HUB, "docker.io", "index.docker.io"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# Every manifest kind a kubelet can pull: multi-arch indexes and single manifests, OCI and Docker.
MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"\w[\w.-]{0,127}")
_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}")
_PARAM_RE = re.compile(r'(\w+)=(?:"([^"]*)"|([^",\s]+))')


class RegistryError(RuntimeError):
    pass


@dataclass(frozen=True)
class ImageRef:
    registry: str  # host[:port]
    repository: str
    reference: str  # tag or digest

    @property
    def loopback(self) -> bool:
        return urlsplit(f"//{self.registry}").hostname in LOOPBACK

    @property
    def name(self) -> str:
        """repository:tag or repository@digest, as people write it."""
        return f"{self.repository}{'@' if ':' in self.reference else ':'}{self.reference}"

    @property
    def manifest_url(self) -> str:
        return f"{'http' if self.loopback else 'https'}://{self.registry}/v2/{self.repository}/manifests/{self.reference}"


def parse_image_ref(ref: str) -> ImageRef:
    """`[host[:port]/]path[:tag][@digest]` -> ImageRef; ValueError if malformed."""
    name, _, digest = ref.strip().partition("@")
    tag = None
    if name.rfind(":") > name.rfind("/"):
        name, _, tag = name.rpartition(":")
    first, sep, rest = name.partition("/")
    # The first part is a host only if it looks like one (Docker's rule).
    registry, path = (first, rest) if sep and ("." in first or ":" in first or first == "localhost") else ("docker.io", name)
    if registry in _DOCKER_HUB_ALIASES:
        registry, path = DOCKER_HUB, path if "/" in path else f"library/{path}"
    if not _REPOSITORY_RE.fullmatch(path) or (tag is not None and not _TAG_RE.fullmatch(tag)) or (digest and not _DIGEST_RE.fullmatch(digest)):
        raise ValueError(f"not a valid image reference: {ref!r}")
    return ImageRef(registry, path, digest or tag or "latest")


# -- credentials ------------------------------------------------------------------------


def _docker_configs(environ) -> list[dict]:
    """Docker config JSONs, most specific first; unreadable ones are ignored."""
    texts = [environ.get(REGISTRY_AUTH_ENV, "")]
    folder = Path(environ["DOCKER_CONFIG"]) if environ.get("DOCKER_CONFIG") else Path(environ.get("HOME") or Path.home()) / ".docker"
    try:
        texts.append((folder / "config.json").read_text())
    except OSError:
        pass
    out = []
    for text in filter(str.strip, texts):
        try:
            out.append(json.loads(text))
        except ValueError:
            continue
    return [c for c in out if isinstance(c, dict)]


def _same_registry(key: str, registry: str) -> bool:
    """An `auths` key (`host`, `https://host/v1/`...) names `registry`; Docker Hub has several names."""
    host = urlsplit(key if "://" in key else f"//{key}").netloc
    return host == registry or (host in _DOCKER_HUB_ALIASES and registry in _DOCKER_HUB_ALIASES)


def registry_credentials(registry: str, environ=os.environ) -> tuple[str, str] | None:
    """(user, password) for `registry` from the Docker configs, or None."""
    for config in _docker_configs(environ):
        for key, entry in (config.get("auths") or {}).items():
            if not _same_registry(key, registry) or not isinstance(entry, dict):
                continue
            if entry.get("username") and entry.get("password"):
                return entry["username"], entry["password"]
            try:
                user, sep, password = base64.b64decode(entry.get("auth") or "").decode().partition(":")
            except ValueError:
                continue
            if sep:
                return user, password
    return None


def _basic(credentials: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(":".join(credentials).encode()).decode()


# -- HTTP -------------------------------------------------------------------------------


class _NoCredentialsAcrossHosts(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never carry an Authorization header to another host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urlsplit(newurl).netloc != urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


# Loopback registries bypass any proxy the pod has (HTTP(S)_PROXY would otherwise catch 127.0.0.1 too).
_OPENER = urllib.request.build_opener(_NoCredentialsAcrossHosts)
_DIRECT = urllib.request.build_opener(_NoCredentialsAcrossHosts, urllib.request.ProxyHandler({}))


@dataclass
class _Response:
    status: int
    headers: Message
    body: bytes


def _request(method: str, url: str, headers: dict[str, str], timeout: float) -> _Response:
    opener = _DIRECT if urlsplit(url).hostname in LOOPBACK else _OPENER
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with opener.open(request, timeout=timeout) as r:
            return _Response(r.status, r.headers, r.read(1 << 16) if method == "GET" else b"")
    except urllib.error.HTTPError as e:
        with e:
            return _Response(e.code, e.headers, e.read(1 << 16) if method == "GET" else b"")


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="...",scope="..."` -> ("bearer", {realm, service, scope})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), {m[1].lower(): m[2] if m[2] is not None else m[3] for m in _PARAM_RE.finditer(rest)}


def _bearer_token(params: dict[str, str], ref: ImageRef, credentials: tuple[str, str] | None, timeout: float) -> str | None:
    """A pull token from the challenge's realm (anonymous, or with Basic
    credentials over HTTPS); None when the realm refuses the credentials."""
    realm = params.get("realm") or ""
    parts = urlsplit(realm)
    if parts.scheme not in ("http", "https") or (parts.scheme == "http" and parts.hostname not in LOOPBACK):
        raise RegistryError(f"token realm {realm!r} is not an HTTPS URL")
    query = {k: v for k, v in (("service", params.get("service")), ("scope", params.get("scope") or f"repository:{ref.repository}:pull")) if v}
    headers = {"User-Agent": "posttrain-preflight"}
    if credentials:
        headers["Authorization"] = _basic(credentials)
    sep = "&" if parts.query else "?"
    r = _request("GET", f"{realm}{sep}{urlencode(query)}", headers, timeout)
    if r.status in (401, 403):
        return None
    if r.status != 200:
        raise RegistryError(f"token endpoint {parts.scheme}://{parts.netloc}{parts.path} answered {r.status}")
    try:
        body = json.loads(r.body)
        return body.get("token") or body["access_token"]
    except (ValueError, KeyError, AttributeError) as e:
        raise RegistryError(f"token endpoint {parts.netloc} sent no token") from e


def _authorization(challenge: str, ref: ImageRef, credentials: tuple[str, str] | None, timeout: float) -> str | None:
    scheme, params = parse_challenge(challenge)
    if scheme == "bearer":
        token = _bearer_token(params, ref, credentials, timeout)
        return f"Bearer {token}" if token else None
    if scheme == "basic" and credentials:
        return _basic(credentials)
    return None


@dataclass(frozen=True)
class Lookup:
    status: int  # of the manifest request, after the auth dance
    code: str  # the registry's error code (MANIFEST_UNKNOWN, NAME_UNKNOWN...), if any
    digest: str  # Docker-Content-Digest of the manifest found, if the registry sent it


def manifest_lookup(ref: ImageRef, credentials: tuple[str, str] | None = None, timeout: float = CALL_TIMEOUT_S) -> Lookup:
    """Ask the registry for the manifest of `ref`, authenticating as it asks."""
    headers = {"Accept": MANIFEST_TYPES, "User-Agent": "posttrain-preflight"}
    r = _request("HEAD", ref.manifest_url, headers, timeout)
    if r.status == 401 and (auth := _authorization(r.headers.get("WWW-Authenticate", ""), ref, credentials, timeout)):
        headers["Authorization"] = auth
        r = _request("HEAD", ref.manifest_url, headers, timeout)
    if r.status in (404, 405):
        # A HEAD answer has no body: GET tells MANIFEST_UNKNOWN from NAME_UNKNOWN (and serves registries without HEAD).
        r = _request("GET", ref.manifest_url, headers, timeout)
    return Lookup(r.status, _error_code(r.body), r.headers.get("Docker-Content-Digest", "") if r.status == 200 else "")


def _error_code(body: bytes) -> str:
    try:
        return json.loads(body)["errors"][0]["code"]
    except (ValueError, KeyError, IndexError, TypeError):
        return ""


def check_image(kinds: list[str], ref_text: str, timeout: float = CALL_TIMEOUT_S, environ=os.environ) -> list[Finding]:
    """The image exists (problem if not); unverifiable without credentials (warning)."""
    what = f"image {', '.join(kinds)} {ref_text}"
    fix = f"push it (make images) or fix cluster.images.{kinds[0]}"
    try:
        ref = parse_image_ref(ref_text)
    except ValueError as e:
        return [problem("images", f"{what}: {e} — fix cluster.images.{kinds[0]}")]
    credentials = registry_credentials(ref.registry, environ)
    try:
        found = manifest_lookup(ref, credentials, timeout)
    except (OSError, RegistryError) as e:  # URLError, timeouts and TLS errors are OSErrors
        return [problem("images", f"{what}: registry {ref.registry} unreachable: {one_line(e)} — check the reference and the pod's network access")]
    status = found.status
    if status == 200:
        return []
    if status == 404:
        missing = f"repository {ref.repository}" if found.code == "NAME_UNKNOWN" else f"manifest {ref.name}"
        return [problem("images", f"{what}: not found in {ref.registry} ({missing} unknown) — {fix}")]
    if status in (401, 403):
        held = "the credentials found were refused" if credentials else f"no credentials for {ref.registry} ({REGISTRY_AUTH_ENV} or a Docker config)"
        return [warning("images", f"{what}: not verified: {ref.registry} answered {status} and {held}; nodes may still pull it "
                                  "with their image pull secrets")]
    return [problem("images", f"{what}: {ref.registry} answered HTTP {status} {found.code} — check the registry")]


def distinct_images(images: dict[str, str]) -> dict[str, list[str]]:
    """{reference: [kinds using it]}: an image shared by kinds is looked up once."""
    out: dict[str, list[str]] = {}
    for kind, ref in images.items():
        out.setdefault(ref, []).append(kind)
    return out
