"""The evaluate stage: every suite's flat metrics, per-sample rows and vibe
answers, repeatable scores, no network, results cached by model reference;
the results table and the vibe page."""

import math

import pytest
from conftest import RECIPE
from netguard import no_network

from posttrain.dag import stage_configs
from posttrain.datasets_io import read_records, write_records
from posttrain.eval import vibe
from posttrain.models import ModelRef, write_model_ref
from posttrain.recipe import apply_overrides, load_recipe
from posttrain.stages import evaluate
from posttrain.stages.context import StageContext

SMALL = ["eval.ifeval_limit=4", "eval.math_limit=3", "eval.max_new_tokens=12", "eval.persona_limit=2", "eval.thinkfollow_conversations=2"]


@pytest.fixture
def stage(tmp_path, monkeypatch):
    """Run evaluate for `label` with the tiny profile, in this process, network refused."""
    write_model_ref(tmp_path / "model", ModelRef(uri="local:smollm2-135m-instruct"))
    write_records(tmp_path / "board", [], {})

    def run(label: str, overrides: list[str] = (), store: str = "store", code: str | None = None):
        monkeypatch.setenv("POSTTRAIN_STORE", f"file://{tmp_path / store}")
        recipe = apply_overrides(load_recipe(RECIPE, "tiny"), [*SMALL, *overrides])
        config = stage_configs(recipe)[f"evaluate_{label}"]
        config = {**config, "code": code} if code else config
        out = tmp_path / "out" / label
        ctx = StageContext.create(config, {"model": tmp_path / "model", "board": tmp_path / "board"},
                                  {"scoreboard": out / "scoreboard", "samples": out / "samples"})
        try:
            with no_network() as attempts:
                result = evaluate.run(ctx)
        finally:
            ctx.cleanup()
        assert not attempts, f"evaluation reached for the network: {attempts}"
        return recipe, result, read_records(out / "samples"), read_records(out / "scoreboard")

    return run


def test_every_suite_reports_flat_metrics_and_samples(stage):
    recipe, result, samples, board = stage("sft")
    expected = set(recipe.eval.metrics_for("sft"))
    assert {"ifeval.prompt_strict.no_think", "math.acc.no_think", "thinkfollow.turn_acc", "persona.conv_acc"} <= expected
    # A flag never drawn leaves its rate out instead of reporting NaN.
    assert set(result.metrics) <= expected and expected - set(result.metrics) <= {"thinkfollow.think_acc", "thinkfollow.no_think_acc"}
    assert all(not math.isnan(v) for v in result.metrics.values())
    assert {s["suite"] for s in samples} == {"ifeval", "math", "thinkfollow", "persona", "vibe"}
    assert len([s for s in samples if s["suite"] == "ifeval"]) == 4 and len([s for s in samples if s["suite"] == "math"]) == 3
    (row,) = board
    assert row["label"] == "sft" and row["metrics"] == result.metrics
    assert [v["id"] for v in row["vibe"]][:2] == ["greeting", "explain"] and all(isinstance(v["answer"], str) for v in row["vibe"])


def test_base_runs_the_recipes_base_suites_only(stage):
    _, result, samples, _ = stage("base")
    assert {s["suite"] for s in samples} == {"ifeval", "math", "vibe"}
    assert not any(k.startswith(("thinkfollow", "persona")) for k in result.metrics)


def test_scores_are_repeatable(stage):
    _, first, samples_1, _ = stage("sft", store="one")
    _, second, samples_2, _ = stage("sft", store="two")  # a fresh store: nothing cached
    assert first.metrics == second.metrics
    assert samples_1 == samples_2


def test_results_are_cached_by_model_reference(stage, monkeypatch, caplog):
    stage("base")
    from posttrain.eval import lmeval

    # A later run after a change to posttrain's training code (a new task
    # fingerprint, so KFP's cache misses) evaluates the same base model:
    # nothing is generated again.
    monkeypatch.setattr(lmeval, "evaluate", lambda *a, **k: pytest.fail("the base model was evaluated again"))
    with caplog.at_level("INFO"):
        stage("base", code="changed-training-code")
    assert "ifeval-no_think shard 0: reused" in caplog.text and "vibe shard 0: reused" in caplog.text
    # A changed eval setting is a different evaluation.
    monkeypatch.undo()
    caplog.clear()
    with caplog.at_level("INFO"):
        stage("base", ["eval.max_new_tokens=10"])
    assert "ifeval-no_think shard 0: done" in caplog.text


def test_results_table_has_a_column_per_checkpoint():
    board = [{"label": "base", "metrics": {"ifeval.prompt_loose.no_think": 0.25}},
             {"label": "sft", "metrics": {"ifeval.prompt_loose.no_think": 0.5, "persona.turn_acc": 0.75}}]
    table = evaluate.results_table(board, selected="sft")
    lines = table.splitlines()
    assert lines[0] == "| metric | base | sft | selected (sft) |"
    assert "| ifeval.prompt_loose.no_think | 0.250 | 0.500 | 0.500 |" in lines
    assert "| persona.turn_acc | – | 0.750 | 0.750 |" in lines


def test_vibe_page_puts_checkpoints_side_by_side():
    probe = {"id": "greeting", "messages": [{"role": "user", "content": "Hi <there>"}]}
    board = [{"label": label, "metrics": {}, "vibe": [{**probe, "answer": f"hello from {label}"}]} for label in ("base", "sft")]
    page = vibe.page(board, "vibe")
    assert "<th>base</th><th>sft</th>" in page and "hello from sft" in page and "Hi &lt;there&gt;" in page
    assert page.count("<tr>") == 2
