"""Selection and the release gate on crafted scoreboards."""

import pytest

from posttrain.recipe import SelectConfig
from posttrain.stages import merge_boards, select_best
from posttrain.stages.select_best import SelectionError, candidates_table, choose, gate_text, ranked

OBJ = ["ifeval.prompt_strict.no_think", "math.acc.no_think"]


def row(label, strict, math, kl=None, tokens=50.0):
    metrics = {"ifeval.prompt_strict.no_think": strict, "math.acc.no_think": math, "ifeval.mean_response_tokens.no_think": tokens}
    if kl is not None:
        metrics["kl.seq_mean"] = kl
    return {"label": label, "model": {"uri": f"file:///m/{label}", "revision": "final", "sha": "x"}, "metrics": metrics}


def board(*chunks):
    return [row("base", 0.9, 0.9), row("sft", 0.30, 0.10), *chunks]


def test_the_objective_is_the_mean_of_the_chosen_metrics():
    b = board(row("chunk-1", 0.40, 0.10, kl=1.0), row("chunk-2", 0.30, 0.30, kl=2.0))
    best, sft, passed = choose(b, SelectConfig(objective=OBJ))
    assert best["label"] == "chunk-2"  # (0.30 + 0.30) / 2 = 0.30 > (0.40 + 0.10) / 2 = 0.25
    assert sft["label"] == "sft" and passed
    # base is never a candidate, however good.
    assert "base" not in [r["label"] for r in ranked(b, OBJ)]


def test_ties_go_to_lower_kl_then_shorter_answers():
    b = board(row("chunk-1", 0.4, 0.2, kl=3.0, tokens=10), row("chunk-2", 0.4, 0.2, kl=1.0, tokens=90),
              row("chunk-3", 0.4, 0.2, kl=1.0, tokens=40))
    assert [r["label"] for r in ranked(b, OBJ)][:3] == ["chunk-3", "chunk-2", "chunk-1"]
    # Unknown KL ranks after a measured one.
    b = board(row("chunk-1", 0.4, 0.2, kl=None), row("chunk-2", 0.4, 0.2, kl=5.0))
    assert ranked(b, OBJ)[0]["label"] == "chunk-2"


@pytest.mark.parametrize(("margin", "passed"), [(0.0, True), (0.05, True), (0.051, False), (-0.5, True)])
def test_the_gate_needs_the_margin_over_sft(margin, passed):
    b = board(row("chunk-1", 0.40, 0.10, kl=1.0))  # objective 0.25 vs sft 0.20
    best, sft, ok = choose(b, SelectConfig(objective=OBJ, gate_margin=margin))
    assert ok is passed
    text = gate_text(best, sft, ok, SelectConfig(objective=OBJ, gate_margin=margin))
    assert ("NOT PASSED" in text) is (not passed) and "0.250 vs sft 0.200 (+0.050" in text


def test_sft_selected_fails_a_positive_margin():
    b = board(row("chunk-1", 0.10, 0.10, kl=1.0))
    best, _, ok = choose(b, SelectConfig(objective=OBJ, gate_margin=0.01))
    assert best["label"] == "sft" and not ok


def test_an_unmeasured_objective_metric_is_one_clear_error():
    b = board(row("chunk-1", 0.4, 0.1))
    with pytest.raises(SelectionError, match=r"select.objective: 'persona.turn_acc' was not measured for sft; allowed: "):
        choose(b, SelectConfig(objective=["persona.turn_acc"]))


def test_candidates_table_lists_every_candidate_best_first():
    b = board(row("a/chunk-1", 0.40, 0.10, kl=1.0), row("b/chunk-1", 0.30, 0.30, kl=2.0), row("soup", 0.30, 0.30, kl=0.5))
    cfg = SelectConfig(objective=OBJ)
    table = candidates_table(b, cfg, "soup")
    lines = table.strip().splitlines()
    assert lines[0] == "| rank | checkpoint | objective | vs sft | ifeval.prompt_strict.no_think | math.acc.no_think | KL to sft | answer tokens |"
    assert lines[2].startswith("| 1 | **soup** (selected) | 0.300 | +0.100 |")
    assert lines[3].startswith("| 2 | b/chunk-1 | 0.300 |") and lines[4].startswith("| 3 | a/chunk-1 | 0.250 |")
    assert lines[5].startswith("| 4 | sft | 0.200 | +0.000 |")


def test_merged_sweep_boards_keep_shared_rows_once():
    shared = [row("base", 0.1, 0.1), row("sft", 0.2, 0.2)]
    a = shared + [row("a/chunk-1", 0.3, 0.3)]
    b = shared + [row("b/chunk-1", 0.4, 0.4)]
    assert [r["label"] for r in merge_boards.merge([a, b])] == ["base", "sft", "a/chunk-1", "b/chunk-1"]
    assert select_best.ranked(merge_boards.merge([a, b]), OBJ)[0]["label"] == "b/chunk-1"


def test_soup_averages_weights_file_by_file(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from posttrain.stages.soup import SoupError, average

    dirs = []
    for i, value in enumerate((1.0, 3.0)):
        d = tmp_path / f"m{i}"
        d.mkdir()
        save_file({"w": torch.full((2, 2), value, dtype=torch.bfloat16), "b": torch.full((2,), value)}, d / "model.safetensors")
        (d / "config.json").write_text('{"model_type": "x"}')
        dirs.append(d)
    average(dirs, tmp_path / "soup")
    out = load_file(tmp_path / "soup" / "model.safetensors")
    assert out["w"].dtype == torch.bfloat16 and torch.equal(out["w"], torch.full((2, 2), 2.0, dtype=torch.bfloat16))
    assert torch.equal(out["b"], torch.full((2,), 2.0))
    assert (tmp_path / "soup" / "config.json").is_file()
    other = tmp_path / "other"
    other.mkdir()
    save_file({"w": torch.zeros(1)}, other / "model-00001-of-00002.safetensors")
    with pytest.raises(SoupError, match="not the same architecture"):
        average([dirs[0], other], tmp_path / "bad")
