"""Image references for a compile: `images/lock.json` (written by `make images`)."""

from __future__ import annotations

import json
from importlib import resources


def lock_text() -> str:
    return (resources.files("posttrain.images") / "lock.json").read_text()


def locked_images() -> dict[str, str]:
    """{kind: image reference} for the kinds train, generate, cpu."""
    return dict(json.loads(lock_text())["images"])
