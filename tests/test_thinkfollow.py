"""ThinkFollow (posttrain.eval.thinkfollow): the per-turn scorer, the seeded
conversations, the turn-by-turn runner against a scripted generator, the
aggregate numbers, the question file, and an end-to-end run on the tiny model."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from posttrain import decontam
from posttrain.eval import thinkfollow as tf

REPO = Path(__file__).resolve().parents[1]
QUESTIONS_FILE = REPO / "src" / "posttrain" / "eval" / "data" / "thinkfollow_turns.jsonl"
IFEVAL = REPO.parent / "shared" / "data" / "ifeval" / "input_data.jsonl"

THOUGHT = "<think>\nThe user asks something simple. Answer it briefly.\n</think>\n\nHere you go."
EMPTY = "<think>\n\n</think>\nHere you go."
PLAIN = "Here you go."
CUT_OFF = "<think>\nLet me work through this step by"
OPEN_ONLY = "<think>\n"


class Scripted:
    """A Generator whose answers a function of the conversation decides; it
    records every call (conversations deep-copied, keyword arguments)."""

    id = "scripted"

    def __init__(self, reply):
        self.reply = reply
        self.calls: list[dict] = []

    def generate(self, conversations, *, max_new_tokens, n=1, temperature=0.0, top_p=1.0, seed=0, chat_template_kwargs=None):
        self.calls.append({"conversations": copy.deepcopy(conversations), "max_new_tokens": max_new_tokens, "n": n,
                           "temperature": temperature, "chat_template_kwargs": chat_template_kwargs})
        return [[self.reply(c, len(self.calls))] for c in conversations]

    def close(self) -> None:
        pass


def flag_of(message: dict) -> str:
    return tf.NO_THINK if message["content"].endswith(" /no_think") else tf.THINK


def obedient(conversation: list[dict], call: int) -> str:
    """Follows the last user turn's flag; the answer names the call and the turn."""
    tag = f"call {call} turn {len(conversation) // 2}: {conversation[-1]['content']}"
    if flag_of(conversation[-1]) == tf.THINK:
        return f"<think>\nThinking about {tag}\n</think>\n\nAnswer to {tag}"
    return f"<think>\n\n</think>\nAnswer to {tag}"


def questions() -> list[str]:
    return tf.load_questions(QUESTIONS_FILE)


# -- scorer ---------------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "response", "kind", "correct"), [
    (tf.THINK, THOUGHT, tf.REASONING, True),
    (tf.THINK, "  " + THOUGHT, tf.REASONING, True),
    (tf.THINK, EMPTY, tf.EMPTY_BLOCK, False),
    (tf.THINK, "<think> \n\t </think>Answer", tf.EMPTY_BLOCK, False),
    (tf.THINK, PLAIN, tf.NO_BLOCK, False),
    (tf.THINK, "", tf.NO_BLOCK, False),
    (tf.THINK, CUT_OFF, tf.UNFINISHED, True),  # reasoning cut off by the token limit still counts
    (tf.THINK, OPEN_ONLY, tf.UNFINISHED_EMPTY, False),
    (tf.THINK, "Sure. <think>late reasoning</think>", tf.NO_BLOCK, False),  # only a leading block counts
    (tf.NO_THINK, EMPTY, tf.EMPTY_BLOCK, True),
    (tf.NO_THINK, PLAIN, tf.NO_BLOCK, True),
    (tf.NO_THINK, "", tf.NO_BLOCK, True),
    (tf.NO_THINK, THOUGHT, tf.REASONING, False),
    (tf.NO_THINK, CUT_OFF, tf.UNFINISHED, False),
    (tf.NO_THINK, OPEN_ONLY, tf.UNFINISHED_EMPTY, False),
])
def test_turn_correct(flag, response, kind, correct):
    assert tf.classify(response) == kind
    assert tf.turn_correct(flag, response) is correct


def test_unknown_flag_is_an_error():
    with pytest.raises(ValueError, match="unknown flag"):
        tf.turn_correct("/maybe", PLAIN)


# -- conversations ---------------------------------------------------------------------


def test_question_file():
    rows = [json.loads(line) for line in QUESTIONS_FILE.read_text(encoding="utf-8").splitlines()]
    assert 30 <= len(rows) <= 60
    assert all(set(r) == {"id", "question"} for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    qs = questions()
    assert len(set(qs)) == len(qs) == len(rows)
    for q in qs:
        assert 3 <= len(q.split()) <= 25, q
        assert "/think" not in q and "/no_think" not in q and "<think>" not in q, q


def test_question_file_does_not_copy_ifeval():
    if not IFEVAL.exists():
        pytest.skip(f"IFEval prompts not found at {IFEVAL}")

    # The n-gram index prefgen decontaminates with: no shared 8-gram at all.
    index = decontam.EvalIndex(8)
    index.add("ifeval", (json.loads(line)["prompt"] for line in IFEVAL.read_text(encoding="utf-8").splitlines()))
    assert not [q for q in questions() if index.overlap(q)[0] > 0]


def test_build_conversations_is_seeded():
    qs = questions()
    a = tf.build_conversations(qs, conversations=20, turns=4, seed=0)
    assert a == tf.build_conversations(qs, conversations=20, turns=4, seed=0)
    assert a != tf.build_conversations(qs, conversations=20, turns=4, seed=1)
    assert len(a) == 20 and len({c["id"] for c in a}) == 20
    for c in a:
        assert set(c) == {"id", "turns"} and len(c["turns"]) == 4
        assert all(set(t) == {"question", "flag"} and t["flag"] in tf.FLAGS and t["question"] in qs for t in c["turns"])
        assert len({t["question"] for t in c["turns"]}) == 4, "a question repeated inside a conversation"


def test_flags_are_roughly_balanced_and_vary_within_conversations():
    convs = tf.build_conversations(questions(), conversations=100, turns=4, seed=3)
    flags = [t["flag"] for c in convs for t in c["turns"]]
    assert 0.4 <= flags.count(tf.THINK) / len(flags) <= 0.6
    assert sum(len({t["flag"] for t in c["turns"]}) == 2 for c in convs) > 50


def test_build_conversations_rejects_impossible_requests():
    with pytest.raises(ValueError, match="at least 5 questions"):
        tf.build_conversations(["a?", "b?", "c?"], conversations=2, turns=5, seed=0)
    with pytest.raises(ValueError, match="at least one"):
        tf.build_conversations(["a?"], conversations=0, turns=1, seed=0)


# -- runner ----------------------------------------------------------------------------


def test_run_feeds_back_own_answers_one_call_per_turn():
    convs = tf.build_conversations(questions(), conversations=5, turns=3, seed=7)
    gen = Scripted(obedient)
    transcripts = tf.run(gen, convs, max_new_tokens=32)

    assert len(gen.calls) == 3, "one generate call per turn index"
    for t, call in enumerate(gen.calls):
        assert len(call["conversations"]) == 5, "every conversation in the same call"
        assert call["chat_template_kwargs"] is None, "no reasoning mode forced through the template"
        assert call["temperature"] == 0.0 and call["n"] == 1 and call["max_new_tokens"] == 32
        for conv, sent, tr in zip(convs, call["conversations"], transcripts, strict=True):
            assert [m["role"] for m in sent] == ["user", "assistant"] * t + ["user"], "no system message, alternating turns"
            # flags appended to each user turn
            for k in range(t + 1):
                turn = conv["turns"][k]
                assert sent[2 * k]["content"] == f"{turn['question']} {turn['flag']}"
            # the model's own earlier responses, verbatim, think blocks included
            assert [m["content"] for m in sent[1::2]] == [x["response"] for x in tr["turns"][:t]]
            assert all(f"call {k + 1} turn {k}:" in sent[2 * k + 1]["content"] for k in range(t))

    for conv, tr in zip(convs, transcripts, strict=True):
        assert tr["id"] == conv["id"] and tr["correct"] is True
        assert [x["flag"] for x in tr["turns"]] == [x["flag"] for x in conv["turns"]]
        assert [m["content"] for m in tr["messages"][1::2]] == [x["response"] for x in tr["turns"]]
    assert tf.aggregate(transcripts)["thinkfollow.turn_acc"] == 1.0


def test_run_scores_each_turn_by_its_own_flag():
    """A model that keeps following the first turn's flag is wrong exactly on the turns whose flag differs."""

    def stubborn(conversation, call):
        return THOUGHT if flag_of(conversation[0]) == tf.THINK else PLAIN

    convs = tf.build_conversations(questions(), conversations=12, turns=4, seed=5)
    transcripts = tf.run(Scripted(stubborn), convs, max_new_tokens=16)
    for conv, tr in zip(convs, transcripts, strict=True):
        first = conv["turns"][0]["flag"]
        assert [x["correct"] for x in tr["turns"]] == [t["flag"] == first for t in conv["turns"]]
        assert tr["correct"] == all(t["flag"] == first for t in conv["turns"])
    assert any(not tr["correct"] for tr in transcripts) and any(tr["correct"] for tr in transcripts)


def test_run_handles_conversations_of_different_lengths():
    convs = [{"id": "a", "turns": [{"question": "One?", "flag": tf.THINK}]},
             {"id": "b", "turns": [{"question": "Two?", "flag": tf.NO_THINK}, {"question": "Three?", "flag": tf.THINK}]}]
    gen = Scripted(obedient)
    transcripts = tf.run(gen, convs, max_new_tokens=8)
    assert [len(c["conversations"]) for c in gen.calls] == [2, 1]
    assert [len(t["turns"]) for t in transcripts] == [1, 2]


# -- aggregate -------------------------------------------------------------------------


def transcript(*turns: tuple[str, bool]) -> dict:
    return {"turns": [{"flag": f, "correct": c} for f, c in turns]}


def test_aggregate():
    transcripts = [
        transcript((tf.THINK, True), (tf.NO_THINK, True)),
        transcript((tf.THINK, False), (tf.NO_THINK, True), (tf.NO_THINK, False)),
        transcript((tf.THINK, True), (tf.THINK, True), (tf.NO_THINK, True)),
    ]
    assert tf.aggregate(transcripts) == {
        "thinkfollow.turn_acc": 6 / 8,
        "thinkfollow.conv_acc": 2 / 3,
        "thinkfollow.think_acc": 3 / 4,
        "thinkfollow.no_think_acc": 3 / 4,
    }


def test_aggregate_without_a_flag_or_turns():
    scores = tf.aggregate([transcript((tf.THINK, True))])
    assert scores["thinkfollow.think_acc"] == 1.0 and math.isnan(scores["thinkfollow.no_think_acc"])
    with pytest.raises(ValueError, match="no turns"):
        tf.aggregate([])


# -- the tiny model, end to end --------------------------------------------------------


def test_tiny_model_end_to_end_is_repeatable():
    import torch

    from posttrain.engines import open_generator
    from posttrain.local_models import prepare

    gen = open_generator("local:tiny", prepare("tiny"), chat_template="smollm3", engine="hf", batch_size=8)
    try:
        # As initialised, the tiny model only ever repeats the prompt's last newline (an empty answer);
        # larger seeded weights in its blocks give answers that depend on the conversation.
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in gen.model.named_parameters():
                if ".layers." in name and p.ndim == 2:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        convs = tf.build_conversations(questions(), conversations=6, turns=2, seed=0)
        first = tf.run(gen, convs, max_new_tokens=6)
        second = tf.run(gen, convs, max_new_tokens=6)
    finally:
        gen.close()

    assert first == second
    assert len(first) == 6
    for conv, tr in zip(convs, first, strict=True):
        assert [m["role"] for m in tr["messages"]] == ["user", "assistant"] * 2
        assert [m["content"] for m in tr["messages"][0::2]] == [f"{t['question']} {t['flag']}" for t in conv["turns"]]
        for turn in tr["turns"]:
            assert isinstance(turn["response"], str)
            assert turn["kind"] in {tf.REASONING, tf.UNFINISHED, tf.UNFINISHED_EMPTY, tf.EMPTY_BLOCK, tf.NO_BLOCK}
            assert turn["correct"] == tf.turn_correct(turn["flag"], turn["response"])
        assert tr["correct"] == all(t["correct"] for t in tr["turns"])
    assert any(t["response"] for tr in first for t in tr["turns"]), "the tiny model should say something"
    scores = tf.aggregate(first)
    assert set(scores) == {"thinkfollow.turn_acc", "thinkfollow.conv_acc", "thinkfollow.think_acc", "thinkfollow.no_think_acc"}
    assert all(math.isnan(v) or 0.0 <= v <= 1.0 for v in scores.values())
