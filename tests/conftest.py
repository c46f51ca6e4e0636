import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "pipelines" / "smollm3.yaml"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("POSTTRAIN_CACHE", str(ROOT / ".cache"))


@pytest.fixture
def recipe_text() -> str:
    return RECIPE.read_text()


@pytest.fixture
def write_recipe(tmp_path):
    """Write a recipe into a scratch repo layout (pipelines/ beside data/)."""

    def write(text: str) -> Path:
        (tmp_path / "pipelines").mkdir(exist_ok=True)
        data = tmp_path / "data"
        if not data.exists():
            data.symlink_to(ROOT / "data")
        shared = tmp_path.parent / "shared"
        if not shared.exists():
            shared.symlink_to(ROOT.parent / "shared")
        path = tmp_path / "pipelines" / "recipe.yaml"
        path.write_text(text)
        return path

    return write


def make_checkpoint(parent: Path, name: str = "src", payload: bytes = b"weights") -> Path:
    """A small checkpoint folder (a weights file and a nested config) for store tests."""
    d = parent / name
    (d / "sub").mkdir(parents=True)
    (d / "model.safetensors").write_bytes(payload)
    (d / "sub" / "config.json").write_text('{"a": 1}')
    return d
