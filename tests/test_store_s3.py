"""The s3:// checkpoint store against a real S3 server (SeaweedFS) on 127.0.0.1."""

import threading
import time

import pytest
from conftest import make_checkpoint

from posttrain.models import ModelRef, materialize
from posttrain.store import IncompleteCheckpoint, fetch, open_store
from posttrain.store.s3 import S3Store


@pytest.fixture
def s3_env(seaweed, monkeypatch):
    for k, v in seaweed.env().items():
        monkeypatch.setenv(k, v)
    return seaweed


def test_put_list_get_delete(s3_env, tmp_path):
    store = open_store("s3://ckpt/runs")
    assert isinstance(store, S3Store)
    uri = store.put(make_checkpoint(tmp_path), "smollm3/sft/abc/checkpoint-10")
    assert uri == "s3://ckpt/runs/smollm3/sft/abc/checkpoint-10"
    assert store.list("smollm3/sft/abc") == ["smollm3/sft/abc/checkpoint-10"]
    local = store.get("smollm3/sft/abc/checkpoint-10", tmp_path / "cache")
    assert (local / "model.safetensors").read_bytes() == b"weights"
    assert (local / "sub" / "config.json").read_text() == '{"a": 1}'
    store.delete("smollm3/sft/abc/checkpoint-10")
    assert store.list("smollm3/sft/abc") == []


def test_manifest_is_written_last_and_half_uploads_are_invisible(s3_env, tmp_path):
    store = open_store("s3://ckpt/half")
    store.put(make_checkpoint(tmp_path), "r/s/f/checkpoint-1")
    # An uploader killed before the manifest: data objects exist, manifest does not.
    s3_env.client().put_object(Bucket="ckpt", Key="half/r/s/f/checkpoint-2/model.safetensors", Body=b"half")
    assert store.list("r/s/f") == ["r/s/f/checkpoint-1"]
    with pytest.raises(IncompleteCheckpoint):
        store.get("r/s/f/checkpoint-2", tmp_path / "cache")


def test_fetch_verifies_content(s3_env, tmp_path):
    store = open_store("s3://ckpt/verify")
    store.put(make_checkpoint(tmp_path), "k")
    s3_env.client().put_object(Bucket="ckpt", Key="verify/k/model.safetensors", Body=b"tampered")
    with pytest.raises(IncompleteCheckpoint, match="does not match its manifest"):
        fetch("s3://ckpt/verify/k", tmp_path / "cache")


def test_model_reference_materializes_from_s3(s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "posttrain-cache"))
    uri = open_store("s3://ckpt/models").put(make_checkpoint(tmp_path, payload=b"model bytes"), "m/final")
    path = materialize(ModelRef(uri=uri))
    assert (path / "model.safetensors").read_bytes() == b"model bytes"


def test_upload_survives_a_server_restart(s3_env, tmp_path):
    """Stop the server, start an upload, bring the server back: the upload
    retries with backoff and completes; nothing is lost."""
    store = open_store("s3://ckpt/restart")
    src = make_checkpoint(tmp_path, payload=b"x" * (3 << 20))
    s3_env.stop()
    result = {}

    def upload():
        try:
            result["uri"] = store.put(src, "run/sft/fp/checkpoint-5")
        except Exception as e:  # noqa: BLE001
            result["error"] = e

    t = threading.Thread(target=upload)
    t.start()
    time.sleep(3)
    assert t.is_alive(), "the upload should be waiting for the server"
    s3_env.start()
    t.join(timeout=120)
    assert "error" not in result, result.get("error")
    assert store.list("run/sft/fp") == ["run/sft/fp/checkpoint-5"]
    assert (store.get("run/sft/fp/checkpoint-5", tmp_path / "c") / "model.safetensors").read_bytes() == b"x" * (3 << 20)


UPLOADER = """
import sys
from pathlib import Path
from posttrain.store import open_store
open_store(sys.argv[1]).put(Path(sys.argv[2]), sys.argv[3])
"""


def test_kill_9_during_an_upload_leaves_the_previous_checkpoint_in_charge(s3_env, tmp_path):
    import os
    import subprocess
    import sys

    from posttrain.stages.checkpoints import resume_point
    from posttrain.stages.context import StageContext

    ctx = StageContext.create({"recipe": "r", "task": "sft", "store_uri": "s3://ckpt/kill"}, {}, {})
    prefix = ctx.checkpoint_key("").rstrip("/")
    ctx.store.put(make_checkpoint(tmp_path, "step2"), f"{prefix}/checkpoint-2")
    big = make_checkpoint(tmp_path, "step4")
    (big / "optimizer.pt").write_bytes(os.urandom(300 << 20))  # multipart, takes a while
    proc = subprocess.Popen([sys.executable, "-c", UPLOADER, "s3://ckpt/kill", str(big), f"{prefix}/checkpoint-4"], env=os.environ.copy())
    client = s3_env.client()
    deadline = time.monotonic() + 60
    while not client.list_objects_v2(Bucket="ckpt", Prefix=f"kill/{prefix}/checkpoint-4/").get("KeyCount"):
        assert proc.poll() is None and time.monotonic() < deadline, "upload finished or never started"
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert client.list_objects_v2(Bucket="ckpt", Prefix=f"kill/{prefix}/checkpoint-4/")["KeyCount"] >= 1  # half written
    assert ctx.store.list(prefix) == [f"{prefix}/checkpoint-2"]
    assert resume_point(ctx).name == "checkpoint-2"


def _parts_stored(client, key: str) -> int:
    uploads = [u for u in client.list_multipart_uploads(Bucket="ckpt").get("Uploads", []) if u["Key"] == key]
    return sum(len(client.list_parts(Bucket="ckpt", Key=key, UploadId=u["UploadId"]).get("Parts", [])) for u in uploads)


def test_a_killed_multipart_upload_resumes_with_the_parts_already_stored(s3_env, tmp_path, monkeypatch, caplog):
    """kill -9 an upload after some parts landed; the next put sends only the rest."""
    import logging
    import os
    import subprocess
    import sys

    monkeypatch.setenv("POSTTRAIN_S3_PART_SIZE", str(5 << 20))
    src = make_checkpoint(tmp_path, "big")
    payload = os.urandom(60 << 20)  # 12 parts
    (src / "model.safetensors").write_bytes(payload)
    key = "resume/sft/fp/checkpoint-8"
    proc = subprocess.Popen([sys.executable, "-c", UPLOADER, "s3://ckpt", str(src), key], env=os.environ.copy())
    client = s3_env.client()
    deadline = time.monotonic() + 120
    while _parts_stored(client, f"{key}/model.safetensors") < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "upload finished or never started"
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    stored = _parts_stored(client, f"{key}/model.safetensors")
    assert 2 <= stored < 12
    store = open_store("s3://ckpt")
    assert store.list("resume/sft/fp") == []

    with caplog.at_level(logging.INFO, logger="posttrain.store.s3"):
        store.put(src, key)
    resumed = [r.getMessage() for r in caplog.records if "resuming the multipart upload" in r.getMessage()]
    assert resumed, "the second put should have found the unfinished upload"
    kept = int(resumed[0].split(": ")[1].split(" of ")[0])
    assert kept >= 2
    assert store.list("resume/sft/fp") == [key]
    assert (store.get(key, tmp_path / "cache") / "model.safetensors").read_bytes() == payload
    assert _parts_stored(client, f"{key}/model.safetensors") == 0  # the unfinished upload was completed
    store.delete(key)


def test_a_download_resumes_from_the_bytes_on_disk(s3_env, tmp_path):
    import hashlib

    store = open_store("s3://ckpt/dl")
    payload = bytes(range(256)) * (8 << 12)  # 8 MiB
    store.put(make_checkpoint(tmp_path, payload=payload), "k")
    cache = tmp_path / "cache"
    dest = cache / "ckpt" / "dl" / "k"
    dest.mkdir(parents=True)
    sha = hashlib.sha256(payload).hexdigest()
    half = len(payload) // 2
    (dest / f"model.safetensors.{sha[:16]}.partial").write_bytes(payload[:half])  # an interrupted download
    ranges = []
    store.client.meta.events.register("provide-client-params.s3.GetObject", lambda params, **_: ranges.append(params.get("Range")))
    assert (store.get("k", cache) / "model.safetensors").read_bytes() == payload
    assert f"bytes={half}-" in ranges


def test_a_corrupt_partial_download_is_replaced(s3_env, tmp_path):
    import hashlib

    store = open_store("s3://ckpt/dl2")
    payload = b"y" * (1 << 20)
    store.put(make_checkpoint(tmp_path, payload=payload), "k")
    dest = tmp_path / "cache" / "ckpt" / "dl2" / "k"
    dest.mkdir(parents=True)
    (dest / f"model.safetensors.{hashlib.sha256(payload).hexdigest()[:16]}.partial").write_bytes(b"garbage")
    assert (store.get("k", tmp_path / "cache") / "model.safetensors").read_bytes() == payload
