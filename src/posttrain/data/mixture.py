"""Data mixture by tokens: give each source a token budget from its recipe `weight` / `tokens`, and resample it to meet that
budget, deterministically from the recipe seed and the source name.

The planning functions (`target_tokens`, `resample`, `plan_group`) and the
statistics (`summarise`, `stats_table`) are pure: they take token counts (numpy
arrays, one entry per usable row), not a tokenizer, and return index arrays,
so a source of millions of rows costs a few bytes a row here and never a
Python object per row. The counts come from prepare_data's scan
(posttrain.data.tokenize encodes each row once).

Budgets and resampling are written by hand: `datasets` has
`interleave_datasets(probabilities=...)`, but that mixes by rows, not tokens,
and cannot give an absolute token budget or a report of what it took.
"""

from __future__ import annotations

import hashlib
import random
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class RowTokens:
    """Tokens of one rendered row: `context` (prompt side, no loss in SFT) and
    `response` (assistant turns, the SFT loss)."""

    context: int
    response: int

    @property
    def total(self) -> int:
        return self.context + self.response


# -- budgets and resampling (pure) ----------------------------------------------------


def target_tokens(sources: Sequence[dict], tokens_before: Sequence[int], group_tokens: int | None) -> list[int | None]:
    """Each source's token budget: `tokens` as given; `weight` as its share of
    `group_tokens` among the group's weighted sources (None: the tokens those
    sources have before resampling); None for a source taken as it is."""
    weighted = [i for i, s in enumerate(sources) if s.get("weight") is not None]
    total_weight = sum(sources[i]["weight"] for i in weighted)
    pool = group_tokens if group_tokens is not None else sum(tokens_before[i] for i in weighted)
    out: list[int | None] = []
    for s in sources:
        if s.get("tokens") is not None:
            out.append(int(s["tokens"]))
        elif s.get("weight") is not None:
            out.append(round(pool * s["weight"] / total_weight))
        else:
            out.append(None)
    return out


def rng_for(seed: int, key: str) -> random.Random:
    """A generator fixed by the recipe seed and the source: reordering or
    adding sources does not change another source's selection."""
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _take(order: Sequence[int], counts: Sequence[int], budget: int) -> list[int]:
    """Rows in `order` until `budget` tokens. A row that would cross the
    budget is taken only if that lands closer to it, else skipped for a later,
    shorter one; so the result ends within half a row's tokens of the budget."""
    taken, acc = [], 0
    for i in order:
        if acc >= budget:
            break
        c = counts[i]
        if acc + c - budget > budget - acc:
            continue
        taken.append(i)
        acc += c
    return taken


@dataclass(frozen=True)
class Picks:
    """The rows a source contributes, in output order: `rows[j]` is a usable-row
    index and `passes[j]` its pass (1: the original, k > 1: the k-th repeat)."""

    rows: np.ndarray
    passes: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def pairs(self) -> list[tuple[int, int]]:
        return list(zip(self.rows.tolist(), self.passes.tolist(), strict=True))


def resample(counts: Sequence[int], target: int | None, *, seed: int, key: str) -> Picks:
    """The rows meeting `target` tokens. Down-sampling: a seeded shuffle, then
    rows until the budget is reached. Up-sampling: whole passes over every row,
    then a seeded partial pass. Rows keep their file order within a pass."""
    counts = np.asarray(counts, dtype=np.int64)
    n = len(counts)
    if target is None:
        return Picks(np.arange(n, dtype=np.int64), np.ones(n, dtype=np.int32))
    total = int(counts.sum())
    if n == 0 or total <= 0:
        if target > 0:
            raise ValueError(f"{key}: a token budget of {target} but no usable rows to sample from")
        return Picks(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32))
    full = target // total
    rest = target - full * total
    # random.shuffle on a compact array: the same permutation as on a list, 8 bytes a row.
    order = array("q", range(n))
    rng_for(seed, key).shuffle(order)
    partial = np.sort(np.asarray(_take(order, counts.tolist(), rest), dtype=np.int64)) if rest else np.zeros(0, dtype=np.int64)
    rows = np.concatenate([np.tile(np.arange(n, dtype=np.int64), full), partial])
    passes = np.concatenate([np.repeat(np.arange(1, full + 1, dtype=np.int32), n), np.full(len(partial), full + 1, dtype=np.int32)])
    return Picks(rows, passes)


def repeat_id(row_id, k: int) -> str:
    """Ids stay unique when rows repeat: `<id>`, `<id>#2`, `<id>#3`, ..."""
    return str(row_id) if k == 1 else f"{row_id}#{k}"


@dataclass
class SourcePlan:
    name: str
    target: int | None
    picks: Picks
    rows_before: int
    tokens_before: int
    tokens_after: int
    rows_after: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows_after = len(self.picks)

    def summary(self) -> dict:
        return {
            "target_tokens": self.target,
            "rows_before": self.rows_before,
            "rows_after": self.rows_after,
            "tokens_before": self.tokens_before,
            "tokens_after": self.tokens_after,
        }


def plan_group(
    sources: Sequence[dict], counts: Sequence[Sequence[int]], group_tokens: int | None, *, seed: int, group: str
) -> list[SourcePlan]:
    """Budgets and resampling for one data group; `counts[j]` are the tokens
    of source j's usable rows."""
    counts = [np.asarray(c, dtype=np.int64) for c in counts]
    before = [int(c.sum()) for c in counts]
    targets = target_tokens(sources, before, group_tokens)
    plans = []
    for source, c, target in zip(sources, counts, targets, strict=True):
        picks = resample(c, target, seed=seed, key=f"{group}/{source['name']}")
        plans.append(SourcePlan(source["name"], target, picks, len(c), int(c.sum()), int(c[picks.rows].sum())))
    return plans


# -- statistics (pure) ------------------------------------------------------------------

MODES = ("think", "no_think")


def summarise(name: str, modes: Sequence[str], context: Sequence[int], response: Sequence[int], turns: Sequence[int]) -> list[dict]:
    """One stats entry per reasoning mode of a source, from per-training-row
    arrays: reasoning mode, context and response tokens, assistant turns."""
    modes = np.asarray(modes, dtype=object)
    context, response, turns = (np.asarray(a, dtype=np.int64) for a in (context, response, turns))
    present = set(modes.tolist())
    out = []
    for mode in [m for m in MODES if m in present] + sorted(present - set(MODES)):
        sel = modes == mode
        out.append(
            {
                "name": name,
                "mode": mode,
                "examples": int(sel.sum()),
                "tokens": int(context[sel].sum() + response[sel].sum()),
                "context": int(context[sel].sum()),
                "response": int(response[sel].sum()),
                "turns": int(turns[sel].sum()),
            }
        )
    return out


STATS_COLUMNS = (
    "dataset",
    "reasoning mode",
    "# examples",
    "% examples",
    "# tokens (M)",
    "% tokens",
    "mean tokens per example",
    "mean tokens in context",
    "mean tokens in response",
    "mean turns",
)


def stats_table(stats: Sequence[dict]) -> str:
    """The playbook's mixture table, one row per source and reasoning mode,
    and a Total row (sums; its means are over all examples)."""
    total_ex = sum(s["examples"] for s in stats) or 1
    total_tok = sum(s["tokens"] for s in stats) or 1
    head = "| " + " | ".join(STATS_COLUMNS) + " |\n|---|---|" + "---:|" * (len(STATS_COLUMNS) - 2) + "\n"

    def row(s):
        n = s["examples"] or 1
        return (
            f"| {s['name']} | {s['mode']} | {s['examples']} | {100 * s['examples'] / total_ex:.1f} | "
            f"{s['tokens'] / 1e6:.4f} | {100 * s['tokens'] / total_tok:.1f} | {s['tokens'] / n:.1f} | "
            f"{s['context'] / n:.1f} | {s['response'] / n:.1f} | {s['turns'] / n:.2f} |\n"
        )

    total = {
        "name": "**Total**",
        "mode": "",
        **{k: sum(s[k] for s in stats) for k in ("examples", "tokens", "context", "response", "turns")},
    }
    return head + "".join(row(s) for s in stats) + row(total)


def resampling_table(plans: Sequence[SourcePlan], sources: Sequence[dict]) -> str:
    head = "| dataset | weight | token budget | rows before | rows after | tokens before | tokens after |\n|---|---:|---:|---:|---:|---:|---:|\n"
    lines = []
    for p, s in zip(plans, sources, strict=True):
        weight = "" if s.get("weight") is None else f"{s['weight']:g}"
        target = "as is" if p.target is None else str(p.target)
        lines.append(f"| {p.name} | {weight} | {target} | {p.rows_before} | {p.rows_after} | {p.tokens_before} | {p.tokens_after} |\n")
    return head + "".join(lines)
