"""ThinkFollow: does a hybrid reasoning model follow a /think or /no_think flag
given turn by turn?

Each conversation is a few everyday questions; every user turn ends with
" /think" or " /no_think", drawn at random (seeded). The conversation is
rendered with the chat template's defaults: no `enable_thinking` kwarg and no
flag in a system message (there is no system message), so the template forces
no mode and the model itself must follow each turn's flag. The model's own
raw responses, think blocks included, are fed back as the assistant turns
(the smollm3 template keeps reasoning in every assistant turn), and turn t of
every conversation is generated in one greedy `generate` call.

Scoring, per turn (only a think block at the very start of a response counts,
as in `posttrain.generation.split_reasoning`; tags later in the text are part
of the answer):

- /think is followed when the response opens with a think block holding
  non-whitespace reasoning. A block cut off by the token limit ("<think>
  reasoning..." with no "</think>") counts: the model did start reasoning, and
  the budget is ours, not its choice.
- /no_think is followed when the response has no think block or an empty,
  closed one ("<think>\\n\\n</think>\\n answer"). An unclosed block is not
  followed, even with nothing in it yet: the model opened a block to reason in.

`aggregate` gives the share of turns followed, of conversations with every
turn followed, and of /think and /no_think turns followed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from posttrain.engines import Generator
from posttrain.generation import THINK_BLOCK, split_reasoning

THINK, NO_THINK = "/think", "/no_think"
FLAGS = (THINK, NO_THINK)

# What a response's opening looks like (`classify`).
REASONING = "reasoning"  # closed think block with reasoning in it
UNFINISHED = "unfinished"  # think block with reasoning, cut off before "</think>"
UNFINISHED_EMPTY = "unfinished_empty"  # "<think>" and nothing else yet
EMPTY_BLOCK = "empty_block"  # closed think block with only whitespace in it
NO_BLOCK = "no_block"  # no think block at the start

FOLLOWS = {THINK: {REASONING, UNFINISHED}, NO_THINK: {EMPTY_BLOCK, NO_BLOCK}}


def load_questions(path: Path) -> list[str]:
    """The questions of a `{"id", "question"}` JSONL file (thinkfollow_turns.jsonl)."""
    questions = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row.get("question"), str) or not row["question"].strip():
                raise ValueError(f"{path}:{lineno}: row {row.get('id')!r} has no question")
            questions.append(row["question"].strip())
    return questions


def build_conversations(questions: list[str], *, conversations: int, turns: int, seed: int) -> list[dict]:
    """`conversations` conversations of `turns` turns: `{"id", "turns": [{"question", "flag"}]}`.
    Questions are drawn without repeats inside a conversation and flags are
    fair coin flips, all from `random.Random(seed)`: the same seed gives the
    same conversations."""
    if turns < 1 or conversations < 1:
        raise ValueError(f"need at least one conversation and one turn (got {conversations} conversations of {turns} turns)")
    if turns > len(questions):
        raise ValueError(f"{turns} turns without repeats need at least {turns} questions; got {len(questions)}")
    rng = random.Random(seed)
    convs = []
    for i in range(conversations):
        picked = rng.sample(questions, turns)
        convs.append({"id": f"tf-{i:04d}", "turns": [{"question": q, "flag": rng.choice(FLAGS)} for q in picked]})
    return convs


def user_message(question: str, flag: str) -> str:
    """The user turn as the model sees it: "<question> /think"."""
    if flag not in FLAGS:
        raise ValueError(f"unknown flag {flag!r}; expected one of {FLAGS}")
    return f"{question} {flag}"


def classify(response: str) -> str:
    """How a response opens: REASONING, UNFINISHED, UNFINISHED_EMPTY, EMPTY_BLOCK or NO_BLOCK."""
    if not response.lstrip().startswith("<think>"):
        return NO_BLOCK
    reasoning, _ = split_reasoning(response)
    if THINK_BLOCK.match(response):
        return REASONING if reasoning.strip() else EMPTY_BLOCK
    return UNFINISHED if reasoning.strip() else UNFINISHED_EMPTY


def turn_correct(flag: str, response: str) -> bool:
    """Whether `response` follows `flag` (rules in the module docstring)."""
    if flag not in FOLLOWS:
        raise ValueError(f"unknown flag {flag!r}; expected one of {FLAGS}")
    return classify(response) in FOLLOWS[flag]


def run(generator: Generator, convs: list[dict], *, max_new_tokens: int) -> list[dict]:
    """Play every conversation turn by turn with the model's own answers fed
    back; one greedy `generate` call per turn index, for all conversations
    that have that turn. Returns one transcript per conversation:
    `{"id", "messages", "turns": [{"question", "flag", "response", "kind", "correct"}], "correct"}`."""
    transcripts = [{"id": c["id"], "messages": [], "turns": [], "correct": True} for c in convs]
    for t in range(max((len(c["turns"]) for c in convs), default=0)):
        active = [i for i, c in enumerate(convs) if t < len(c["turns"])]
        for i in active:
            turn = convs[i]["turns"][t]
            transcripts[i]["messages"].append({"role": "user", "content": user_message(turn["question"], turn["flag"])})
        # No chat_template_kwargs: the template's default mode, whatever the flag says.
        outputs = generator.generate([list(transcripts[i]["messages"]) for i in active], max_new_tokens=max_new_tokens, n=1, temperature=0.0)
        if len(outputs) != len(active):
            raise RuntimeError(f"generator {generator.id}: {len(outputs)} results for {len(active)} conversations at turn {t}")
        for i, out in zip(active, outputs, strict=True):
            turn = convs[i]["turns"][t]
            response = out[0]
            kind = classify(response)
            correct = kind in FOLLOWS[turn["flag"]]
            transcripts[i]["messages"].append({"role": "assistant", "content": response})
            transcripts[i]["turns"].append({"question": turn["question"], "flag": turn["flag"], "response": response,
                                            "kind": kind, "correct": correct})
            transcripts[i]["correct"] = transcripts[i]["correct"] and correct
    return transcripts


def _share(values: list[bool]) -> float:
    """Share of True; NaN for no values (a flag that never came up)."""
    return sum(values) / len(values) if values else float("nan")


def aggregate(transcripts: list[dict]) -> dict[str, float]:
    """thinkfollow.turn_acc (turns followed), thinkfollow.conv_acc (conversations
    with every turn followed), thinkfollow.think_acc / thinkfollow.no_think_acc
    (turns followed among /think and /no_think turns; NaN when there were none)."""
    turns = [t for tr in transcripts for t in tr["turns"]]
    if not turns:
        raise ValueError("no turns to score")
    return {
        "thinkfollow.turn_acc": _share([t["correct"] for t in turns]),
        "thinkfollow.conv_acc": _share([all(t["correct"] for t in tr["turns"]) for tr in transcripts]),
        "thinkfollow.think_acc": _share([t["correct"] for t in turns if t["flag"] == THINK]),
        "thinkfollow.no_think_acc": _share([t["correct"] for t in turns if t["flag"] == NO_THINK]),
    }
