"""The verifier grader: programmatic checks, no model.

- IFEval prompts (`instruction_id_list` + `kwargs`): a response scores the share
  of the prompt's instructions it follows (lm-eval's loose checkers).
- Math prompts (a non-empty `answer`): 1.0 when math-verify finds the response's
  final answer equal to the reference, else 0.0.

Responses are scored on their answer (the think block stripped). A check that
raises or times out scores that response 0.0 and records an Issue; a prompt
that cannot be checked at all (neither kind, or a reference math-verify cannot
parse) gets scores None.
"""

from __future__ import annotations

from posttrain.eval import ifeval, mathcheck
from posttrain.generation import split_reasoning
from posttrain.graders import Graded, Issue


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _has_reference(answer: object) -> bool:
    if isinstance(answer, bool) or answer is None:
        return False
    if isinstance(answer, (int, float)):
        return True
    return isinstance(answer, str) and bool(answer.strip())


class VerifierGrader:
    id = "verifier:ifeval+math"

    def __init__(self, *, math_timeout_s: float = 5.0):
        self.math_timeout_s = math_timeout_s

    def grade(self, docs: list[dict], responses: list[list[str]]) -> list[Graded]:
        if len(docs) != len(responses):
            raise ValueError(f"{len(docs)} docs but {len(responses)} response lists")
        return [self._grade(doc, [split_reasoning(r)[1] for r in rs]) for doc, rs in zip(docs, responses)]

    def close(self) -> None:
        pass

    def _grade(self, doc: dict, answers: list[str]) -> Graded:
        key = doc.get("key")
        instructions, kwargs = doc.get("instruction_id_list"), doc.get("kwargs")
        if instructions and kwargs is not None:
            if len(instructions) != len(kwargs):
                return Graded(None, [Issue("prompt not verifiable",
                                           f"key {key!r}: {len(instructions)} instruction ids but {len(kwargs)} kwargs entries")])
            return self._ifeval(doc, key, answers)
        if _has_reference(doc.get("answer")):
            return self._math(doc["answer"], key, answers)
        present = ", ".join(sorted(map(str, doc)))
        return Graded(None, [Issue(
            "prompt not verifiable",
            f"key {key!r}: needs instruction_id_list + kwargs (IFEval checks) or a non-empty answer (math); the row's keys: {present}",
        )])

    def _ifeval(self, doc: dict, key, answers: list[str]) -> Graded:
        scores, issues = [], []
        for answer in answers:
            try:
                scores.append(float(ifeval.instruction_score(doc, answer)))
            except Exception as e:
                scores.append(0.0)
                issues.append(Issue("verifier raised", f"key {key!r}: IFEval check raised {type(e).__name__}: {_clip(str(e))}"))
        return Graded(scores, issues, {"check": "ifeval"})

    def _math(self, reference, key, answers: list[str]) -> Graded:
        scores, issues = [], []
        for answer in answers:
            result = mathcheck.check(answer, reference, self.math_timeout_s)
            if result.kind == mathcheck.UNPARSABLE_REFERENCE:
                # The reference is the same for every response: the whole prompt is unscorable.
                return Graded(None, [Issue("math reference unparsable", f"key {key!r}: {result.problem}")], {"check": "math"})
            scores.append(1.0 if result.correct else 0.0)
            if result.kind == mathcheck.TIMED_OUT:
                issues.append(Issue("math-verify timed out", f"key {key!r}: {result.problem}"))
            elif result.kind is not None:
                issues.append(Issue("verifier raised", f"key {key!r}: {result.problem}"))
        return Graded(scores, issues, {"check": "math"})
