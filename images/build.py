"""Build the pipeline's images, push them, and record their digests in images/lock.json.

    python -m posttrain.images.build --registry ghcr.io/acme [--tag T] [--push]
        [--engine docker|buildah] [--kinds train generate cpu] [--resolve-bases]
        [--lock PATH] [--platform linux/amd64] [--dry-run]

`make images REGISTRY=... [TAG=...]` runs it with --push. Each kind's image is
`REGISTRY/posttrain-<kind>:TAG`, built from images/<kind>/Dockerfile with the
repository root as context (images/<kind>/Dockerfile.dockerignore keeps the
context to what the Dockerfile copies). TAG defaults to `git rev-parse --short
HEAD`, with `-dirty` when the tree has changes (images/lock.json aside: every
build rewrites it).

After a push the lock's `images` entry becomes `REGISTRY/posttrain-<kind>:TAG@sha256:...`
(the digest the registry returned), which a compile records in the IR.
Without --push nothing is recorded: a cluster can only pull a pushed image.

Base images come from the lock's `bases`, by digest only: a base without one
stops the build before anything runs, unless --resolve-bases, which looks the
digest up (skopeo, else `docker buildx imagetools`, else buildah) and records it.

The engine is docker when `docker info` answers, else buildah (which needs no
daemon), unless --engine says. Registry credentials are the engine's own
(`docker login` / `buildah login`); nothing secret is passed to a build.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_LOCK = HERE / "lock.json"
ENGINES = ("docker", "buildah")
DEFAULT_PLATFORM = "linux/amd64"  # images/*/requirements.txt are resolved for Linux x86_64
# Build ARG -> the lock's `bases` entry, per kind (the Dockerfiles' ARGs before their first FROM).
BASE_ARGS = {
    "train": {"CUDA_IMAGE": "cuda", "PYTHON_IMAGE": "python"},
    "generate": {"CUDA_IMAGE": "cuda", "PYTHON_IMAGE": "python"},
    "cpu": {"PYTHON_IMAGE": "python"},
}
KINDS = tuple(BASE_ARGS)
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
# A registry host (with an optional port) and an optional namespace, lower case as image names must be.
REGISTRY_RE = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


class BuildError(RuntimeError):
    """A problem the user has to fix; main() prints it without a traceback."""


@dataclass
class Runner:
    """Runs (or, dry, prints) the engine's commands."""

    dry_run: bool = False

    def __call__(self, cmd: list[str], *, capture: bool = False) -> str:
        print("+ " + shlex.join(cmd), file=sys.stderr, flush=True)
        if self.dry_run:
            return ""
        # BuildKit for docker: it reads images/<kind>/Dockerfile.dockerignore, the legacy builder does not.
        env = {**os.environ, "DOCKER_BUILDKIT": "1"}
        try:
            proc = subprocess.run(cmd, cwd=ROOT, text=True, stdout=subprocess.PIPE if capture else None, env=env)
        except FileNotFoundError as e:
            raise BuildError(f"{cmd[0]} is not installed: {e}") from e
        if proc.returncode != 0:
            raise BuildError(f"`{shlex.join(cmd)}` failed with exit status {proc.returncode}")
        if capture:
            sys.stderr.write(proc.stdout)
        return proc.stdout or ""


# -- the lock ------------------------------------------------------------------------


def read_lock(path: Path) -> dict:
    try:
        lock = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BuildError(f"cannot read the images lock {path}: {e}") from e
    if not isinstance(lock.get("images"), dict) or not isinstance(lock.get("bases"), dict):
        raise BuildError(f"{path} needs an `images` and a `bases` object")
    return lock


def write_lock(path: Path, lock: dict) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(lock, indent=2) + "\n")
    tmp.replace(path)


def base_problems(lock: dict, kinds: list[str]) -> list[str]:
    """What keeps the bases these kinds build FROM from being used by digest."""
    problems = []
    for name in sorted({b for k in kinds for b in BASE_ARGS[k].values()}):
        base = lock["bases"].get(name)
        if not isinstance(base, dict) or not base.get("ref"):
            problems.append(f"base `{name}` has no `ref` in the lock")
        elif not base.get("digest"):
            problems.append(f"base `{name}` ({base['ref']}) has no digest")
        elif not DIGEST_RE.fullmatch(base["digest"]):
            problems.append(f"base `{name}` ({base['ref']}) has a malformed digest {base['digest']!r} (want sha256:<64 hex>)")
    return problems


def pinned_base(base: dict) -> str:
    """`name:tag@sha256:...`: the tag for the reader, the digest for the engine."""
    return f"{base['ref'].split('@')[0]}@{base['digest']}"


# -- the engine, git -----------------------------------------------------------------


def detect_engine() -> str:
    docker = shutil.which("docker")
    why = "docker is not installed"
    if docker:
        try:
            proc = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30)
            if proc.returncode == 0:
                return "docker"
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
            why = f"`docker info` failed ({last[0] if last else 'no output'})"
        except subprocess.TimeoutExpired:
            why = "`docker info` did not answer in 30 s"
    if shutil.which("buildah"):
        return "buildah"
    raise BuildError(f"no container engine: {why}, and buildah is not installed (or pass --engine)")


def git(*args: str) -> str:
    try:
        proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    except FileNotFoundError as e:
        raise BuildError("git is not installed: pass --tag") from e
    if proc.returncode != 0:
        raise BuildError(f"`git {' '.join(args)}` failed ({proc.stderr.strip()}): pass --tag")
    return proc.stdout.strip()


def default_tag() -> str:
    # The lock is rewritten by every build, so its changes do not make a tree dirty.
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)images/lock.json")
    return git("rev-parse", "--short", "HEAD") + ("-dirty" if dirty else "")


# -- the commands --------------------------------------------------------------------


def image_name(registry: str, kind: str) -> str:
    return f"{registry}/posttrain-{kind}"


def build_command(engine: str, kind: str, ref: str, bases: dict[str, str], labels: dict[str, str], platform: str) -> list[str]:
    dockerfile = HERE / kind / "Dockerfile"
    cmd = [engine, "build", "--platform", platform, "--file", str(dockerfile), "--tag", ref]
    if engine == "buildah":
        # Cached layers (docker keeps them anyway); buildah does not look for <Dockerfile>.dockerignore.
        cmd += ["--layers", "--ignorefile", str(dockerfile.with_name("Dockerfile.dockerignore"))]
    for arg, value in bases.items():
        cmd += ["--build-arg", f"{arg}={value}"]
    for key, value in labels.items():
        cmd += ["--label", f"{key}={value}"]
    return [*cmd, str(ROOT)]


def push(engine: str, ref: str, run: Runner, digestfile: Path) -> str:
    """Push `ref`; the digest of the manifest the registry now holds."""
    if engine == "buildah":
        run(["buildah", "push", "--digestfile", str(digestfile), ref, f"docker://{ref}"])
        digest = "" if run.dry_run else digestfile.read_text().strip()
    else:
        out = run(["docker", "push", ref], capture=True)
        # `<tag>: digest: sha256:... size: N`, the last line of a push.
        found = re.findall(r"digest: (sha256:[0-9a-f]{64})", out)
        digest = found[-1] if found else ""
        if not digest and not run.dry_run:
            # Older clients print no digest: the image's RepoDigests then hold it.
            repo = ref.rsplit(":", 1)[0]
            repo_digests = json.loads(run(["docker", "inspect", "--format", "{{json .RepoDigests}}", ref], capture=True) or "[]")
            short = re.sub(r"^(docker\.io|index\.docker\.io)/", "", repo)
            digest = next((d.split("@", 1)[1] for d in repo_digests or [] if d.split("@", 1)[0] in (repo, short)), "")
    if run.dry_run:
        return "sha256:<pushed digest>"
    if not DIGEST_RE.fullmatch(digest):
        raise BuildError(f"pushed {ref} but found no digest for it (got {digest!r})")
    return digest


def resolve_digest(engine: str, ref: str, platform: str, run: Runner) -> str:
    """The digest a base's tag points at now (the multi-arch index where the tool reports that)."""
    if shutil.which("skopeo"):
        digest = run(["skopeo", "inspect", "--format", "{{.Digest}}", f"docker://{ref}"], capture=True).strip()
    elif engine == "docker":
        out = run(["docker", "buildx", "imagetools", "inspect", "--format", "{{json .Manifest}}", ref], capture=True)
        digest = json.loads(out).get("digest", "") if out.strip() else ""
    else:
        run(["buildah", "pull", "--platform", platform, ref])
        digest = run(["buildah", "inspect", "--type", "image", "--format", "{{.FromImageDigest}}", ref], capture=True).strip()
    if run.dry_run:
        return f"sha256:<digest of {ref}>"
    if not DIGEST_RE.fullmatch(digest):
        raise BuildError(f"could not resolve a digest for {ref} (got {digest!r})")
    return digest


# -- main ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m posttrain.images.build", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--registry", default=os.environ.get("REGISTRY", ""),
                        help="where the images go, e.g. ghcr.io/acme (default: $REGISTRY)")
    parser.add_argument("--tag", default="", help="image tag (default: git short sha, -dirty for a changed tree)")
    parser.add_argument("--engine", choices=ENGINES, help="default: docker if its daemon answers, else buildah")
    parser.add_argument("--push", action="store_true", help="push, and record the pushed digests in the lock")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--resolve-bases", action="store_true", help="look up and record the base images' digests first")
    parser.add_argument("--lock", type=Path, default=DEFAULT_LOCK, help=f"the images lock (default: {DEFAULT_LOCK.relative_to(ROOT)})")
    parser.add_argument("--platform", default=DEFAULT_PLATFORM)
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run none, write nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        build(args)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def build(args: argparse.Namespace) -> None:
    # Every check that needs no engine comes before the first command.
    registry = args.registry.strip().rstrip("/")
    if not registry:
        raise BuildError("no registry: pass --registry (make images REGISTRY=ghcr.io/acme)")
    if not REGISTRY_RE.fullmatch(registry):
        raise BuildError(f"registry {registry!r} is not a registry host with an optional path, e.g. ghcr.io/acme or localhost:5000")
    kinds = list(dict.fromkeys(args.kinds))
    missing = [k for k in kinds if not (HERE / k / "Dockerfile").is_file()]
    if missing or not (ROOT / "pyproject.toml").is_file():
        raise BuildError(f"no Dockerfile for {missing} or no pyproject.toml under {ROOT}: run from a source checkout (pip install -e .)")
    lock = read_lock(args.lock)
    problems = base_problems(lock, kinds)
    unresolved = [p for p in problems if p.endswith("has no digest")]
    if problems and not (args.resolve_bases and problems == unresolved):
        raise BuildError("base images must be pinned by digest in " + str(args.lock) + ":\n  " + "\n  ".join(problems)
                         + "\nrun with --resolve-bases to look the digests up and record them")
    tag = args.tag or default_tag()
    if not TAG_RE.fullmatch(tag):
        raise BuildError(f"tag {tag!r} is not a valid image tag")
    try:
        engine = args.engine or detect_engine()
    except BuildError as e:
        if not args.dry_run:
            raise
        engine = "docker"  # a dry run shows the commands anywhere
        print(f"warning: {e}; showing docker's commands", file=sys.stderr)
    run = Runner(dry_run=args.dry_run)

    if args.resolve_bases:
        for name in sorted({b for k in kinds for b in BASE_ARGS[k].values()}):
            base = lock["bases"][name]
            base["digest"] = resolve_digest(engine, base["ref"].split("@")[0], args.platform, run)
            base["resolved_at"] = now()
            print(f"base {name}: {base['ref']} -> {base['digest']}", file=sys.stderr)
        if not args.dry_run:
            write_lock(args.lock, lock)

    revision = _try_git_head()
    if args.push and tag.endswith("-dirty"):
        print(f"warning: pushing {tag}: the images hold uncommitted changes", file=sys.stderr)
    built = {}
    with tempfile.TemporaryDirectory(prefix="posttrain-images-") as digests:
        for kind in kinds:
            ref = f"{image_name(registry, kind)}:{tag}"
            bases = {arg: pinned_base(lock["bases"][name]) for arg, name in BASE_ARGS[kind].items()}
            labels = {"org.opencontainers.image.revision": revision, "org.opencontainers.image.version": tag,
                      "org.opencontainers.image.created": now()}
            run(build_command(engine, kind, ref, bases, labels, args.platform))
            built[kind] = ref
            if not args.push:
                continue
            digest = push(engine, ref, run, Path(digests) / f"{kind}.digest")
            print(f"{kind}: {ref}@{digest}", file=sys.stderr)
            if args.dry_run:
                continue
            # Recorded after each push, so that a later failure keeps what was pushed.
            lock["images"][kind] = f"{ref}@{digest}"
            lock.setdefault("builds", {})[kind] = {"tag": tag, "git_sha": revision, "built_at": labels["org.opencontainers.image.created"],
                                                   "engine": engine, "platform": args.platform, "bases": bases}
            write_lock(args.lock, lock)
    if not args.push:
        print("built " + ", ".join(built.values()) + f"; not pushed, so {args.lock} is unchanged", file=sys.stderr)
    elif not args.dry_run:
        print(f"pushed; {args.lock} now names " + ", ".join(lock["images"][k] for k in kinds), file=sys.stderr)


def _try_git_head() -> str:
    try:
        return git("rev-parse", "HEAD")
    except BuildError:
        return "unknown"


def now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


if __name__ == "__main__":
    sys.exit(main())
