"""Image references for a compile: `images/lock.json` (written by `make images`).

The lock holds
- `images`: {kind: reference} for the kinds train, generate, cpu: what a
  compile puts in the IR. `make images` records `REGISTRY/posttrain-<kind>:TAG@sha256:...`,
  the digest the registry returned for the push.
- `bases`: {name: {"ref", "digest"}}, the base images the Dockerfiles build
  FROM (as `ref@digest`). A null digest has not been resolved yet (this
  repository was written where no registry can be reached):
  `python -m posttrain.images.build --resolve-bases` looks it up and records it.
- `builds`: {kind: {tag, git_sha, built_at, engine, bases}}, what each pushed image was built from.
"""

from __future__ import annotations

import json
import re
from importlib import resources

KINDS = ("train", "generate", "cpu")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


def lock_text() -> str:
    return (resources.files("posttrain.images") / "lock.json").read_text()


def locked_images() -> dict[str, str]:
    """{kind: image reference} for the kinds train, generate, cpu."""
    images = dict(json.loads(lock_text())["images"])
    missing = [k for k in KINDS if not images.get(k)]
    if missing:
        raise ValueError(f"images/lock.json has no image for {', '.join(missing)}")
    return images


def is_pinned(ref: str) -> bool:
    """Whether a reference names its image by digest (`...@sha256:<64 hex>`)."""
    _, at, digest = ref.rpartition("@")
    return bool(at) and DIGEST_RE.fullmatch(digest) is not None


def unpinned(images: dict[str, str] | None = None) -> list[str]:
    """The kinds whose image is a tag only (it can change under a run): none after `make images`."""
    images = locked_images() if images is None else images
    return [kind for kind, ref in images.items() if not is_pinned(ref)]
