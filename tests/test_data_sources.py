"""Sources as Arrow: JSON lines, Parquet and Arrow folders give the same rows;
bad input gets one clear error naming the file and line or the columns,
before any row is counted; a kill -9 in the middle of prepare_data or
tokenize is followed by a rerun that writes byte-identical artifacts."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import RECIPE, ROOT

from posttrain.dag import stage_configs
from posttrain.data.artifacts import read_dataset
from posttrain.data.rows import stored_conversation
from posttrain.data.sources import SourceError, open_source
from posttrain.datasets_io import read_jsonl
from posttrain.models import ModelRef, write_model_ref
from posttrain.recipe import RecipeError, load_recipe
from posttrain.stages.context import STORE_ENV, StageContext
from posttrain.stages.prepare_data import run as prepare

SFT = read_jsonl(ROOT / "data" / "local" / "sft.jsonl")


def _prepare(tmp_path, sources: list[dict], num_proc: int = 1):
    cfg = stage_configs(load_recipe(RECIPE, "tiny"))["prepare_data"]
    cfg["data"].update(sft=sources, midtrain=[], num_proc=num_proc)
    write_model_ref(tmp_path / "base", ModelRef(uri="local:tiny"))
    out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}"
    outputs = {g: out / g for g in ("sft", "midtrain", "prompts")} | {"stats": out / "stats.md"}
    out.mkdir()
    ctx = StageContext.create(cfg, {"base_model": tmp_path / "base"}, outputs)
    try:
        prepare(ctx)
    finally:
        ctx.cleanup()
    return [stored_conversation(r) for r in read_dataset(outputs["sft"])]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv(STORE_ENV, f"file://{tmp_path / 'store'}")


def test_jsonl_parquet_and_arrow_folder_give_the_same_rows(tmp_path, store):
    from datasets import Dataset

    rows = SFT[:20]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    Dataset.from_list(rows).to_parquet(str(tmp_path / "rows.parquet"))
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "rows-arrow"))
    outs = [_prepare(tmp_path, [{"name": "s", "path": str(tmp_path / name)}]) for name in ("rows.jsonl", "rows.parquet", "rows-arrow")]
    assert outs[0] == outs[1] == outs[2]
    assert [r["id"] for r in outs[0]] == [r["id"] for r in rows]


@pytest.mark.parametrize("num_proc", [1, 2])
def test_a_line_that_is_not_json_is_named_by_file_and_line(tmp_path, store, monkeypatch, num_proc):
    monkeypatch.setattr("posttrain.data.scan.BATCH_ROWS", 4)
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps(r) for r in SFT[:12]]
    lines.insert(9, '{"id": "cut", "messages": [{"role": "user"')
    path.write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n")  # a blank line 4 shifts the rest by one
    with pytest.raises(SourceError, match=rf"{path}:11: not valid JSON"):
        _prepare(tmp_path, [{"name": "s", "path": str(path)}], num_proc)


def test_parquet_without_the_needed_column_is_refused_naming_its_columns(tmp_path, store):
    from datasets import Dataset

    Dataset.from_list([{"conversation": r["messages"], "id": r["id"]} for r in SFT[:5]]).to_parquet(str(tmp_path / "x.parquet"))
    source = {"name": "s", "path": str(tmp_path / "x.parquet")}
    with pytest.raises(SourceError, match=r"data.sft source 's': .*x.parquet has columns \['conversation', 'id'\]; a sft source needs `messages`"):
        open_source(source, "sft", (("messages",), "a conversation"))


def test_unknown_file_types_and_folders_are_refused_at_recipe_load(tmp_path, write_recipe, recipe_text):
    for bad, message in (("data/local/make_local_data.py", "unknown file type '.py'"), ("data/local", "no state.json")):
        text = recipe_text.replace("path: data/local/sft.jsonl, max_examples: 16", f"path: {bad}")
        with pytest.raises(RecipeError, match=message):
            load_recipe(write_recipe(text), "tiny")


def test_streaming_needs_a_hub_source_and_max_examples():
    from posttrain.recipe import DataSource

    with pytest.raises(ValueError, match="streaming: true"):
        DataSource(name="x", hub="org/set", streaming=True)
    with pytest.raises(ValueError, match="streaming: true"):
        DataSource(name="x", path="a.jsonl", streaming=True, max_examples=3)
    assert DataSource(name="x", hub="org/set", streaming=True, max_examples=3).streaming


def test_preflight_reports_a_missing_or_unreadable_local_source(tmp_path):
    from posttrain.stages.preflight import _check_local_sources

    (tmp_path / "folder").mkdir()
    found = _check_local_sources([{"name": "gone", "path": str(tmp_path / "nope.jsonl")}, {"name": "dir", "path": str(tmp_path / "folder")},
                                  {"name": "ok", "path": str(ROOT / "data/local/sft.jsonl")}])
    text = " ".join(str(f) for f in found)
    assert len(found) == 2 and "gone" in text and "not found" in text and "no state.json" in text


# -- kill -9 and rerun ------------------------------------------------------------------------


def _files(folder) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _spec(tmp_path, name: str, stage: str, config: dict, inputs: dict, outputs: dict):
    spec = tmp_path / f"{name}.json"
    spec.write_text(json.dumps({"stage": stage, "config": config, "inputs": {k: str(v) for k, v in inputs.items()},
                                "outputs": {k: str(v) for k, v in outputs.items()}}))
    return [sys.executable, "-m", "posttrain.stages", str(spec)]


def _run_killed_then_again(cmd, env, needle: str) -> None:
    """Start, kill -9 once `needle` shows in its stderr (the pass over the rows
    has begun), run again to the end."""
    # Its own process group: the kill takes its map workers too, as a pod's end does.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    seen, deadline = b"", time.monotonic() + 300
    while needle.encode() not in seen and proc.poll() is None and time.monotonic() < deadline:
        seen += os.read(proc.stderr.fileno(), 4096)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "finished before it could be killed"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_kill_9_in_prepare_data_and_tokenize_then_rerun_gives_identical_artifacts(tmp_path):
    recipe = load_recipe(RECIPE, "tiny")
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({**r, "id": f"{r['id']}-{k}"}) + "\n" for k in range(8) for r in SFT))  # 1328 rows: two workers

    cfg = stage_configs(recipe)["prepare_data"]
    cfg["data"].update(sft=[{**cfg["data"]["sft"][0], "path": str(big), "max_examples": None}], num_proc=2)
    write_model_ref(tmp_path / "base", ModelRef(uri="local:tiny"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "POSTTRAIN_CACHE": str(ROOT / ".cache")}
    env.pop("POSTTRAIN_LOG_DIR", None)

    def outputs(name):
        return {g: tmp_path / name / g for g in ("sft", "midtrain", "prompts")} | {"stats": tmp_path / name / "stats.md"}

    def tokenize_cmd(name, prepared):
        return _spec(tmp_path, f"tok-{name}", "tokenize", stage_configs(recipe)["tokenize_sft"],
                     {"data": prepared, "base_model": tmp_path / "base"}, {"tokenized": tmp_path / f"tok-{name}"})

    clean_env = {**env, "HF_DATASETS_CACHE": str(tmp_path / "cache-clean"), STORE_ENV: f"file://{tmp_path / 'store-clean'}"}
    subprocess.run(_spec(tmp_path, "clean", "prepare_data", cfg, {"base_model": tmp_path / "base"}, outputs("clean")), env=clean_env, check=True,
                   capture_output=True)
    subprocess.run(tokenize_cmd("clean", tmp_path / "clean" / "sft"), env=clean_env, check=True, capture_output=True)

    killed_env = {**env, "HF_DATASETS_CACHE": str(tmp_path / "cache-killed"), STORE_ENV: f"file://{tmp_path / 'store-killed'}"}
    _run_killed_then_again(_spec(tmp_path, "killed", "prepare_data", cfg, {"base_model": tmp_path / "base"}, outputs("killed")), killed_env,
                           "checking and counting tokens")
    assert _files(tmp_path / "killed") == _files(tmp_path / "clean")
    _run_killed_then_again(tokenize_cmd("killed", tmp_path / "killed" / "sft"), killed_env, "Labels")
    ref = json.loads((tmp_path / "tok-killed" / "tokenized.json").read_text())
    clean = json.loads((tmp_path / "tok-clean" / "tokenized.json").read_text())
    assert ref["key"] == clean["key"] and ref["rows"] == clean["rows"] > 0
    assert _files(tmp_path / "store-killed" / ref["key"]) == _files(tmp_path / "store-clean" / clean["key"])


def test_shards_are_the_same_files_whatever_the_writers(tmp_path, monkeypatch):
    """A Dataset over several shards written by one process or two: byte-equal files."""
    from datasets import Dataset

    from posttrain.data import artifacts

    monkeypatch.setattr(artifacts, "SHARD_SIZE", "40KB")
    ds = Dataset.from_list([{"id": str(i), "text": f"row {i} " * 40} for i in range(600)])
    artifacts.save_shards(ds, tmp_path / "one")
    artifacts.save_shards(ds, tmp_path / "two", num_proc=2)
    assert len(list((tmp_path / "one").glob("*.arrow"))) > 2
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
