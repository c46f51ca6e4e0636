"""Checkpoint store: one interface, a backend per URI scheme.

A checkpoint is a directory of files under a key such as
`<recipe>/<stage>/<fingerprint>/final`. It is complete only once its
`manifest.json` (every file with size and sha256) has been written, and that
file is always written last, so a reader never sees half a checkpoint.
`file://` lives here; `s3://` and `hf://` plug into the same interface.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import urlparse

MANIFEST = "manifest.json"


class IncompleteCheckpoint(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_manifest(local_dir: Path) -> dict:
    files = sorted(p for p in local_dir.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {
        "files": [
            {"path": str(p.relative_to(local_dir)), "size": p.stat().st_size, "sha256": _sha256(p)} for p in files
        ]
    }


def manifest_digest(manifest: dict) -> str:
    """Content identity of a checkpoint: the hash of its manifest."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def verify(local_dir: Path, manifest: dict) -> None:
    for entry in manifest["files"]:
        path = local_dir / entry["path"]
        if not path.is_file() or path.stat().st_size != entry["size"] or _sha256(path) != entry["sha256"]:
            raise IncompleteCheckpoint(f"{path}: missing or does not match its manifest")


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

    def key_uri(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}"


class FileStore(CheckpointStore):
    def __init__(self, uri: str):
        self.uri = uri
        self.root = Path(urlparse(uri).path)

    def put(self, local_dir: Path, key: str) -> str:
        dest = self.root / key
        if dest.exists():
            shutil.rmtree(dest)
        tmp = dest.with_name(dest.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.copytree(local_dir, tmp, ignore=shutil.ignore_patterns(MANIFEST))
        manifest = build_manifest(tmp)
        os.rename(tmp, dest)
        (dest / (MANIFEST + ".tmp")).write_text(json.dumps(manifest, indent=1))
        os.rename(dest / (MANIFEST + ".tmp"), dest / MANIFEST)
        return self.key_uri(key)

    def manifest(self, key: str) -> dict | None:
        path = self.root / key / MANIFEST
        return json.loads(path.read_text()) if path.is_file() else None

    def get(self, key: str, cache_dir: Path | None = None) -> Path:
        manifest = self.manifest(key)
        if manifest is None:
            raise IncompleteCheckpoint(f"{self.key_uri(key)}: no complete checkpoint (manifest missing)")
        verify(self.root / key, manifest)
        return self.root / key

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted(f"{prefix.rstrip('/')}/{p.name}" for p in base.iterdir() if (p / MANIFEST).is_file())


def open_store(uri: str) -> CheckpointStore:
    scheme = urlparse(uri).scheme
    if scheme == "file":
        return FileStore(uri)
    raise ValueError(f"checkpoint store {uri!r}: scheme {scheme!r} not supported yet; allowed: file://")

