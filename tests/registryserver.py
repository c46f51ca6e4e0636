"""A fake OCI registry for tests, on 127.0.0.1 over plain HTTP.

`FakeRegistry` serves the part of the OCI distribution API that an image
existence check uses: `GET /v2/` and `HEAD`/`GET /v2/<name>/manifests/<tag or
digest>`, with the answers real registries give:

* 200 with `Content-Type` (the manifest's media type), `Docker-Content-Digest`
  and `Content-Length`; the manifest body on GET;
* 404 with `{"errors": [{"code": "NAME_UNKNOWN" | "MANIFEST_UNKNOWN", ...}]}`
  (empty body on HEAD); a manifest whose media type the request's `Accept`
  does not list is MANIFEST_UNKNOWN too, as a registry answers a client that
  cannot read an image index (no `Accept` at all: Docker v2 manifests only);
* 401 with a `WWW-Authenticate` challenge when the request is not authorised.

Auth modes (`auth=`):

* "bearer" (default), Docker's token flow: the challenge is
  `Bearer realm="<this server>/token",service="fake-registry",scope="repository:<name>:pull"`.
  `GET /token?service=...&scope=...` answers `{"token", "access_token",
  "expires_in"}`: anonymous callers get pull rights on public repositories
  only (like Docker Hub, a token without rights, not an error), Basic
  credentials of a known user get private ones too, wrong credentials get 401.
  A token without the needed right gets 401 `error="insufficient_scope"`.
* "basic": the challenge is `Basic realm="fake-registry"`; every request needs
  a known user's Basic credentials.
* "none": no auth.

`requests` records (method, path, auth scheme sent, status) of every request.
Started and stopped by the test (or `with FakeRegistry() as r:`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
SERVICE = "fake-registry"
_MANIFEST_PATH = re.compile(r"/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)")


@dataclass
class _Manifest:
    media_type: str
    body: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.body).hexdigest()


class FakeRegistry:
    def __init__(self, auth: str = "bearer", users: dict[str, str] | None = None):
        assert auth in ("bearer", "basic", "none")
        self.auth = auth
        self.users = dict(users or {})
        self.requests: list[tuple[str, str, str | None, int]] = []
        self._repos: dict[str, dict[str, _Manifest]] = {}  # name -> {tag or digest: manifest}
        self._private: set[str] = set()
        self._tokens: dict[str, set[str]] = {}  # token -> repositories it may pull
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.host = ""

    # -- content ---------------------------------------------------------------------------

    def push(self, name: str, tag: str, media_type: str = OCI_INDEX, private: bool = False) -> str:
        """Store a small manifest of `media_type` under `name:tag`; returns its digest."""
        key = "manifests" if media_type == OCI_INDEX else "layers"
        manifest = _Manifest(media_type, json.dumps({"schemaVersion": 2, "mediaType": media_type, key: [], "tag": tag}).encode())
        with self._lock:
            repo = self._repos.setdefault(name, {})
            repo[tag] = repo[manifest.digest] = manifest
            if private:
                self._private.add(name)
        return manifest.digest

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                registry._handle(self)

            do_HEAD = do_GET

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> FakeRegistry:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- requests --------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        if url.path == "/token" and h.command == "GET":
            self._token(h, parse_qs(url.query))
        elif url.path == "/v2/":
            self._send(h, 200, {}) if self._allowed(h, None) else self._challenge(h, None)
        elif match := _MANIFEST_PATH.fullmatch(url.path):
            self._manifest(h, match["name"], match["ref"])
        else:
            self._error(h, 404, "NOT_FOUND", f"no route for {h.command} {url.path}")

    def _credentials_ok(self, h: BaseHTTPRequestHandler) -> bool | None:
        """True/False for Basic credentials sent (known user or not), None if none were sent."""
        scheme, _, value = (h.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return None
        user, _, password = base64.b64decode(value).decode().partition(":")
        return self.users.get(user) == password

    def _allowed(self, h: BaseHTTPRequestHandler, name: str | None) -> bool:
        if self.auth == "none":
            return True
        if self.auth == "basic":
            return bool(self._credentials_ok(h))
        scheme, _, token = (h.headers.get("Authorization") or "").partition(" ")
        with self._lock:
            rights = self._tokens.get(token) if scheme.lower() == "bearer" else None
        return rights is not None and (name is None or name in rights)

    def _token(self, h: BaseHTTPRequestHandler, query: dict) -> int:
        if self.auth != "bearer":
            return self._error(h, 404, "NOT_FOUND", "no token endpoint")
        credentials = self._credentials_ok(h)
        if credentials is False:
            return self._error(h, 401, "UNAUTHORIZED", "incorrect username or password")
        scope = (query.get("scope") or [""])[0]
        name = scope.split(":")[1] if scope.count(":") == 2 else None
        token = secrets.token_hex(16)
        with self._lock:
            granted = {name} if name and (name not in self._private or credentials) else set()
            self._tokens[token] = granted
        return self._send(h, 200, {"token": token, "access_token": token, "expires_in": 300})

    def _challenge(self, h: BaseHTTPRequestHandler, name: str | None) -> int:
        if self.auth == "basic":
            header = f'Basic realm="{SERVICE}"'
        else:
            header = f'Bearer realm="http://{self.host}/token",service="{SERVICE}"'
            if name:
                header += f',scope="repository:{name}:pull"'
            if (h.headers.get("Authorization") or "").lower().startswith("bearer "):
                header += ',error="insufficient_scope"'
        return self._error(h, 401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": header})

    def _manifest(self, h: BaseHTTPRequestHandler, name: str, ref: str) -> int:
        if not self._allowed(h, name):
            return self._challenge(h, name)
        with self._lock:
            repo = self._repos.get(name)
            manifest = repo.get(ref) if repo else None
        if repo is None:
            return self._error(h, 404, "NAME_UNKNOWN", f"repository name not known to registry: {name}")
        accepted = {t.split(";")[0].strip() for t in (h.headers.get("Accept") or DOCKER_MANIFEST).split(",")}
        if manifest is None or manifest.media_type not in accepted:
            return self._error(h, 404, "MANIFEST_UNKNOWN", f"manifest unknown: {ref}")
        headers = {"Docker-Content-Digest": manifest.digest}
        return self._send(h, 200, manifest.body, headers, content_type=manifest.media_type)

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str, message: str, headers: dict | None = None) -> int:
        return self._send(h, status, {"errors": [{"code": code, "message": message}]}, headers)

    def _send(self, h: BaseHTTPRequestHandler, status: int, body, headers: dict | None = None,
              content_type: str = "application/json") -> int:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        # Recorded before answering, so that a test reading `requests` after its call sees this one.
        scheme = (h.headers.get("Authorization") or "").partition(" ")[0].lower() or None
        with self._lock:
            self.requests.append((h.command, urlsplit(h.path).path, scheme, status))
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        h.send_header("Docker-Distribution-API-Version", "registry/2.0")
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)
        return status
