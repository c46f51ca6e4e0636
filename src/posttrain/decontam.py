"""Decontamination: drop training prompts that overlap an eval set.

Word n-grams of lower-cased text with punctuation removed: a prompt is
contaminated when at least `threshold` of its n-grams occur in any eval
prompt. A prompt shorter than n words is a single n-gram of all its words.
Written here because none of our dependencies ships one (lm-eval's
decontamination works on its own task files, not on our rows).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    w = words(text)
    if not w:
        return set()
    if len(w) < n:
        return {tuple(w)}
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


class EvalIndex:
    """The n-grams of every eval prompt, and which eval set each came from."""

    def __init__(self, n: int):
        self.n = n
        self.owner: dict[tuple[str, ...], str] = {}

    def add(self, name: str, texts: Iterable[str]) -> None:
        for text in texts:
            for g in ngrams(text, self.n):
                self.owner.setdefault(g, name)

    def overlap(self, text: str) -> tuple[float, str | None]:
        """(share of the text's n-grams found in an eval set, that eval set)."""
        grams = ngrams(text, self.n)
        hits = [self.owner[g] for g in grams if g in self.owner]
        if not grams or not hits:
            return 0.0, None
        return len(hits) / len(grams), max(set(hits), key=hits.count)


def eval_texts(row: dict) -> list[str]:
    """The prompt texts of an eval row: `prompt` or `question`, the user turns
    of `messages`, or a persona's `system` prompt and `turns`."""
    texts = [row[k] for k in ("prompt", "question", "system") if isinstance(row.get(k), str)]
    texts += [t for t in row.get("turns") or [] if isinstance(t, str)]
    texts += [m["content"] for m in row.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str)]
    return texts
