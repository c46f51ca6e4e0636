"""IFEval scoring (lm-eval's checkers, offline) and prefgen's chunks."""

from posttrain.eval import ifeval
from posttrain.stages.prefgen import chunk_rows

NO_COMMA_LOWER = {
    "key": 1,
    "prompt": "describe a cat. no commas, all lowercase.",
    "instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"],
    "kwargs": [{}, {}],
}


# The lowercase checker also asks langdetect for English, so use real sentences.
GOOD = "cats are small furry animals that love to sleep in the warm sun all day long"
BAD = "Cats are small, furry animals that love to sleep in the warm sun all day long"
HALF = "cats are small, furry animals that love to sleep in the warm sun all day long"


def test_checkers_score_responses():
    assert ifeval.instruction_score(NO_COMMA_LOWER, GOOD) == 1.0
    assert ifeval.instruction_score(NO_COMMA_LOWER, BAD) == 0.0
    assert ifeval.instruction_score(NO_COMMA_LOWER, HALF) == 0.5


def test_sentence_checker_works_offline():
    doc = {"key": 2, "prompt": "x", "instruction_id_list": ["length_constraints:number_sentences"], "kwargs": [{"relation": "less than", "num_sentences": 3}]}
    assert ifeval.score(doc, "Dr. Smith came home. He slept.")["prompt_strict"] is True
    assert ifeval.score(doc, "One. Two. Three. Four.")["prompt_strict"] is False


def test_aggregate_prompt_and_instruction_level():
    scores = [ifeval.score(NO_COMMA_LOWER, r) for r in (GOOD, HALF)]
    agg = ifeval.aggregate(scores)
    assert agg["prompt_strict"] == 0.5
    assert agg["inst_strict"] == 0.75


def test_chunks_are_disjoint_and_cover_the_data():
    rows = [{"key": i} for i in range(23)]
    chunks = [chunk_rows(rows, k, 3, seed=7) for k in (1, 2, 3)]
    keys = [r["key"] for c in chunks for r in c]
    assert sorted(keys) == list(range(23))
    assert chunk_rows(rows, 2, 3, seed=7) == chunks[1]  # deterministic


def test_scores_do_not_depend_on_global_random_state():
    import random

    # keywords:frequency with no arguments: the checker picks a word and a count at random.
    doc = {"key": 3, "prompt": "x", "instruction_id_list": ["keywords:frequency"], "kwargs": [{}]}
    response = "the cat and the dog and the bird and a fish"
    results = []
    for seed in range(20):
        random.seed(seed)
        results.append(ifeval.score(doc, response)["inst_strict"])
    assert len({tuple(r) for r in results}) == 1


def test_chunks_are_stratified_by_source_and_reasoning_mode():
    rows = [{"key": i, "source": "a" if i < 30 else "b", "reasoning_mode": "think" if i % 3 == 0 else "no_think"} for i in range(40)]
    chunks = [chunk_rows(rows, k, 4, seed=1) for k in (1, 2, 3, 4)]
    assert sorted(r["key"] for c in chunks for r in c) == list(range(40))
    assert {len(c) for c in chunks} == {10}
    for source, mode in [("a", "think"), ("a", "no_think"), ("b", "think"), ("b", "no_think")]:
        counts = [sum(r["source"] == source and r["reasoning_mode"] == mode for r in c) for c in chunks]
        assert max(counts) - min(counts) <= 1, (source, mode, counts)
    assert chunk_rows(rows, 3, 4, seed=1) == chunks[2] and chunk_rows(rows, 3, 4, seed=2) != chunks[2]
