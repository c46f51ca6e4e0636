"""The pairwise judge: both orders, position-bias cancellation, the jury, and verdict parsing."""

import json
import re

import pytest

from posttrain.graders.judge import JudgeGrader, judge_messages, parse_verdict

ANSWER = re.compile(r"\[Answer (A|B)\]\n(.*?)\n\[End of answer \1\]", re.DOTALL)


def shown_answers(conversation: list[dict]) -> tuple[str, str]:
    found = dict(ANSWER.findall(conversation[-1]["content"]))
    return found["A"], found["B"]


class ScriptedJudge:
    """A stand-in Generator: `decide(answer_a, answer_b)` returns the judge's text."""

    def __init__(self, name: str, decide, log: list):
        self.id = name
        self.decide = decide
        self.log = log
        self.prompts: list[tuple[str, str]] = []
        self.calls: list[dict] = []

    def generate(self, conversations, *, max_new_tokens, n=1, temperature=0.0, top_p=1.0, seed=0, chat_template_kwargs=None):
        self.log.append(("generate", self.id))
        self.calls.append({"count": len(conversations), "n": n, "temperature": temperature, "kwargs": chat_template_kwargs})
        out = []
        for conversation in conversations:
            a, b = shown_answers(conversation)
            self.prompts.append((a, b))
            out.append([self.decide(a, b)])
        return out

    def close(self):
        self.log.append(("close", self.id))


def prefers(marker: str):
    """A consistent judge: picks the answer containing `marker`, else the one whose marker sorts first."""

    def decide(a, b):
        return f"Comparing both.\nVerdict: {'A' if marker in a or (marker not in b and a < b) else 'B'}"

    return decide


def always_a(a, b):
    return "Answer A looks fine.\nVerdict: A"


def rambles(a, b):
    return "Both answers have merits and I cannot decide between them."


def make_grader(*deciders, log=None, names=None, reasoning_mode="no_think"):
    log = [] if log is None else log
    names = names or [f"judge{n}" for n in range(len(deciders))]
    judges = [ScriptedJudge(name, decide, log) for name, decide in zip(names, deciders)]

    def opener(judge):
        def open_():
            log.append(("open", judge.id))
            return judge

        return open_

    grader = JudgeGrader([(j.id, opener(j)) for j in judges], max_new_tokens=64, reasoning_mode=reasoning_mode)
    return grader, judges, log


def doc(prompt="Name a colour."):
    return {"messages": [{"role": "user", "content": prompt}], "prompt": prompt}


def test_consistent_judge_ranks_responses():
    # Ranks best > mid > worst regardless of position.
    rank = {"best": 0, "mid": 1, "worst": 2}
    decide = lambda a, b: f"Verdict: {'A' if rank[a] < rank[b] else 'B'}"  # noqa: E731
    grader, (judge,), _ = make_grader(decide, names=["m"])
    (g,) = grader.grade([doc()], [["mid", "worst", "best"]])
    assert grader.id == "judge:m"
    assert g.scores == [0.5, 0.0, 1.0]
    assert g.issues == [] and g.detail["position_flips"] == 0
    assert g.detail["comparisons"] == [
        {"a": 0, "b": 1, "votes": [0], "winner": 0},
        {"a": 0, "b": 2, "votes": [2], "winner": 2},
        {"a": 1, "b": 2, "votes": [2], "winner": 2},
    ]
    json.dumps(g.detail)
    assert judge.calls == [{"count": 6, "n": 1, "temperature": 0.0, "kwargs": {"enable_thinking": False}}]


def test_position_biased_judge_only_ties():
    grader, _, _ = make_grader(always_a)
    graded = grader.grade([doc(), doc("Say hi.")], [["x", "y", "z"], ["p", "q"]])
    assert graded[0].scores == [0.5, 0.5, 0.5] and graded[0].detail["position_flips"] == 3
    assert graded[1].scores == [0.5, 0.5] and graded[1].detail["position_flips"] == 1
    assert all(c["winner"] is None and c["votes"] == [None] for g in graded for c in g.detail["comparisons"])
    assert not graded[0].issues


def test_every_pair_is_asked_in_both_orders_in_one_batch():
    grader, (judge,), log = make_grader(prefers("good"))
    grader.grade([doc(), doc()], [["r1", "r2", "r3", "r4"], ["s1", "good s2"]])
    assert len(judge.prompts) == 2 * (6 + 1)
    assert sorted(judge.prompts) == sorted({(a, b) for a in ("r1", "r2", "r3", "r4") for b in ("r1", "r2", "r3", "r4") if a != b}
                                           | {("s1", "good s2"), ("good s2", "s1")})
    # A lone judge stays loaded for the next shard; close() frees it.
    grader.grade([doc()], [["t1", "good t2"]])
    assert log == [("open", "judge0"), ("generate", "judge0"), ("generate", "judge0")]
    grader.close()
    assert log[-1] == ("close", "judge0")


def test_prompt_asks_for_a_reasoned_order_and_length_blind_verdict():
    messages = judge_messages("[Question]\nWhat is 2+2?", "4", "Four")
    assert [m["role"] for m in messages] == ["system", "user"]
    text = messages[-1]["content"].lower()
    for word in ("relevance", "accuracy", "completeness", "clarity", "structure", "concision", "step by step", "order", "length"):
        assert word in text
    assert text.rstrip().endswith("`verdict: a` or `verdict: b`.")


def test_earlier_turns_are_shown_as_context():
    grader, (judge,), _ = make_grader(prefers("x"))
    seen = []
    real = judge.generate

    def spy(conversations, **kwargs):
        seen.extend(conversations)
        return real(conversations, **kwargs)

    judge.generate = spy
    messages = [{"role": "user", "content": "Pick a number."}, {"role": "assistant", "content": "7"}, {"role": "user", "content": "Double it."}]
    grader.grade([{"messages": messages, "prompt": "Double it."}], [["14", "x"]])
    content = seen[0][-1]["content"]
    assert "Pick a number." in content and "assistant: 7" in content
    assert content.index("Pick a number.") < content.index("Double it.")


def test_missing_verdicts_are_issues_and_no_usable_verdict_means_no_scores():
    # Doc 0: one order of pair (0, 1) lacks a verdict, so the judge abstains on that pair only.
    def flaky(a, b):
        return "I am not sure." if (a, b) == ("u", "v") else prefers("v")(a, b)

    grader, _, _ = make_grader(flaky, names=["m"])
    g0, = grader.grade([doc()], [["u", "v", "w"]])
    assert [i.kind for i in g0.issues] == ["judge answer has no verdict"]
    assert g0.issues[0].example == "m: ...I am not sure."
    assert g0.detail["comparisons"][0] == {"a": 0, "b": 1, "votes": [None], "winner": None}
    assert g0.scores == [0.75, 0.75, 0.0]  # the abstained pair is a tie; u beats w, v beats w

    grader, _, _ = make_grader(rambles, names=["m"])
    (g,) = grader.grade([doc()], [["u", "v"]])
    assert g.scores is None
    assert [i.kind for i in g.issues] == ["judge answer has no verdict"] * 2 + ["judge gave no usable verdict"]
    assert all(i.example.startswith("m: ...Both answers have merits") for i in g.issues[:2])


def test_jury_majority_and_one_judge_at_a_time():
    log = []
    grader, judges, _ = make_grader(prefers("X"), prefers("X"), prefers("Y"), log=log, names=["j1", "j2", "j3"])
    assert grader.id == "jury:j1,j2,j3"
    (g,) = grader.grade([doc()], [["Y", "X"]])
    assert g.scores == [0.0, 1.0]
    assert g.detail["comparisons"] == [{"a": 0, "b": 1, "votes": [1, 1, 0], "winner": 1}]
    assert log == [(step, j) for j in ("j1", "j2", "j3") for step in ("open", "generate", "close")]
    assert all(len(j.calls) == 1 for j in judges)

    # 1-1 with a position-biased third judge: no strict majority, a tie.
    grader, _, _ = make_grader(prefers("X"), prefers("Y"), always_a)
    (g,) = grader.grade([doc()], [["Y", "X"]])
    assert g.scores == [0.5, 0.5]
    assert g.detail["comparisons"][0]["votes"] == [1, 0, None] and g.detail["position_flips"] == 1


def test_think_blocks_are_stripped_from_responses_and_verdicts():
    def thinking_judge(a, b):
        # Reasons with a misleading verdict inside its think block first.
        return f"<think>\nVerdict: {'B' if 'good' in a else 'A'}\n</think>\n\nVerdict: {'A' if 'good' in a else 'B'}"

    grader, (judge,), _ = make_grader(thinking_judge, reasoning_mode="think")
    (g,) = grader.grade([doc()], [["<think>\nsecret plan\n</think>\n\ngood answer", "<think>plan</think>meh"]])
    assert g.scores == [1.0, 0.0]
    assert all("plan" not in a and "plan" not in b for a, b in judge.prompts)
    assert set(judge.prompts) == {("good answer", "meh"), ("meh", "good answer")}
    assert judge.calls[0]["kwargs"] == {"enable_thinking": True}


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("Verdict: A", "A"),
        ("verdict: b", "B"),
        ("Reasoning...\n**Verdict:** [[B]]", "B"),
        ('verdict: "a"', "A"),
        ("**Verdict: A**", "A"),
        ("Verdict: [A].", "A"),
        ("VERDICT : 'B'", "B"),
        ("Verdict: A\nOn reflection...\nVerdict: B", "B"),
        ("<think>Verdict: A</think>Verdict: B", "B"),
        ("<think>Verdict: A</think>", None),
        ("<think>Verdict: A and still thinking", None),
        ("Verdict: Both", None),
        ("Verdict: A or B", None),
        ("Verdict: B\nVerdict: tie", None),
        ("Verdict:", None),
        ("A is better.", None),
        ("", None),
    ],
)
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_real_tiny_model_as_judge():
    from posttrain.engines import open_generator
    from posttrain.local_models import prepare

    path = prepare("tiny")
    opener = lambda: open_generator("local:tiny", path, chat_template=None, engine="hf", batch_size=8)  # noqa: E731
    grader = JudgeGrader([("local:tiny", opener)], max_new_tokens=8, reasoning_mode="no_think")
    docs = [doc("Name a colour."), doc("What is 2+2?")]
    graded = grader.grade(docs, [["Red.", "<think>hmm</think>Blue.", "Green."], ["4", "Four."]])
    grader.close()
    assert len(graded) == 2
    for g, k in zip(graded, (3, 2)):
        json.dumps(g.detail)
        assert len(g.detail["comparisons"]) == k * (k - 1) // 2
        assert g.scores is None or (len(g.scores) == k and all(0.0 <= s <= 1.0 for s in g.scores))
        # A random model's answers are noise: each unusable one is an Issue, not a crash.
        assert g.issues and all(i.example.startswith("local:tiny: ...") for i in g.issues if i.kind == "judge answer has no verdict")
