"""Mixture by tokens: budgets from weights / absolute tokens, deterministic
down- and up-sampling, token counting with the chat template, the table."""

import random
import re

import pytest
from conftest import ROOT

from posttrain.data import mixture
from posttrain.data.mixture import RowTokens, plan_group, repeat_id, resample, rng_for, stats_table, summarise, target_tokens
from posttrain.data.tokenize import conversation_tokens, encode_conversations
from posttrain.datasets_io import read_jsonl

SFT = read_jsonl(ROOT / "data" / "local" / "sft.jsonl")


@pytest.fixture(scope="module")
def tokenizer():
    from posttrain.local_models import prepare
    from posttrain.stages.training import load_tokenizer

    return load_tokenizer(prepare("tiny"), "chatml")


def _counts(n, seed=0, lo=20, hi=300):
    rng = random.Random(seed)
    return [rng.randint(lo, hi) for _ in range(n)]


def test_budgets_from_weights_tokens_and_as_is():
    sources = [{"name": "a", "weight": 3}, {"name": "b", "weight": 1}, {"name": "c", "tokens": 500}, {"name": "d"}]
    before = [1000, 3000, 9000, 7000]
    # Weights share the weighted sources' own tokens (1000 + 3000) unless a group total is given.
    assert target_tokens(sources, before, None) == [3000, 1000, 500, None]
    assert target_tokens(sources, before, 10_000) == [7500, 2500, 500, None]
    assert target_tokens([{"name": "x"}], [42], None) == [None]


def test_weights_3_to_1_give_token_shares():
    counts = [_counts(200, seed=1), _counts(120, seed=2, lo=50, hi=600)]
    plans = plan_group([{"name": "a", "weight": 3}, {"name": "b", "weight": 1}], counts, 60_000, seed=42, group="sft")
    a, b = (p.tokens_after for p in plans)
    assert a / (a + b) == pytest.approx(0.75, abs=0.01)
    assert a + b == pytest.approx(60_000, rel=0.01)
    # The plans' token totals are the tokens of the rows they picked.
    assert [p.tokens_after for p in plans] == [sum(c[i] for i, _ in p.picks.pairs()) for c, p in zip(counts, plans, strict=True)]


@pytest.mark.parametrize("target", [1, 777, 5_000, 20_000, 47_123, 123_456])
def test_absolute_budget_is_met_within_one_row(target):
    counts = _counts(150, seed=3)  # about 24k tokens: down- and up-sampling
    picks = resample(counts, target, seed=7, key="sft/x").pairs()
    got = sum(counts[i] for i, _ in picks)
    assert abs(got - target) <= max(counts) / 2  # within half a row, so within one
    if picks:
        assert len({(i, k) for i, k in picks}) == len(picks)


def test_upsampling_repeats_whole_passes_then_a_partial_one():
    counts = _counts(50, seed=4)
    target = int(sum(counts) * 2.4)
    picks = resample(counts, target, seed=1, key="sft/x").pairs()
    passes = {}
    for i, k in picks:
        passes.setdefault(k, []).append(i)
    assert passes[1] == passes[2] == list(range(50))  # whole passes keep every row once
    assert 0 < len(passes[3]) < 50 and set(passes) == {1, 2, 3}
    ids = [repeat_id(f"row-{i}", k) for i, k in picks]
    assert len(set(ids)) == len(ids)
    assert "row-0" in ids and "row-0#2" in ids


def test_downsampling_takes_each_row_at_most_once():
    counts = _counts(100, seed=5)
    picks = resample(counts, sum(counts) // 3, seed=1, key="sft/x").pairs()
    assert {k for _, k in picks} == {1}
    assert len({i for i, _ in picks}) == len(picks) < 100
    assert [i for i, _ in picks] == sorted(i for i, _ in picks)  # file order kept


def test_same_seed_same_rows_other_seed_or_source_other_rows():
    counts = _counts(200, seed=6)
    target = sum(counts) // 2
    def pick(target, seed, key):
        return resample(counts, target, seed=seed, key=key).pairs()

    first = pick(target, 42, "sft/a")
    assert pick(target, 42, "sft/a") == first
    assert pick(target, 43, "sft/a") != first
    assert pick(target, 42, "sft/b") != first
    # The partial pass of up-sampling is seeded the same way.
    up = pick(int(sum(counts) * 1.5), 42, "sft/a")
    assert up == pick(int(sum(counts) * 1.5), 42, "sft/a")
    assert up != pick(int(sum(counts) * 1.5), 1, "sft/a")


def _list_resample(counts, target, seed, key):
    """The selection as it was computed on Python lists before the index arrays."""
    n, total = len(counts), sum(counts)
    full, rest = target // total, target % total
    order = list(range(n))
    rng_for(seed, key).shuffle(order)
    taken, acc = [], 0
    for i in order:
        if acc >= rest:
            break
        if acc + counts[i] - rest > rest - acc:
            continue
        taken.append(i)
        acc += counts[i]
    return [(i, k) for k in range(1, full + 1) for i in range(n)] + [(i, full + 1) for i in sorted(taken)] if rest else \
        [(i, k) for k in range(1, full + 1) for i in range(n)]


@pytest.mark.parametrize("share", [0.01, 0.3, 0.999, 1.0, 2.5])
def test_index_arrays_pick_what_the_list_code_picked(share):
    counts = _counts(3000, seed=8)
    target = int(sum(counts) * share)
    assert resample(counts, target, seed=11, key="sft/big").pairs() == _list_resample(counts, target, 11, "sft/big")


def test_as_is_and_empty_sources():
    assert resample([5, 6, 7], None, seed=0, key="k").pairs() == [(0, 1), (1, 1), (2, 1)]
    with pytest.raises(ValueError, match="no usable rows"):
        resample([], 100, seed=0, key="sft/empty")


def _count(tokenizer, convs, kwargs=None, chat_template=None):
    """Tokens of conversations as prepare_data's scan counts them: encoded once, counted from the ids and masks."""
    kwargs = kwargs or [{}] * len(convs)
    ids, masks = encode_conversations(tokenizer, convs, kwargs, chat_template)
    return conversation_tokens(tokenizer, convs, kwargs, ids, masks)


def test_counts_match_the_chat_template_and_its_assistant_mask(tokenizer):
    rows = SFT[:40]
    counted = _count(tokenizer, [r["messages"] for r in rows])
    for row, t in zip(rows, counted, strict=True):
        one = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert t.total == len(one["input_ids"])
        assert t.response == sum(one["assistant_masks"]) > 0
        # The response is the assistant contents with their end-of-turn token.
        replies = [m["content"] + "<|im_end|>" for m in row["messages"] if m["role"] == "assistant"]
        assert t.response == sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in replies)


def test_per_row_template_kwargs_are_used(tokenizer):
    template = tokenizer.chat_template.replace("{%- for message in messages -%}", "{%- if extra -%}{{ 'EXTRA TEXT HERE ' * 10 }}{%- endif -%}{%- for message in messages -%}")
    conv = SFT[0]["messages"]
    plain, extra = _count(tokenizer, [conv, conv], [{}, {"extra": True}], chat_template=template)
    assert extra.context > plain.context and extra.response == plain.response


def test_template_without_generation_tags_falls_back_to_assistant_contents(tokenizer):
    template = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", tokenizer.chat_template)
    conv = SFT[0]["messages"]
    (t,) = _count(tokenizer, [conv], chat_template=template)
    assert t.total == len(tokenizer.apply_chat_template(conv, chat_template=template, tokenize=True, return_dict=True)["input_ids"])
    assert t.response == len(tokenizer(conv[-1]["content"], add_special_tokens=False)["input_ids"])


def _table_rows(table: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.strip().splitlines()]


def test_stats_table_columns_and_total():
    rows_a = [("think", RowTokens(10, 30), 1), ("no_think", RowTokens(5, 5), 2), ("think", RowTokens(20, 40), 1)]
    rows_b = [("no_think", RowTokens(100, 300), 3)] * 4
    def arrays(rows):
        return [m for m, _, _ in rows], [t.context for _, t, _ in rows], [t.response for _, t, _ in rows], [n for _, _, n in rows]

    stats = summarise("a", *arrays(rows_a)) + summarise("b", *arrays(rows_b))
    table = _table_rows(stats_table(stats))
    assert table[0] == list(mixture.STATS_COLUMNS) == [
        "dataset", "reasoning mode", "# examples", "% examples", "# tokens (M)", "% tokens",
        "mean tokens per example", "mean tokens in context", "mean tokens in response", "mean turns",
    ]
    body, total = table[2:-1], table[-1]
    assert [r[:3] for r in body] == [["a", "think", "2"], ["a", "no_think", "1"], ["b", "no_think", "4"]]
    assert total[0] == "**Total**"
    assert int(total[2]) == sum(int(r[2]) for r in body) == 7
    assert float(total[3]) == pytest.approx(sum(float(r[3]) for r in body), abs=0.15) == 100.0
    assert float(total[4]) == pytest.approx(sum(float(r[4]) for r in body), abs=1e-4)
    assert float(total[5]) == pytest.approx(100.0)
    tokens = 40 + 60 + 10 + 4 * 400
    assert float(total[4]) * 1e6 == pytest.approx(tokens, abs=50)
    assert float(total[6]) == pytest.approx(tokens / 7, abs=0.05)
    assert float(total[7]) == pytest.approx((10 + 20 + 5 + 400) / 7, abs=0.05)
    assert float(total[8]) == pytest.approx((30 + 40 + 5 + 1200) / 7, abs=0.05)
    assert float(total[9]) == pytest.approx((1 + 1 + 2 + 12) / 7, abs=0.005)
    assert body[0][6:] == ["50.0", "15.0", "35.0", "1.00"]
