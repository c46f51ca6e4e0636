"""The whole DAG through KFP's local runner (tiny profile), three times: the
first run must produce every stage's artifact and the report; the second must
be served from KFP's local cache; the third, with a release gate no
checkpoint can pass, reruns only select_best and must publish nothing. A
fourth run sweeps two learning rates: two branches of a ParallelFor, each its
own chunk chain, merged for selection."""

import json
import os
import subprocess
import sys

import pytest
from conftest import RECIPE, ROOT

pytestmark = pytest.mark.e2e

STAGE_OUTPUTS = {
    "preflight": ["metrics"],
    "pin-base": ["base_model/model.json", "scoreboard/data.jsonl"],
    "prepare-data": ["sft/dataset.json", "sft/shards/state.json", "midtrain/dataset.json", "prompts/dataset.json", "stats", "metrics"],
    "tokenize": ["tokenized/tokenized.json", "tokenized/dataset.json", "metrics"],
    "tokenize-2": ["tokenized/tokenized.json", "tokenized/dataset.json", "metrics"],
    "midtrain": ["model/model.json", "metrics"],
    "sft": ["model/model.json", "metrics"],
    "prefgen": ["pairs/dataset.json", "pairs/shards/state.json", "stats", "samples", "metrics"],
    "prefgen-2": ["pairs/dataset.json", "pairs/shards/state.json", "stats", "samples", "metrics"],
    "preference-train": ["model/model.json", "metrics"],
    "preference-train-2": ["model/model.json", "metrics"],
    "evaluate": ["scoreboard/data.jsonl", "samples/data.jsonl", "metrics"],
    "evaluate-5": ["scoreboard/data.jsonl", "samples/data.jsonl", "metrics"],
    "soup": ["model/model.json", "metrics"],
    "evaluate-6": ["scoreboard/data.jsonl", "samples/data.jsonl", "metrics"],
    "select-best": ["model/model.json", "report", "results/data.jsonl", "vibe", "curves", "curves_png", "metrics"],
    "publish": ["published/model.json"],
}


def _run(runs_dir, *overrides):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "POSTTRAIN_CACHE": str(ROOT / ".cache")}
    sets = [a for o in overrides for a in ("--set", o)]
    return subprocess.run(
        [sys.executable, "-m", "posttrain.cli", "run", str(RECIPE), "--profile", "tiny", "--runs-dir", str(runs_dir), *sets],
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


@pytest.fixture(scope="module")
def gated(runs, tmp_path_factory):
    """A third run in the same runs folder with a gate no checkpoint can pass."""
    _, _, earlier = runs
    result = _run(earlier[0].parent, "select.gate_margin=1.0")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    (folder,) = {p for p in earlier[0].parent.iterdir() if p.name.startswith("smollm3-tiny-")} - set(earlier)
    return result, folder


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
    assert card["data"]["tokenized"]["sources"][0]["revision"].startswith("sha256:")
    assert "train.loss_last" in (final / "README.md").read_text()
    assert list((first / "tensorboard" / "sft").rglob("events.out.tfevents.*"))


def test_report_has_every_row(runs):
    result, _, (first, _) = runs
    report = (first / "report.md").read_text()
    head = next(line for line in report.splitlines() if line.startswith("| metric |"))
    labels = [c.strip() for c in head.strip("|").split("|")][1:]
    assert labels[:6] == ["base", "midtrain", "sft", "chunk-1", "chunk-2", "soup"] and labels[6].startswith("selected (")
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
    # Selection: every candidate ranked; the gate (tiny: margin -1) passed and publish ran.
    assert "## Candidates" in report and "| 1 | **" in report
    assert "Release gate **passed**" in report
    assert (_task_dir(first, "publish") / "published/model.json").is_file()
    # Per-chunk curves: the PNG beside the report, the HTML page with the table.
    assert (first / "curves.png").read_bytes().startswith(b"\x89PNG") and (first / "curves.html").is_file()
    assert "## Preference chunks" in report
    # The chunk rows carry the preference training metrics and the KL estimate.
    board = [json.loads(line) for line in (_task_dir(first, "select-best") / "results/data.jsonl").read_text().splitlines()]
    chunk = next(r for r in board if r["label"] == "chunk-2")
    assert "train.reward_accuracy" in chunk["train"] and "train.rewards_chosen" in chunk["train"]
    # KL to SFT is estimated on the chunk's IFEval answers (the random tiny model often answers nothing).
    samples = [json.loads(line) for line in (_task_dir(first, "evaluate-5") / "samples/data.jsonl").read_text().splitlines()]
    answered = [s for s in samples if s["suite"] == "ifeval" and s["response"].strip()]
    assert ("kl.seq_mean" in chunk["metrics"]) == bool(answered)


def test_second_run_is_served_from_the_cache(runs):
    _, second, (first, again) = runs
    # A cache hit runs nothing but preflight (it checks on every run): the
    # second run's pipeline root gets no other task output, and its report
    # points at the first run's checkpoints.
    ran = sorted(p.parent.name for p in (again / "kfp").rglob("executor_output.json"))
    assert ran == ["preflight"], f"ran again: {ran}"
    assert (again / "report.md").is_file()
    assert f"file://{first}/checkpoints/" in (again / "report.md").read_text()


def test_a_failed_release_gate_publishes_nothing(gated):
    result, folder = gated
    report = (folder / "report.md").read_text()
    assert "Release gate **NOT PASSED**" in report and "Nothing is published." in report
    assert "NOT PASSED" in result.stdout
    # Only select_best ran again (its config changed), after preflight; publish was skipped by the gate.
    ran = sorted(p.parent.name for p in (folder / "kfp").rglob("executor_output.json"))
    assert ran == ["preflight", "select-best"], ran


@pytest.fixture(scope="module")
def swept(runs):
    _, _, earlier = runs
    result = _run(earlier[0].parent, "sweep.lr=[1.0e-4, 2.0e-4]", "sweep.parallelism=1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    (folder,) = [p for p in earlier[0].parent.iterdir() if list(p.glob("kfp/*/for-loop-*"))]  # the run with the sweep
    return result, folder


def test_a_sweep_runs_one_chunk_chain_per_branch(swept):
    result, folder = swept
    report = (folder / "report.md").read_text()
    for variant in ("lr0.0001", "lr0.0002"):
        for k in (1, 2):
            assert f"| {variant}/chunk-{k} |" in report, f"{variant}/chunk-{k} not a candidate"
    (pipeline_dir,) = (folder / "kfp").iterdir()
    branches = sorted(p.name for p in pipeline_dir.glob("for-loop-*"))
    assert len(branches) == 2
    for branch in branches:
        for task in ("preference-train", "preference-train-2", "prefgen-2"):
            assert (pipeline_dir / branch / task / "executor_output.json").is_file(), f"{branch}/{task}"
    assert (pipeline_dir / "merge-boards" / "scoreboard/data.jsonl").is_file()
    # Chunk 2's pairs come from each branch's own chunk-1 policy: a page per branch.
    assert (folder / "prefgen-b0-2-samples.html").is_file() and (folder / "prefgen-b1-2-samples.html").is_file()
    assert "chunk 2 (sweep branch 1)" in report
