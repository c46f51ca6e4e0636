"""IFEval scoring with lm-eval's instruction checkers, fully offline.

The checkers need NLTK's English punkt_tab (shipped under resources/) and
langdetect (seeded here so language checks are repeatable).
"""

from __future__ import annotations

import json
import random
from functools import cache
from pathlib import Path

NLTK_DATA = Path(__file__).resolve().parent.parent / "resources" / "nltk_data"
METRICS = ("prompt_strict", "inst_strict", "prompt_loose", "inst_loose")


@cache
def _lm_eval_utils():
    import nltk
    from langdetect import DetectorFactory

    if str(NLTK_DATA) not in nltk.data.path:
        nltk.data.path.insert(0, str(NLTK_DATA))
    DetectorFactory.seed = 0
    from lm_eval.tasks.ifeval import utils

    return utils


def score(doc: dict, response: str) -> dict:
    """lm-eval's per-prompt result: strict/loose, prompt-level and per instruction."""
    utils = _lm_eval_utils()
    # The checkers draw missing optional arguments from `random`; a fixed
    # seed makes a score depend only on the prompt and the response.
    random.seed(0)
    r = utils.process_results(doc, [response])
    return {
        "prompt_strict": bool(r["prompt_level_strict_acc"]),
        "inst_strict": [bool(x) for x in r["inst_level_strict_acc"]],
        "prompt_loose": bool(r["prompt_level_loose_acc"]),
        "inst_loose": [bool(x) for x in r["inst_level_loose_acc"]],
    }


def instruction_score(doc: dict, response: str) -> float:
    """Share of the prompt's instructions followed (loose): the verifier's reward."""
    inst = score(doc, response)["inst_loose"]
    return sum(inst) / len(inst)


def aggregate(scores: list[dict]) -> dict[str, float]:
    """Prompt-level = share of prompts with every instruction followed;
    instruction-level = share of all instructions followed."""
    out = {}
    for level in ("strict", "loose"):
        out[f"prompt_{level}"] = sum(s[f"prompt_{level}"] for s in scores) / max(len(scores), 1)
        inst = [x for s in scores for x in s[f"inst_{level}"]]
        out[f"inst_{level}"] = sum(inst) / max(len(inst), 1)
    return out


def load_prompts(path: Path, limit: int | None) -> list[dict]:
    """The first `limit` prompts in file order: a fixed, documented subset."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[:limit] if limit else rows
