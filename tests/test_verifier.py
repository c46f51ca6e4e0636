"""IFEval scoring (lm-eval's checkers, offline) and the prefgen pair rule."""

from posttrain.eval import ifeval
from posttrain.stages.prefgen import chunk_rows, make_pair

NO_COMMA_LOWER = {
    "key": 1,
    "prompt": "describe a cat. no commas, all lowercase.",
    "instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"],
    "kwargs": [{}, {}],
}


def test_checkers_score_responses():
    assert ifeval.instruction_score(NO_COMMA_LOWER, "a cat is a small soft animal that likes naps") == 1.0
    assert ifeval.instruction_score(NO_COMMA_LOWER, "A cat is small, soft and sleepy") == 0.0
    assert ifeval.instruction_score(NO_COMMA_LOWER, "a cat is small, soft and sleepy") == 0.5


def test_sentence_checker_works_offline():
    doc = {"key": 2, "prompt": "x", "instruction_id_list": ["length_constraints:number_sentences"], "kwargs": [{"relation": "less than", "num_sentences": 3}]}
    assert ifeval.score(doc, "Dr. Smith came home. He slept.")["prompt_strict"] is True
    assert ifeval.score(doc, "One. Two. Three. Four.")["prompt_strict"] is False


def test_aggregate_prompt_and_instruction_level():
    scores = [ifeval.score(NO_COMMA_LOWER, r) for r in ("all good here", "Not, good")]
    agg = ifeval.aggregate(scores)
    assert agg["prompt_strict"] == 0.5
    assert agg["inst_strict"] == 0.5


def test_pair_is_best_vs_worst_and_ties_are_dropped():
    pair, why = make_pair(NO_COMMA_LOWER, ["Bad, Answer", "good answer", "half, answer"], min_margin=0.0)
    assert why == "kept"
    assert pair["chosen"][0]["content"] == "good answer" and pair["rejected"][0]["content"] == "Bad, Answer"
    assert pair["margin"] == 1.0
    assert make_pair(NO_COMMA_LOWER, ["same one", "same two"], 0.0) == (None, "tie")
    assert make_pair(NO_COMMA_LOWER, ["good answer", "half, answer"], 0.75) == (None, "below margin")


def test_chunks_are_disjoint_and_cover_the_data():
    rows = [{"key": i} for i in range(23)]
    chunks = [chunk_rows(rows, k, 3, seed=7) for k in (1, 2, 3)]
    keys = [r["key"] for c in chunks for r in c]
    assert sorted(keys) == list(range(23))
    assert chunk_rows(rows, 2, 3, seed=7) == chunks[1]  # deterministic
