"""The hf:// checkpoint store against the Hub's documented HTTP API.

No Hub can be reached from CI, so `hubserver.FakeHub` (a loopback server that
implements the endpoints huggingface_hub calls: create repo / branch,
preupload, LFS batch, commit, list refs, tree, resolve) stands in for it; the
client is the real huggingface_hub. `test_live_hub_round_trip` runs the same
round trip on the real Hub when HF_TOKEN and POSTTRAIN_HF_TEST_NAMESPACE are set.
"""

import json
import os
import subprocess
import sys
import uuid

import huggingface_hub
import huggingface_hub.constants
import pytest
from conftest import ROOT, make_checkpoint, write_tokenized

from posttrain.models import ModelRef, materialize
from posttrain.store import IncompleteCheckpoint, open_store
from posttrain.store.hf import HubStore

LFS_PAYLOAD = os.urandom(2 << 20)  # big enough to go through LFS


@pytest.fixture(autouse=True)
def token(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "test-token")


def _branches(server, repo):
    api = huggingface_hub.HfApi(endpoint=server.endpoint, token="test-token")
    return sorted(b.name for b in api.list_repo_refs(repo).branches)


def test_put_list_get_delete(hub, tmp_path):
    store = open_store("hf://ns")
    assert isinstance(store, HubStore)
    uri = store.put(make_checkpoint(tmp_path, payload=LFS_PAYLOAD), "smollm3/sft/fp/checkpoint-2")
    assert uri == "hf://ns/smollm3/sft/fp/checkpoint-2"
    assert _branches(hub, "ns/smollm3") == ["main", "sft"]  # one repo per recipe, one branch per stage
    assert store.list("smollm3/sft/fp") == ["smollm3/sft/fp/checkpoint-2"]
    local = store.get("smollm3/sft/fp/checkpoint-2", tmp_path / "cache")
    assert (local / "model.safetensors").read_bytes() == LFS_PAYLOAD
    assert (local / "sub" / "config.json").read_text() == '{"a": 1}'
    store.delete("smollm3/sft/fp/checkpoint-2")
    assert store.list("smollm3/sft/fp") == []
    assert not [p for p in hub.files("ns/smollm3", "sft") if p.startswith("fp/")]


def test_one_commit_per_checkpoint_with_its_manifest(hub, tmp_path):
    store = open_store("hf://ns")
    store.put(make_checkpoint(tmp_path, "a"), "smollm3/sft/fp/checkpoint-2")
    after_first = len(hub.commits("ns/smollm3", "sft"))
    store.put(make_checkpoint(tmp_path, "b"), "smollm3/sft/fp/checkpoint-4")
    commits = hub.commits("ns/smollm3", "sft")
    assert len(commits) == after_first + 1
    files = hub.files("ns/smollm3", "sft")
    assert {"fp/checkpoint-4/manifest.json", "fp/checkpoint-4/model.safetensors", "fp/checkpoint-4/sub/config.json"} <= set(files)
    manifest = json.loads(files["fp/checkpoint-4/manifest.json"])
    assert sorted(f["path"] for f in manifest["files"]) == ["model.safetensors", "sub/config.json"]
    assert store.list("smollm3/sft/fp") == ["smollm3/sft/fp/checkpoint-2", "smollm3/sft/fp/checkpoint-4"]


def test_uploaded_but_uncommitted_files_are_never_listed_and_a_retry_resends_nothing(hub, tmp_path):
    """What a process killed during its upload leaves: LFS objects on the
    Hub, no commit. The checkpoint is invisible; the next put does not send
    those bytes again (the Hub already has them)."""
    from posttrain.stages.checkpoints import resume_point
    from posttrain.stages.context import StageContext

    ctx = StageContext.create({"recipe": "smollm3", "task": "sft", "store_uri": "hf://ns"}, {}, {})
    prefix = ctx.checkpoint_key("").rstrip("/")
    ctx.store.put(make_checkpoint(tmp_path, "step2"), f"{prefix}/checkpoint-2")
    half = make_checkpoint(tmp_path, "step4", payload=LFS_PAYLOAD)
    api = huggingface_hub.HfApi(endpoint=hub.endpoint, token="test-token")
    folder = prefix.split("/", 2)[2]
    op = huggingface_hub.CommitOperationAdd(f"{folder}/checkpoint-4/model.safetensors", str(half / "model.safetensors"))
    api.preupload_lfs_files("ns/smollm3", [op], revision="sft")
    uploads = len(hub.lfs_uploads)
    assert uploads >= 1
    assert ctx.store.list(prefix) == [f"{prefix}/checkpoint-2"]
    assert resume_point(ctx).name == "checkpoint-2"
    ctx.store.put(half, f"{prefix}/checkpoint-4")
    assert len(hub.lfs_uploads) == uploads
    assert ctx.store.list(prefix)[-1] == f"{prefix}/checkpoint-4"
    ctx.cleanup()


def test_transient_server_errors_are_retried(hub, tmp_path):
    store = open_store("hf://ns")
    hub.fail_next = 3
    store.put(make_checkpoint(tmp_path), "smollm3/sft/fp/checkpoint-1")
    hub.fail_next = 3
    assert store.list("smollm3/sft/fp") == ["smollm3/sft/fp/checkpoint-1"]


def test_fetch_verifies_content(hub, tmp_path):
    store = open_store("hf://ns")
    store.put(make_checkpoint(tmp_path), "smollm3/sft/fp/final")
    api = huggingface_hub.HfApi(endpoint=hub.endpoint, token="test-token")
    api.upload_file(path_or_fileobj=b"tampered", path_in_repo="fp/final/model.safetensors", repo_id="ns/smollm3", revision="sft")
    with pytest.raises(IncompleteCheckpoint, match="does not match its manifest"):
        store.get("smollm3/sft/fp/final", tmp_path / "cache")


def test_release_puts_the_model_at_the_branch_root_and_optionally_main(hub, tmp_path):
    store = open_store("hf://ns")
    first = make_checkpoint(tmp_path, "v1", payload=LFS_PAYLOAD)
    (first / "old-shard.bin").write_bytes(b"only in v1")
    store.put(first, "smollm3/sft/fp1/final")
    assert store.release(first, "smollm3/sft/fp1/final") == "hf://ns/smollm3@sft"
    assert hub.files("ns/smollm3", "sft")["model.safetensors"] == LFS_PAYLOAD
    assert "old-shard.bin" in hub.files("ns/smollm3", "sft")
    assert "model.safetensors" not in hub.files("ns/smollm3", "main")

    second = make_checkpoint(tmp_path, "v2", payload=b"v2 weights")
    store.put(second, "smollm3/sft/fp2/final")
    assert store.release(second, "smollm3/sft/fp2/final", to_main=True) == "hf://ns/smollm3@main"
    for branch in ("sft", "main"):
        files = hub.files("ns/smollm3", branch)
        assert files["model.safetensors"] == b"v2 weights"
        assert "old-shard.bin" not in files  # the previous release's stray files are gone
    assert "fp1/final/manifest.json" in hub.files("ns/smollm3", "sft")  # checkpoints stay


def test_model_reference_materializes_from_the_hub_store(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "posttrain-cache"))
    uri = open_store("hf://ns").put(make_checkpoint(tmp_path, payload=b"model bytes"), "smollm3/sft/fp/final")
    assert (materialize(ModelRef(uri=uri)) / "model.safetensors").read_bytes() == b"model bytes"


def test_missing_token_and_offline_mode_are_named(hub, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set"):
        open_store("hf://ns")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", "/nonexistent-posttrain-test")
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", "/nonexistent-posttrain-test/token")
    with pytest.raises(ValueError, match="no Hub token; set HF_TOKEN"):
        open_store("hf://ns")


def test_a_training_stage_checkpoints_to_the_hub(hub, tmp_path):
    """The sft stage (tiny model) in a real process with an hf:// store:
    checkpoints on the `sft` branch, the final model at its root."""
    from posttrain.dag import stage_configs
    from posttrain.datasets_io import read_jsonl
    from posttrain.models import write_model_ref
    from posttrain.recipe import apply_overrides, load_recipe

    recipe = apply_overrides(load_recipe(ROOT / "pipelines/smollm3.yaml", "tiny"), ["sft.max_steps=4", "sft.save_steps=2", "sft.per_device_batch_size=1"])
    write_model_ref(tmp_path / "policy", ModelRef(uri="local:tiny"))
    tokenized = write_tokenized(tmp_path / "data", read_jsonl(ROOT / "data/local/sft.jsonl")[:16], recipe)
    spec = {"stage": "sft", "config": stage_configs(recipe)["sft"], "inputs": {"policy": str(tmp_path / "policy"), "tokenized": str(tokenized)},
            "outputs": {"model": str(tmp_path / "out")}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "POSTTRAIN_STORE": "hf://ns", "HF_HUB_OFFLINE": "0", "POSTTRAIN_CACHE": str(ROOT / ".cache"), "HF_HOME": str(tmp_path / "hf")}
    env.pop("POSTTRAIN_LOG_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "posttrain.stages", str(tmp_path / "spec.json")], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "uploaded: hf://ns/" in proc.stderr
    files = hub.files(f"ns/{recipe.name}", "sft")
    assert "model.safetensors" in files and "config.json" in files and "README.md" in files  # final model at the branch root
    finals = [p for p in files if p.endswith("/final/manifest.json")]
    assert len(finals) == 1
    ref = json.loads((tmp_path / "out" / "model.json").read_text())
    assert ref["uri"] == f"hf://ns/{recipe.name}/sft/{finals[0].split('/')[0]}/final"


@pytest.mark.skipif(not (os.environ.get("HF_TOKEN") and os.environ.get("POSTTRAIN_HF_TEST_NAMESPACE")),
                    reason="live Hub test: set HF_TOKEN and POSTTRAIN_HF_TEST_NAMESPACE")
def test_live_hub_round_trip(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    namespace = os.environ["POSTTRAIN_HF_TEST_NAMESPACE"]
    store = open_store(f"hf://{namespace}")
    fp = uuid.uuid4().hex[:12]
    key = f"posttrain-store-test/sft/{fp}/checkpoint-1"
    store.put(make_checkpoint(tmp_path, payload=LFS_PAYLOAD), key)
    try:
        assert store.list(f"posttrain-store-test/sft/{fp}") == [key]
        assert (store.get(key, tmp_path / "cache") / "model.safetensors").read_bytes() == LFS_PAYLOAD
    finally:
        store.delete(key)
    assert store.list(f"posttrain-store-test/sft/{fp}") == []
