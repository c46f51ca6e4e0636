"""The whole DAG through KFP's local runner (tiny profile), twice: the first
run must produce every stage's artifact and the report; the second must be
served from KFP's local cache."""

import json
import os
import subprocess
import sys

import pytest
from conftest import RECIPE, ROOT

pytestmark = pytest.mark.e2e

STAGE_OUTPUTS = {
    "preflight": ["base_model/model.json", "scoreboard/data.jsonl", "metrics"],
    "prepare-data": ["sft/data.jsonl", "midtrain/data.jsonl", "prompts/data.jsonl", "stats", "metrics"],
    "midtrain": ["model/model.json", "metrics"],
    "sft": ["model/model.json", "metrics"],
    "prefgen": ["pairs/data.jsonl", "stats", "samples", "metrics"],
    "prefgen-2": ["pairs/data.jsonl", "stats", "samples", "metrics"],
    "preference-train": ["model/model.json", "metrics"],
    "preference-train-2": ["model/model.json", "metrics"],
    "evaluate": ["scoreboard/data.jsonl", "samples/data.jsonl", "metrics"],
    "evaluate-5": ["scoreboard/data.jsonl", "samples/data.jsonl", "metrics"],
    "select-best": ["model/model.json", "report", "results/data.jsonl", "vibe", "metrics"],
    "publish": ["published/model.json"],
}


def _run(runs_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "POSTTRAIN_CACHE": str(ROOT / ".cache")}
    return subprocess.run(
        [sys.executable, "-m", "posttrain.cli", "run", str(RECIPE), "--profile", "tiny", "--runs-dir", str(runs_dir)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("runs")
    first = _run(runs_dir)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    second = _run(runs_dir)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-5000:]
    folders = sorted(p for p in runs_dir.iterdir() if p.name.startswith("smollm3-tiny-"))
    return first, second, folders


def _task_dir(run_folder, task):
    (pipeline_dir,) = (run_folder / "kfp").iterdir()
    return pipeline_dir / task


def test_every_stage_wrote_its_artifacts(runs):
    _, _, (first, _) = runs
    for task, files in STAGE_OUTPUTS.items():
        for f in files:
            assert (_task_dir(first, task) / f).exists(), f"{task}: {f} missing"


def test_training_stages_really_trained(runs):
    _, _, (first, _) = runs
    for task in ("midtrain", "sft", "preference-train", "preference-train-2"):
        metrics = json.loads((_task_dir(first, task) / "metrics").read_text())
        assert metrics["train.steps"] >= 2
        assert metrics["train.max_weight_change"] > 0, task
    sft = json.loads((_task_dir(first, "sft") / "metrics").read_text())
    assert sft["train.loss_last"] < sft["train.loss_first"]
    # Models move by reference, into the run's checkpoint store, complete with a manifest.
    ref = json.loads((_task_dir(first, "sft") / "model/model.json").read_text())
    assert ref["uri"].startswith(f"file://{first}/checkpoints/smollm3/sft/")
    final = first / "checkpoints" / ref["uri"].split("/checkpoints/")[1]
    assert (final / "manifest.json").is_file()
    # The model card names the parent model and the data with its resolved revision.
    card = json.loads((final / "posttrain.json").read_text())
    assert card["stage"] == "sft" and card["parent"]["uri"].startswith("file://")
    assert card["data"]["data"]["sources"][0]["revision"].startswith("sha256:")
    assert "train.loss_last" in (final / "README.md").read_text()
    assert list((first / "tensorboard" / "sft").rglob("events.out.tfevents.*"))


def test_report_has_every_row(runs):
    result, _, (first, _) = runs
    report = (first / "report.md").read_text()
    head = next(line for line in report.splitlines() if line.startswith("| metric |"))
    labels = [c.strip() for c in head.strip("|").split("|")][1:]
    assert labels[:5] == ["base", "midtrain", "sft", "chunk-1", "chunk-2"] and labels[5].startswith("selected (")
    rows = {line.split("|")[1].strip(): line for line in report.splitlines() if line.startswith("| ")}
    for metric in ("ifeval.prompt_strict.no_think", "ifeval.inst_loose.no_think", "math.acc.no_think", "thinkfollow.turn_acc", "persona.conv_acc"):
        assert metric in rows, metric
    # Suites the recipe does not run on the base model show as "–" there.
    assert rows["thinkfollow.turn_acc"].split("|")[2].strip() == "–"
    assert (first / "vibe.html").read_text().count("<tr>") == 11  # header + 10 probes
    assert "| local-sft |" in report  # the data statistics table
    # Each chunk's preference-pair statistics, and its sample pairs beside the report.
    assert "## Preference pairs, chunk 1" in report and "## Preference pairs, chunk 2" in report
    assert "chosen / rejected length" in report
    assert (first / "prefgen-1-samples.html").is_file() and (first / "prefgen-2-samples.html").is_file()
    assert "| metric | base |" in result.stdout


def test_second_run_is_served_from_the_cache(runs):
    _, second, (first, again) = runs
    # A cache hit runs nothing: the second run's pipeline root gets no task
    # output, and its report points at the first run's checkpoints.
    ran = sorted(p.parent.name for p in (again / "kfp").rglob("executor_output.json"))
    assert ran == [], f"ran again: {ran}"
    assert (again / "report.md").is_file()
    assert f"file://{first}/checkpoints/" in (again / "report.md").read_text()
