"""The prefgen stage: each method and grader on the tiny models, bad rows
under and over the error threshold, deduplication, decontamination, the
statistics and sample pages, shard reuse and resume after kill -9."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
from conftest import RECIPE, ROOT, write_prompts

from posttrain.dag import stage_configs
from posttrain.data.artifacts import read_dataset
from posttrain.datasets_io import read_jsonl
from posttrain.models import ModelRef, write_model_ref
from posttrain.recipe import apply_overrides, load_recipe
from posttrain.stages import prefgen
from posttrain.stages.context import StageContext

PROMPTS = read_jsonl(ROOT / "data/local/prefgen_prompts.jsonl")
IFEVAL = read_jsonl(ROOT.parent / "shared/data/ifeval/input_data.jsonl")
SMALL = ["prefgen.max_prompts_per_chunk=6", "prefgen.max_new_tokens=12", "prefgen.samples_per_prompt=3", "prefgen.shard_size=4"]
PAIR_FIELDS = {"key", "source", "chunk", "method", "reasoning_mode", "prompt", "chosen", "rejected", "score_chosen", "score_rejected",
               "margin", "chosen_tokens", "rejected_tokens", "chosen_model", "rejected_model", "grader"}


@pytest.fixture
def stage(tmp_path, monkeypatch):
    """Run prefgen chunk 1 of the tiny profile with overrides, in this process."""
    monkeypatch.setenv("POSTTRAIN_STORE", f"file://{tmp_path / 'store'}")
    write_model_ref(tmp_path / "policy", ModelRef(uri="local:tiny"))

    def run(overrides: list[str], prompts: list[dict] = PROMPTS, chunks: int = 1):
        recipe = apply_overrides(load_recipe(RECIPE, "tiny"), [f"preference.chunks={chunks}", "select.soup.enabled=false", *SMALL, *overrides])
        write_prompts(tmp_path / "prompts", prompts)
        out = tmp_path / "out"
        out.mkdir(exist_ok=True)
        outputs = {"pairs": out / "pairs", "stats": out / "stats.md", "samples": out / "samples.html"}
        ctx = StageContext.create(stage_configs(recipe)["prefgen_1"], {"policy": tmp_path / "policy", "prompts": tmp_path / "prompts"}, outputs)
        try:
            result = prefgen.run(ctx)
        finally:
            ctx.cleanup()
        return result, read_dataset(out / "pairs").to_list(), (out / "stats.md").read_text(), (out / "samples.html").read_text()

    return run


def _check_pairs(pairs: list[dict]) -> None:
    assert pairs
    for p in pairs:
        assert PAIR_FIELDS <= set(p)
        assert p["prompt"][-1]["role"] == "user" and p["chosen"][0]["role"] == p["rejected"][0]["role"] == "assistant"
        assert p["chosen"][0]["content"] != p["rejected"][0]["content"]
    assert len({p["key"] for p in pairs}) == len(pairs)


# The random tiny model writes a varying number of words in 12 tokens: a word
# count constraint splits its samples, so the verifier's scores differ.
WORD_COUNT = [{"key": f"words-{n}", "prompt": f"Write at least {n} words about owls.", "instruction_id_list": ["length_constraints:number_words"],
               "kwargs": [{"relation": "at least", "num_words": n}]} for n in range(4, 10)]


def test_on_policy_with_the_verifier(stage):
    result, pairs, stats, page = stage(["prefgen.grader={kind: verifier}"], prompts=WORD_COUNT)
    m = result.metrics
    assert m["prefgen.prompts"] == 6
    assert m["prefgen.pairs"] + sum(v for k, v in m.items() if k.startswith("prefgen.dropped.")) == 6
    _check_pairs(pairs)
    assert "## Dropped" in stats and "| prompts in chunk | pairs kept | kept % |" in stats
    assert "verifier:ifeval+math" in stats
    for p in pairs:
        assert p["score_chosen"] > p["score_rejected"] and p["grader"] == "verifier:ifeval+math"
        assert p["chosen_model"] == p["rejected_model"] == "local:tiny"


def test_on_policy_with_a_reward_model(stage):
    result, pairs, stats, page = stage([])  # the tiny profile grades with local:tiny-reward
    _check_pairs(pairs)
    assert result.metrics["prefgen.pairs"] == 6  # continuous scores: no ties
    for p in pairs:
        assert p["score_chosen"] > p["score_rejected"] and p["margin"] == pytest.approx(p["score_chosen"] - p["score_rejected"])
        assert p["grader"] == "reward_model:local:tiny-reward" and p["reasoning_mode"] == "no_think" and p["method"] == "on_policy"
    assert "mean score margin" in stats and "chosen / rejected length" in stats
    assert page.count("<section>") == 6 and "chosen" in page


def test_strong_vs_weak_without_and_with_a_grader(stage):
    models = ["prefgen.method=strong_vs_weak", "prefgen.regenerate=false", "prefgen.strong={uri: 'local:smollm2-135m-instruct'}", "prefgen.weak={uri: 'local:tiny'}"]
    _, pairs, stats, _ = stage([*models, "prefgen.grader=null"])
    _check_pairs(pairs)
    assert len(pairs) == 6
    assert {p["chosen_model"] for p in pairs} == {"local:smollm2-135m-instruct"} and {p["rejected_model"] for p in pairs} == {"local:tiny"}
    assert all(p["margin"] is None for p in pairs)
    # The reward model (random weights) disagrees with strong > weak on some prompts: those pairs go.
    result, graded, stats, _ = stage(models)
    dropped = result.metrics.get("prefgen.dropped.grader_prefers_the_weak_answer", 0)
    assert len(graded) + dropped == 6
    assert all(p["score_chosen"] >= p["score_rejected"] for p in graded)


class ScriptedJudge:
    """A stand-in judge model whose verdicts we control: it prefers the shorter
    answer, or says nothing usable."""

    def __init__(self, model_id: str, mode: str):
        self.id, self.mode, self.calls = model_id, mode, 0

    def generate(self, conversations, **kwargs):
        self.calls += 1
        out = []
        for conv in conversations:
            text = conv[-1]["content"]
            a = re.search(r"\[Answer A\]\n(.*?)\n\[End of answer A\]", text, re.S).group(1)
            b = re.search(r"\[Answer B\]\n(.*?)\n\[End of answer B\]", text, re.S).group(1)
            out.append(["I cannot decide."] if self.mode == "mute" else [f"A is {len(a)} long, B {len(b)}.\nVerdict: {'A' if len(a) < len(b) else 'B'}"])
        return out

    def close(self):
        pass


@pytest.mark.parametrize("mode", ["shorter", "mute"])
def test_on_policy_with_a_judge(stage, monkeypatch, mode):
    import posttrain.engines

    judges = []

    def scripted(model_id, path, **kwargs):
        judges.append(ScriptedJudge(model_id, mode))
        return judges[-1]

    monkeypatch.setattr(posttrain.engines, "open_generator", scripted)
    grader = "prefgen.grader={kind: judge, judge: {models: [{uri: 'local:tiny'}]}}"
    if mode == "mute":
        with pytest.raises(prefgen.PrefgenError, match=r"(?s)6 of 6 prompts .* judge answer has no verdict: 36"):
            stage([grader])
        return
    _, pairs, stats, _ = stage([grader])
    _check_pairs(pairs)
    assert len(judges) == 1 and judges[0].calls == 2  # loaded once, one batched call per shard
    for p in pairs:
        assert len(p["chosen"][0]["content"]) < len(p["rejected"][0]["content"])
        assert p["grader"] == "judge:local:tiny"


BAD_ROWS = [{"key": "no-prompt-1", "text": "x"}, {"key": "no-prompt-2", "prompt": ""}]


def test_bad_rows_are_counted_under_the_threshold(stage):
    rows = PROMPTS[:10] + BAD_ROWS
    result, pairs, stats, _ = stage(["prefgen.max_prompts_per_chunk=12", "prefgen.max_error_fraction=0.2"], prompts=rows)
    assert result.metrics["prefgen.dropped.invalid_prompt_row"] == 2
    assert result.metrics["prefgen.prompts_with_errors"] == 2
    assert "missing column: prompt (a string) or messages (a conversation)" in stats and "no-prompt-1" in stats


def test_bad_rows_over_the_threshold_fail_before_any_model_loads(stage, monkeypatch):
    import posttrain.stages.prefgen as module

    monkeypatch.setattr(module, "open_generator", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(prefgen.PrefgenError, match=r"(?s)prompt rows: 2 of 4 prompts \(50.0%\).*max_error_fraction = 0.05.*missing column: prompt"):
        stage(["prefgen.max_prompts_per_chunk=12"], prompts=PROMPTS[:2] + BAD_ROWS)


def test_duplicates_and_eval_prompts_are_removed_before_generation(stage):
    copy = {**PROMPTS[0], "key": "dup", "prompt": "  " + PROMPTS[0]["prompt"].upper()}
    leaked = {"key": "leak", "prompt": IFEVAL[3]["prompt"] + " Thanks!", "instruction_id_list": IFEVAL[3]["instruction_id_list"],
              "kwargs": IFEVAL[3]["kwargs"]}
    # Every eval set counts, the ones shipped with posttrain too (a ThinkFollow question here).
    question = read_jsonl(ROOT / "src/posttrain/eval/data/thinkfollow_turns.jsonl")[0]["question"]
    rows = [PROMPTS[0], copy, leaked, {"key": "leak-tf", "prompt": question}, *PROMPTS[1:4]]
    result, pairs, stats, _ = stage(["prefgen.max_prompts_per_chunk=12"], prompts=rows)
    assert result.metrics["prefgen.dropped.duplicate_prompt"] == 1
    assert result.metrics["prefgen.dropped.overlaps_eval_set_ifeval"] == 1
    assert result.metrics["prefgen.dropped.overlaps_eval_set_thinkfollow"] == 1
    assert "overlaps eval set ifeval | 1 |" in stats and "leak" in stats
    keys = {p["key"] for p in pairs}
    assert not {"leak", "leak-tf"} & keys and not {PROMPTS[0]["key"], "dup"} <= keys
    # Decontamination off: the leaked prompt is used.
    result, pairs, _, _ = stage(["prefgen.max_prompts_per_chunk=12", "prefgen.decontamination.enabled=false"], prompts=rows)
    assert "prefgen.dropped.overlaps_eval_set_ifeval" not in result.metrics


def test_pairing_settings_reuse_samples_and_grades(stage, caplog):
    stage([])
    caplog.clear()
    with caplog.at_level("INFO"):
        stage(["prefgen.min_margin=0.01", "prefgen.length_control=balance"])
    log = caplog.text
    assert "samples shard 0: reused" in log and "grades shard 1: reused" in log
    assert "shard 0: done" not in log


def test_choose_and_length_balance():
    assert prefgen.choose("on_policy", [0.2, 0.9, 0.1], 0.0, True) == ((1, 2), "kept")
    assert prefgen.choose("on_policy", [0.5, 0.5], 0.0, True) == (None, "tie")
    assert prefgen.choose("on_policy", [0.5, 0.6], 0.2, True) == (None, "below min_margin")
    assert prefgen.choose("on_policy", None, 0.0, True) == (None, "grader could not score")
    assert prefgen.choose("strong_vs_weak", [0.0, 1.0], 0.0, True) == (None, "grader prefers the weak answer")
    assert prefgen.choose("strong_vs_weak", [0.0, 1.0], 0.0, False) == ((0, 1), "kept")
    assert prefgen.choose("strong_vs_weak", None, 0.0, True) == ((0, 1), "kept")
    pairs = [{"key": i, "chosen_tokens": 10 + (i < 4) * 20, "rejected_tokens": 20, "margin": i / 10} for i in range(6)]
    tally = prefgen.Tally()
    kept = prefgen.balance_lengths(pairs, tally)
    # 4 longer-chosen vs 2 shorter-chosen: the two lowest-margin longer ones go.
    assert [p["key"] for p in kept] == [2, 3, 4, 5]
    assert tally.dropped["length balance"]["count"] == 2


def test_generation_resumes_from_the_last_complete_shard_after_kill_9(tmp_path):
    recipe = apply_overrides(load_recipe(RECIPE, "tiny"), [*SMALL, "prefgen.max_prompts_per_chunk=12", "prefgen.shard_size=2",
                                                            "prefgen.max_new_tokens=48"])
    write_model_ref(tmp_path / "policy", ModelRef(uri="local:tiny"))
    write_prompts(tmp_path / "prompts", PROMPTS)
    out = tmp_path / "out"
    spec = {"stage": "prefgen", "config": stage_configs(recipe)["prefgen_1"],
            "inputs": {"policy": str(tmp_path / "policy"), "prompts": str(tmp_path / "prompts")},
            "outputs": {"pairs": str(out / "pairs"), "stats": str(out / "stats.md"), "samples": str(out / "samples.html")}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "POSTTRAIN_STORE": f"file://{tmp_path / 'store'}", "HF_HUB_OFFLINE": "1", "POSTTRAIN_CACHE": str(ROOT / ".cache")}
    cmd = [sys.executable, "-m", "posttrain.stages", str(tmp_path / "spec.json")]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "samples shard 1: done" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "samples shard 0: reused" in second.stderr and "samples shard 1: reused" in second.stderr
    assert "samples shard 2: done" in second.stderr


def test_statistics_table_on_crafted_pairs():
    from posttrain.prefgen_report import samples_html, stats_markdown

    pairs = [{"key": k, "margin": m, "score_chosen": 1.0, "score_rejected": 1.0 - m, "chosen_tokens": c, "rejected_tokens": r,
              "chosen_model": "strong", "rejected_model": "weak", "prompt": [{"role": "user", "content": "<q>"}],
              "chosen": [{"role": "assistant", "content": "a & b"}], "rejected": [{"role": "assistant", "content": "c"}]}
             for k, m, c, r in [(1, 0.5, 30, 10), (2, 1.0, 20, 20), (3, 0.25, 10, 10)]]
    summary = {"chunk": 2, "method": "on_policy", "generators": ["policy"], "grader": "verifier:ifeval+math", "reasoning_mode": "think",
               "prompts": 5, "dropped": {"tie": {"count": 2, "examples": [4, 5]}},
               "issues": {"math-verify timed out": {"count": 1, "examples": ["4: timed out after 5s"]}}}
    md = stats_markdown(summary, pairs)
    assert "| 5 | 3 | 60.0 |" in md
    assert "| tie | 2 | 40.0 | 4, 5 |" in md
    assert "| math-verify timed out | 1 | 4: timed out after 5s |" in md
    # mean margin 0.583, chosen 20 vs rejected 13.3 tokens: ratio 1.50, chosen longer in 1 of 3.
    assert "| 0.583 | 20.0 | 13.3 | 1.50 | 33% |" in md
    assert "**Length bias**" in md
    page = samples_html(pairs, 2, "chunk 2")
    assert page.count("<section>") == 2 and "a &amp; b" in page and "&lt;q&gt;" in page
