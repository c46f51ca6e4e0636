"""Checkpoint store: one interface, a backend per URI scheme.

A checkpoint is a directory of files under a key such as
`<recipe>/<stage>/<fingerprint>/final`. It is complete only once its
`manifest.json` (every file with size and sha256) has been written, and that
file is always written last, so a reader never sees half a checkpoint.
Backends: `file://` (a local or shared volume) and `s3://` (boto3: endpoint,
region and credentials from the environment, so AWS, MinIO and SeaweedFS all
work). `hf://` plugs into the same interface.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

log = logging.getLogger(__name__)
T = TypeVar("T")

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

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove a checkpoint, manifest first so it stops being complete at once."""

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

    def delete(self, key: str) -> None:
        (self.root / key / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(self.root / key, ignore_errors=True)


def with_retries(action: Callable[[], T], what: str, attempts: int = 8, first_wait: float = 0.5) -> T:
    """Run `action`, retrying with exponential backoff on any error (a store
    that restarts, a network that drops); re-raise after the last attempt."""
    wait = first_wait
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as e:  # noqa: BLE001 - retried, then re-raised
            if attempt == attempts:
                raise
            log.warning("%s failed (attempt %d/%d: %s); retrying in %.1fs", what, attempt, attempts, e, wait)
            time.sleep(wait)
            wait = min(wait * 2, 30.0)
    raise AssertionError("unreachable")


class S3Store(CheckpointStore):
    """`s3://bucket/prefix`. boto3 reads the endpoint (AWS_ENDPOINT_URL), region
    and credentials from the environment. Large files go up in multipart
    uploads (boto3's transfer manager); every call is retried with backoff."""

    def __init__(self, uri: str, attempts: int = 8):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        parsed = urlparse(uri)
        self.uri = uri.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.attempts = attempts
        self.client = boto3.client("s3", config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60))
        self.transfer = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20)

    def _key(self, key: str, name: str = "") -> str:
        return "/".join(p for p in (self.prefix, key.strip("/"), name) if p)

    def _retry(self, action: Callable[[], T], what: str) -> T:
        return with_retries(action, what, self.attempts)

    def put(self, local_dir: Path, key: str) -> str:
        manifest = build_manifest(local_dir)
        # A re-upload under the same key is incomplete until its new manifest lands.
        self._retry(lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key, MANIFEST)), f"unpublish {key}")
        for entry in manifest["files"]:
            src, dest = str(local_dir / entry["path"]), self._key(key, entry["path"])
            self._retry(partial(self.client.upload_file, src, self.bucket, dest, Config=self.transfer), f"upload {dest}")
        body = json.dumps(manifest, indent=1).encode()
        self._retry(lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key, MANIFEST), Body=body), f"upload {key}/{MANIFEST}")
        return self.key_uri(key)

    def manifest(self, key: str) -> dict | None:
        def read():
            try:
                return json.loads(self.client.get_object(Bucket=self.bucket, Key=self._key(key, MANIFEST))["Body"].read())
            except self.client.exceptions.NoSuchKey:
                return None

        return self._retry(read, f"read {key}/{MANIFEST}")

    def get(self, key: str, cache_dir: Path) -> Path:
        manifest = self.manifest(key)
        if manifest is None:
            raise IncompleteCheckpoint(f"{self.key_uri(key)}: no complete checkpoint (manifest missing)")
        dest = Path(cache_dir) / self.bucket / self._key(key)
        for entry in manifest["files"]:
            path = dest / entry["path"]
            if path.is_file() and path.stat().st_size == entry["size"] and _sha256(path) == entry["sha256"]:
                continue  # fetched before: a retried or repeated fetch skips it
            path.parent.mkdir(parents=True, exist_ok=True)
            src = self._key(key, entry["path"])
            self._retry(partial(self.client.download_file, self.bucket, src, str(path), Config=self.transfer), f"download {src}")
        verify(dest, manifest)
        (dest / MANIFEST).write_text(json.dumps(manifest, indent=1))
        return dest

    def list(self, prefix: str) -> list[str]:
        def children() -> list[str]:
            names, token = [], None
            while True:
                kwargs = {"Bucket": self.bucket, "Prefix": self._key(prefix) + "/", "Delimiter": "/"}
                if token:
                    kwargs["ContinuationToken"] = token
                page = self.client.list_objects_v2(**kwargs)
                names += [p["Prefix"].rstrip("/").rsplit("/", 1)[-1] for p in page.get("CommonPrefixes", [])]
                if not page.get("IsTruncated"):
                    return names
                token = page["NextContinuationToken"]

        keys = [f"{prefix.rstrip('/')}/{name}" for name in self._retry(children, f"list {prefix}")]
        return sorted(k for k in keys if self.manifest(k) is not None)

    def delete(self, key: str) -> None:
        def remove():
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key, MANIFEST))
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(key) + "/")
            for obj in page.get("Contents", []):
                self.client.delete_object(Bucket=self.bucket, Key=obj["Key"])

        self._retry(remove, f"delete {key}")


def open_store(uri: str) -> CheckpointStore:
    scheme = urlparse(uri).scheme
    if scheme == "file":
        return FileStore(uri)
    if scheme == "s3":
        return S3Store(uri)
    raise ValueError(f"checkpoint store {uri!r}: scheme {scheme!r} not supported yet; allowed: file://, s3://")


def fetch(uri: str, cache_dir: Path) -> Path:
    """A local, verified copy of the checkpoint at `uri` (file:// in place)."""
    parsed = urlparse(uri)
    parent, _, name = parsed.path.rstrip("/").rpartition("/")
    store = open_store(f"{parsed.scheme}://{parsed.netloc}{parent}")
    return store.get(name, cache_dir)

