"""Models move by reference: `model.json` = {uri, revision, sha}.

`materialize` turns a reference into a local directory that transformers can
load: `file://` directly (verified against its manifest when it has one), a
checkpoint in an `s3://` or `hf://` store downloaded into the cache and
verified, a Hub model repo `hf://org/name` through the Hub cache (offline runs
use what is cached), `local:` by building the offline local models once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from posttrain.store import MANIFEST, fetch, verify


@dataclass(frozen=True)
class ModelRef:
    uri: str
    revision: str = "main"
    sha: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelRef:
        return cls(**json.loads(text))


def materialize(ref: ModelRef) -> Path:
    parsed = urlparse(ref.uri)
    if ref.uri.startswith("local:"):
        from posttrain.local_models import prepare

        return prepare(ref.uri.removeprefix("local:"))
    if parsed.scheme == "file":
        path = Path(parsed.path)
        if not path.is_dir():
            raise FileNotFoundError(f"model {ref.uri}: directory not found")
        if (path / MANIFEST).is_file():
            verify(path, json.loads((path / MANIFEST).read_text()))
        return path
    hub_repo = parsed.scheme == "hf" and len([p for p in parsed.path.split("/") if p]) == 1
    if parsed.scheme in ("s3", "hf") and not hub_repo:
        # A checkpoint in the store (hf:// keys are <namespace>/<repo>/<branch>/<folder>).
        from posttrain.local_models import cache_dir

        return fetch(ref.uri, cache_dir() / "store")
    if hub_repo:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(parsed.netloc + parsed.path, revision=ref.revision))
    raise ValueError(f"model {ref.uri}: scheme not supported; allowed: file://, s3://, hf://, local:")


MODEL_JSON = "model.json"


def write_model_ref(artifact_dir: Path, ref: ModelRef) -> None:
    artifact_dir.mkdir(parents=True, exist_ok=True)
    (artifact_dir / MODEL_JSON).write_text(ref.to_json())


def read_model_ref(artifact_dir: Path) -> ModelRef:
    path = artifact_dir / MODEL_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model artifact has no model.json")
    return ModelRef.from_json(path.read_text())
