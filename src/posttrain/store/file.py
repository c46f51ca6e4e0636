"""`file://`: a local or shared volume. Renames make both the data and the
manifest appear at once."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

from posttrain.store import MANIFEST, CheckpointStore, IncompleteCheckpoint, build_manifest, verify


class FileStore(CheckpointStore):
    def __init__(self, uri: str):
        self.uri = uri
        self.root = Path(urlparse(uri).path)

    def put(self, local_dir: Path, key: str) -> str:
        dest = self.root / key
        if dest.exists():
            self.delete(key)
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
