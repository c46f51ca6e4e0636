"""Pairwise LLM judge, with position-bias cancellation and an optional jury.

Every pair of responses is shown to every judge twice, with the answers in
both orders. A judge's vote counts only when both orders name the same
response; a judge that follows the position instead is recorded as a tie.
Several judges form a jury: a pair needs a strict majority of all judges.
A response scores its share of pairs won, ties counting half.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from itertools import combinations

from posttrain.engines import Generator
from posttrain.generation import reasoning_kwargs, split_reasoning
from posttrain.graders import Graded, Issue

SYSTEM = "You are an impartial judge of answers written by AI assistants."

INSTRUCTIONS = """Compare the two answers to the question below and decide which one is better.

Judge them on relevance, accuracy, completeness, clarity, structure and concision.
Reason step by step: first note the strengths and weaknesses of each answer on these criteria, then weigh them.
The order in which the answers are shown must not sway you, and neither must their length:
a longer answer is better only when the extra text makes it more useful.

{question}

[Answer A]
{answer_a}
[End of answer A]

[Answer B]
{answer_b}
[End of answer B]

After your reasoning, end with one final line that is exactly `Verdict: A` or `Verdict: B`."""

# The verdict line, with markdown allowed around the word; the rest of the line is checked separately.
_VERDICT = re.compile(r"\bverdict\b[\s*_]*:(?P<rest>[^\n]*)", re.IGNORECASE)
_DECORATION = "*_[]()\"'`“”‘’ \t."


def parse_verdict(text: str) -> str | None:
    """"A" or "B" from the judge's last verdict line, or None when it has none (or an unclear one)."""
    matches = list(_VERDICT.finditer(split_reasoning(text)[1]))
    if not matches:
        return None
    # Only markup may surround the letter: "Verdict: A or B" and "Verdict: Both" say nothing usable.
    letter = matches[-1].group("rest").strip(_DECORATION).upper()
    return letter if letter in ("A", "B") else None


def render_question(messages: list[dict]) -> str:
    """The prompt conversation as the judge sees it: earlier turns, if any, as context for the last one."""
    *context, last = messages
    question = f"[Question]\n{last['content']}\n[End of question]"
    if not context:
        return question
    turns = "\n\n".join(f"{m['role']}: {m['content']}" for m in context)
    return f"[Conversation so far]\n{turns}\n[End of conversation so far]\n\n{question}"


def judge_messages(question: str, answer_a: str, answer_b: str) -> list[dict]:
    user = INSTRUCTIONS.format(question=question, answer_a=answer_a, answer_b=answer_b)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


class JudgeGrader:
    def __init__(self, judges: list[tuple[str, Callable[[], Generator]]], *, max_new_tokens: int, reasoning_mode: str):
        if not judges:
            raise ValueError("a judge grader needs at least one judge model")
        self.judges = judges
        self._kept: Generator | None = None
        self.max_new_tokens = max_new_tokens
        self.reasoning_mode = reasoning_mode
        ids = [model_id for model_id, _ in judges]
        self.id = f"judge:{ids[0]}" if len(ids) == 1 else "jury:" + ",".join(ids)

    def grade(self, docs: list[dict], responses: list[list[str]]) -> list[Graded]:
        # One (doc, i, j) per unordered pair; conversation 2p asks it as (A=i, B=j), 2p+1 as (A=j, B=i).
        pairs = [(d, i, j) for d, resps in enumerate(responses) for i, j in combinations(range(len(resps)), 2)]
        conversations = []
        for d, i, j in pairs:
            question = render_question(docs[d]["messages"])
            # The judge grades the answer, as every grader does: a think block is not part of it.
            a, b = (split_reasoning(responses[d][x])[1].strip() for x in (i, j))
            conversations += [judge_messages(question, a, b), judge_messages(question, b, a)]
        texts = [self._ask(opener, conversations) for _, opener in self.judges] if pairs else []

        graded = [Graded(scores=None, detail={"comparisons": [], "position_flips": 0}) for _ in docs]
        usable = [False] * len(docs)
        for p, (d, i, j) in enumerate(pairs):
            votes: list[int | None] = []
            for (judge_id, _), outputs in zip(self.judges, texts):
                first, second = outputs[2 * p], outputs[2 * p + 1]
                verdicts = parse_verdict(first), parse_verdict(second)
                for text, verdict in zip((first, second), verdicts):
                    if verdict is None:
                        graded[d].issues.append(Issue("judge answer has no verdict", f"{judge_id}: ...{text[-200:]}"))
                if None in verdicts:
                    votes.append(None)  # abstains
                    continue
                usable[d] = True
                picks = ({"A": i, "B": j}[verdicts[0]], {"A": j, "B": i}[verdicts[1]])
                if picks[0] == picks[1]:
                    votes.append(picks[0])
                else:  # it chose by position, not content: its vote cancels out
                    votes.append(None)
                    graded[d].detail["position_flips"] += 1
            # A strict majority of all judges, so abstentions and ties weigh against a winner.
            top = Counter(v for v in votes if v is not None).most_common(1)
            winner = top[0][0] if top and top[0][1] > len(self.judges) / 2 else None
            graded[d].detail["comparisons"].append({"a": i, "b": j, "votes": votes, "winner": winner})

        for d, g in enumerate(graded):
            k = len(responses[d])
            if k < 2:
                g.issues.append(Issue("fewer than two responses to compare", f"doc {d}: {k} response(s)"))
            elif not usable[d]:
                g.issues.append(Issue("judge gave no usable verdict", f"{self.id}: {str(docs[d].get('prompt', ''))[:200]}"))
            else:
                points = [0.0] * k
                for c in g.detail["comparisons"]:
                    if c["winner"] is None:
                        points[c["a"]] += 0.5
                        points[c["b"]] += 0.5
                    else:
                        points[c["winner"]] += 1.0
                g.scores = [p / (k - 1) for p in points]
        return graded

    def _ask(self, opener: Callable[[], Generator], conversations: list[list[dict]]) -> list[str]:
        # One judge model in memory at a time: open, run every comparison in one
        # batch, close. A lone judge stays loaded for the next shard instead.
        generator = self._kept or opener()
        try:
            outputs = generator.generate(conversations, max_new_tokens=self.max_new_tokens, n=1, temperature=0.0,
                                         chat_template_kwargs=reasoning_kwargs(self.reasoning_mode))
        finally:
            if len(self.judges) == 1:
                self._kept = generator
            else:
                generator.close()
        return [out[0] if out else "" for out in outputs]

    def close(self) -> None:
        if self._kept is not None:
            self._kept.close()
            self._kept = None
