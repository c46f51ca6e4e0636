"""Training restarts that lose nothing, with real processes: kill -9 after a
checkpoint, SIGTERM (preemption) and a rerun of a finished stage."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import RECIPE, ROOT, write_tokenized
from safetensors.torch import load_file

from posttrain.dag import stage_configs
from posttrain.datasets_io import read_jsonl, write_records
from posttrain.models import ModelRef, write_model_ref
from posttrain.recipe import apply_overrides, load_recipe
from posttrain.store import fetch

DRIVER = ["-m", "posttrain.stages"]
STEPS, SAVE_EVERY = 10, 2


@pytest.fixture(scope="module")
def spec_for(tmp_path_factory):
    base = tmp_path_factory.mktemp("restart")
    recipe = apply_overrides(
        load_recipe(RECIPE, "tiny"),
        [f"sft.max_steps={STEPS}", f"sft.save_steps={SAVE_EVERY}", "sft.per_device_batch_size=1", "sft.lr=1e-3"],
    )
    config = stage_configs(recipe)["sft"]
    write_model_ref(base / "policy", ModelRef(uri="local:tiny"))
    tokenized = write_tokenized(base / "data", read_jsonl(ROOT / "data/local/sft.jsonl")[:40], recipe)

    def make(name: str) -> tuple[Path, dict]:
        run = base / name
        spec = {"stage": "sft", "config": config, "inputs": {"policy": str(base / "policy"), "tokenized": str(tokenized)}, "outputs": {"model": str(run / "out")}}
        run.mkdir()
        (run / "spec.json").write_text(json.dumps(spec))
        env = {**os.environ, "POSTTRAIN_STORE": f"file://{run / 'store'}", "HF_HUB_OFFLINE": "1", "POSTTRAIN_CACHE": str(ROOT / ".cache")}
        env.pop("POSTTRAIN_LOG_DIR", None)
        return run, env

    return make


def _start(run: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *DRIVER, str(run / "spec.json")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(proc: subprocess.Popen, needle: str, log: list[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    for line in proc.stderr:
        log.append(line)
        if needle in line:
            return
        assert time.monotonic() < deadline, "timed out"
    raise AssertionError(f"{needle!r} never logged:\n{''.join(log[-30:])}")


def _final_weights(run: Path) -> dict:
    ref = json.loads((run / "out" / "model.json").read_text())
    return load_file(Path(ref["uri"].removeprefix("file://")) / "model.safetensors")


def _run_to_end(run: Path, env: dict) -> str:
    proc = subprocess.run([sys.executable, *DRIVER, str(run / "spec.json")], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stderr


@pytest.fixture(scope="module")
def uninterrupted(spec_for):
    run, env = spec_for("uninterrupted")
    _run_to_end(run, env)
    return _final_weights(run)


def test_kill_9_then_resume_equals_an_uninterrupted_run(spec_for, uninterrupted):
    run, env = spec_for("killed")
    proc = _start(run, env)
    log: list[str] = []
    _wait_for(proc, f"uploaded: file://{run}/store/", log)  # first checkpoint is in the store
    time.sleep(random.Random().uniform(0, 3))  # then die at a random later step
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed_log = _run_to_end(run, env)
    assert "resuming from file://" in resumed_log
    resumed_step = int(resumed_log.split("resuming from file://")[1].split("checkpoint-")[1].split()[0])
    assert resumed_step >= SAVE_EVERY
    weights = _final_weights(run)
    diff = max((weights[k] - uninterrupted[k]).abs().max().item() for k in uninterrupted)
    assert diff <= 1e-6, diff


def test_sigterm_saves_uploads_and_exits_nonzero_then_resumes(spec_for, uninterrupted):
    run, env = spec_for("preempted")
    proc = _start(run, env)
    log: list[str] = []
    _wait_for(proc, f"uploaded: file://{run}/store/", log)
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=300)
    log.append(rest)
    assert proc.returncode != 0
    text = "".join(log)
    assert "SIGTERM: saving a checkpoint at step" in text
    step = int(text.split("SIGTERM: saving a checkpoint at step ")[1].split()[0])
    assert any((run / "store").rglob(f"checkpoint-{step}/manifest.json")), "the preemption checkpoint is in the store"
    resumed_log = _run_to_end(run, env)
    assert f"checkpoint-{step}" in resumed_log.split("resuming from")[1].splitlines()[0]
    weights = _final_weights(run)
    assert max((weights[k] - uninterrupted[k]).abs().max().item() for k in uninterrupted) <= 1e-6


def test_s3_server_restart_in_the_middle_of_a_stage(spec_for, uninterrupted, tmp_path, monkeypatch):
    """Stop the S3 server after the first checkpoint and bring it back: the
    stage's uploads retry, it completes, and its weights are those of an
    uninterrupted run."""
    from s3server import SeaweedS3

    s3 = SeaweedS3(tmp_path / "seaweed")
    s3.start()
    try:
        s3.client().create_bucket(Bucket="ckpt")
        run, env = spec_for("s3-restart")
        env = {**env, **s3.env(), "POSTTRAIN_STORE": "s3://ckpt/run"}
        proc = _start(run, env)
        log: list[str] = []
        _wait_for(proc, "uploaded: s3://ckpt/run/", log)
        s3.stop()
        assert proc.poll() is None, "the stage finished before the server went down; nothing was tested"
        time.sleep(3)
        s3.start()
        _, rest = proc.communicate(timeout=600)
        text = "".join(log) + rest
        assert proc.returncode == 0, text[-4000:]
        assert "retrying in" in text
        for k, v in s3.env().items():
            monkeypatch.setenv(k, v)
        ref = json.loads((run / "out" / "model.json").read_text())
        weights = load_file(fetch(ref["uri"], tmp_path / "cache") / "model.safetensors")
        assert max((weights[k] - uninterrupted[k]).abs().max().item() for k in uninterrupted) <= 1e-6
    finally:
        s3.stop()


def test_finished_stage_is_not_run_again(spec_for):
    run, env = spec_for("rerun")
    _run_to_end(run, env)
    again = _run_to_end(run, env)
    assert "already in the store" in again
    assert "starting fresh" not in again and "resuming from" not in again  # no training at all


def test_evaluation_resumes_from_its_last_complete_shard(tmp_path):
    recipe = apply_overrides(load_recipe(RECIPE, "tiny"), ["eval.ifeval_limit=8", "eval.shard_size=3", "eval.max_new_tokens=8"])
    config = {**stage_configs(recipe)["evaluate_base"]}
    write_model_ref(tmp_path / "model", ModelRef(uri="local:tiny"))
    write_records(tmp_path / "board", [], {})
    spec = {"stage": "evaluate", "config": config, "inputs": {"model": str(tmp_path / "model"), "board": str(tmp_path / "board")},
            "outputs": {"scoreboard": str(tmp_path / "out/scoreboard"), "samples": str(tmp_path / "out/samples")}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "POSTTRAIN_STORE": f"file://{tmp_path / 'store'}", "HF_HUB_OFFLINE": "1", "POSTTRAIN_CACHE": str(ROOT / ".cache")}

    def run() -> tuple[str, list[dict]]:
        proc = subprocess.run([sys.executable, *DRIVER, str(tmp_path / "spec.json")], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr, read_jsonl(tmp_path / "out/samples/data.jsonl")

    first_log, first = run()
    assert [f"ifeval-no_think shard {i}: done" in first_log for i in range(3)] == [True] * 3
    # A crash after two shards: the third never got its manifest.
    (last,) = (tmp_path / "store").rglob("ifeval-no_think/shard-00002/manifest.json")
    last.unlink()
    second_log, second = run()
    assert "ifeval-no_think shard 0: reused" in second_log and "ifeval-no_think shard 1: reused" in second_log
    assert "ifeval-no_think shard 2: done" in second_log
    assert "math-no_think shard 0: reused" in second_log and "vibe shard 0: reused" in second_log
    assert second == first
