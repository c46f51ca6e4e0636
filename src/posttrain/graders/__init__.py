"""Graders score the responses to a prompt; prefgen turns scores into pairs.

A grader sees the prompt row (`messages`: the prompt conversation, `prompt`:
its last user turn, plus whatever the grader checks against: IFEval's
`instruction_id_list`/`kwargs`, a math `answer`) and every response to it.
Responses are scored on their answer: a think block is stripped first.

Nothing here raises on a bad response or a bad grader output: each problem is
an `Issue` (a kind and an example), counted and reported by the stage, which
fails only above the recipe's error threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from posttrain.recipe import GraderConfig, ModelSource


@dataclass(frozen=True)
class Issue:
    kind: str  # short and stable: counted by kind in the report
    example: str  # what went wrong, with enough of the offending text to see why


@dataclass
class Graded:
    """One prompt's grades: a score per response (higher is better), or None
    when the grader could not score this prompt at all."""

    scores: list[float] | None
    issues: list[Issue] = field(default_factory=list)
    detail: dict = field(default_factory=dict)


class Grader(Protocol):
    id: str

    def grade(self, docs: list[dict], responses: list[list[str]]) -> list[Graded]:
        """`responses[i]` are the responses to `docs[i]`; one Graded per doc."""
        ...

    def close(self) -> None: ...


def build_grader(cfg: GraderConfig, *, model_path: Callable[[ModelSource], Path], engine: str, tensor_parallel_size: int, seed: int) -> Grader:
    """The recipe's grader. `model_path` turns a recipe model into a local folder."""
    if cfg.kind == "verifier":
        from posttrain.graders.verifier import VerifierGrader

        return VerifierGrader(math_timeout_s=cfg.math_timeout_s)
    if cfg.kind == "reward_model":
        from posttrain.graders.reward_model import RewardModelGrader

        return RewardModelGrader(cfg.model.uri, model_path(cfg.model), batch_size=cfg.batch_size)
    from posttrain.engines import open_generator
    from posttrain.graders.judge import JudgeGrader

    judge = cfg.judge

    def opener(source: ModelSource):
        return lambda: open_generator(source.uri, model_path(source), chat_template=None, engine=engine,
                                      batch_size=judge.batch_size, tensor_parallel_size=tensor_parallel_size, seed=seed)

    return JudgeGrader([(m.uri, opener(m)) for m in judge.models], max_new_tokens=judge.max_new_tokens, reasoning_mode=judge.reasoning_mode)
