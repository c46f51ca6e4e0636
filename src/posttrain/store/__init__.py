"""Checkpoint store: one interface, a backend per URI scheme.

A checkpoint is a directory of files under a key such as
`<recipe>/<stage>/<fingerprint>/final`. It is complete only once its
`manifest.json` (every file with size and sha256) has been written, and that
file is always written last (or, on the Hub, in the same atomic commit), so a
reader never sees half a checkpoint. Backends: `file://` (a local or shared
volume, store/file.py), `s3://` (boto3, store/s3.py) and `hf://` (the Hugging
Face Hub, store/hf.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

log = logging.getLogger(__name__)
T = TypeVar("T")

MANIFEST = "manifest.json"
SCHEMES = ("file", "s3", "hf")


class IncompleteCheckpoint(RuntimeError):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_manifest(local_dir: Path) -> dict:
    files = sorted(p for p in local_dir.rglob("*") if p.is_file() and p.name != MANIFEST and ".cache" not in p.relative_to(local_dir).parts)
    return {
        "files": [
            {"path": str(p.relative_to(local_dir)), "size": p.stat().st_size, "sha256": sha256_file(p)} for p in files
        ]
    }


def manifest_digest(manifest: dict) -> str:
    """Content identity of a checkpoint: the hash of its manifest."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def matches(path: Path, entry: dict) -> bool:
    return path.is_file() and path.stat().st_size == entry["size"] and sha256_file(path) == entry["sha256"]


def verify(local_dir: Path, manifest: dict) -> None:
    for entry in manifest["files"]:
        path = local_dir / entry["path"]
        if not matches(path, entry):
            raise IncompleteCheckpoint(f"{path}: missing or does not match its manifest")


def with_retries(
    action: Callable[[], T], what: str, attempts: int = 8, first_wait: float = 0.5, permanent: Callable[[Exception], bool] = lambda e: False
) -> T:
    """Run `action`, retrying with exponential backoff on any error (a store
    that restarts, a network that drops) except those `permanent` names (bad
    credentials, a missing bucket); re-raise after the last attempt."""
    wait = first_wait
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as e:  # noqa: BLE001 - retried, then re-raised
            if attempt == attempts or permanent(e):
                raise
            log.warning("%s failed (attempt %d/%d: %s); retrying in %.1fs", what, attempt, attempts, e, wait)
            time.sleep(wait)
            wait = min(wait * 2, 30.0)
    raise AssertionError("unreachable")


class CheckpointStore(ABC):
    uri: str

    @abstractmethod
    def put(self, local_dir: Path, key: str) -> str:
        """Upload a directory; the manifest goes last. Returns the checkpoint's URI."""

    @abstractmethod
    def get(self, key: str, cache_dir: Path) -> Path:
        """A local directory holding the verified checkpoint."""

    @abstractmethod
    def manifest(self, key: str) -> dict | None:
        """The manifest of a complete checkpoint, or None."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys of the complete checkpoints directly under `prefix`."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove a checkpoint, manifest first so it stops being complete at once."""

    def release(self, local_dir: Path, key: str, to_main: bool = False) -> str | None:
        """Make the model just put under `key` loadable where the backend has
        such a place (the Hub: the root of the stage's branch, and `main` if
        asked). Returns that location, or None where keys are the place."""
        return None

    def key_uri(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}"


def open_store(uri: str) -> CheckpointStore:
    scheme = urlparse(uri).scheme
    if scheme == "file":
        from posttrain.store.file import FileStore

        return FileStore(uri)
    if scheme == "s3":
        from posttrain.store.s3 import S3Store

        return S3Store(uri)
    if scheme == "hf":
        from posttrain.store.hf import HubStore

        return HubStore(uri)
    raise ValueError(f"checkpoint store {uri!r}: scheme {scheme!r} not supported; allowed: file://, s3://, hf://")


def fetch(uri: str, cache_dir: Path) -> Path:
    """A local, verified copy of the checkpoint at `uri` (file:// in place)."""
    parsed = urlparse(uri)
    parent, _, name = parsed.path.rstrip("/").rpartition("/")
    store = open_store(f"{parsed.scheme}://{parsed.netloc}{parent}")
    return store.get(name, cache_dir)
