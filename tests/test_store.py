"""The file:// checkpoint store: manifest last, only complete checkpoints listed,
fetches verified."""

import json

import pytest
from conftest import make_checkpoint

from posttrain.store import MANIFEST, IncompleteCheckpoint, manifest_digest, open_store


def test_put_get_list(tmp_path):
    store = open_store(f"file://{tmp_path / 'store'}")
    uri = store.put(make_checkpoint(tmp_path), "run/sft/abc/checkpoint-10")
    assert uri == f"file://{tmp_path / 'store'}/run/sft/abc/checkpoint-10"
    manifest = store.manifest("run/sft/abc/checkpoint-10")
    assert sorted(f["path"] for f in manifest["files"]) == ["model.safetensors", "sub/config.json"]
    assert store.get("run/sft/abc/checkpoint-10").joinpath("model.safetensors").read_bytes() == b"weights"
    assert store.list("run/sft/abc") == ["run/sft/abc/checkpoint-10"]


def test_half_written_checkpoint_is_not_listed_or_fetched(tmp_path):
    store = open_store(f"file://{tmp_path / 'store'}")
    store.put(make_checkpoint(tmp_path), "r/s/f/checkpoint-1")
    # A writer killed before its manifest: the files are there, the manifest is not.
    partial = tmp_path / "store" / "r/s/f/checkpoint-2"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"half")
    assert store.list("r/s/f") == ["r/s/f/checkpoint-1"]
    with pytest.raises(IncompleteCheckpoint):
        store.get("r/s/f/checkpoint-2")


def test_corrupted_file_fails_verification(tmp_path):
    store = open_store(f"file://{tmp_path / 'store'}")
    store.put(make_checkpoint(tmp_path), "k")
    (tmp_path / "store" / "k" / "model.safetensors").write_bytes(b"weightz")
    with pytest.raises(IncompleteCheckpoint, match="does not match its manifest"):
        store.get("k")


def test_digest_identifies_content(tmp_path):
    store = open_store(f"file://{tmp_path / 'store'}")
    store.put(make_checkpoint(tmp_path, "a", b"one"), "a")
    store.put(make_checkpoint(tmp_path, "b", b"two"), "b")
    store.put(make_checkpoint(tmp_path, "c", b"one"), "c")
    d = {k: manifest_digest(store.manifest(k)) for k in "abc"}
    assert d["a"] == d["c"] != d["b"]
    assert json.loads((tmp_path / "store" / "a" / MANIFEST).read_text())["files"]


def test_unsupported_scheme_is_named():
    with pytest.raises(ValueError, match="scheme 'gs' not supported; allowed: file://, s3://, hf://"):
        open_store("gs://bucket/x")
