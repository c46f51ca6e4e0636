"""System-prompt adherence (posttrain.eval.persona): every check kind, the
persona file (valid, satisfiable, asked for by its own system prompts), the
multi-turn runner against a scripted generator, the aggregate, and a run on
the tiny model."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from posttrain import decontam
from posttrain.eval import persona as ps

REPO = Path(__file__).resolve().parents[1]
PERSONAS_FILE = REPO / "src" / "posttrain" / "eval" / "data" / "personas.jsonl"
IFEVAL = REPO.parent / "shared" / "data" / "ifeval" / "input_data.jsonl"
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}


class Scripted:
    """A Generator whose answers a function of the conversation decides; it records every call."""

    id = "scripted"

    def __init__(self, reply):
        self.reply = reply
        self.calls: list[dict] = []

    def generate(self, conversations, *, max_new_tokens, n=1, temperature=0.0, top_p=1.0, seed=0, chat_template_kwargs=None):
        self.calls.append({"conversations": copy.deepcopy(conversations), "temperature": temperature, "n": n,
                           "chat_template_kwargs": chat_template_kwargs})
        return [[self.reply(c, len(self.calls))] for c in conversations]

    def close(self) -> None:
        pass


def personas() -> list[dict]:
    return ps.load_personas(PERSONAS_FILE)


# -- check kinds ---------------------------------------------------------------------


@pytest.mark.parametrize(("check", "answer"), [
    ({"kind": "starts_with", "text": "Ahoy"}, "Ahoy, matey! The sea is calm."),
    ({"kind": "starts_with", "text": "Ahoy"}, "  ahoy there"),
    ({"kind": "starts_with", "text": "Ahoy"}, "**Ahoy**, matey."),
    ({"kind": "ends_with", "text": "Over and out."}, "Wind from the north. Over and out."),
    ({"kind": "ends_with", "text": "Over and out."}, "Wind from the north. over and out.\n\n"),
    ({"kind": "ends_with", "text": "Over and out."}, "Wind from the north. *Over and out.*"),
    ({"kind": "contains_any", "words": ["thou", "thy"]}, "Guard THY king well."),
    ({"kind": "contains_any", "words": ["night", "darkness"]}, "In the darkness, indexes help."),
    ({"kind": "contains_any", "words": ["good evening"]}, "And a good  evening? No: a good evening to you."),
    ({"kind": "not_contains", "text": "z"}, "Lions, tigers and bears."),
    ({"kind": "not_contains", "text": "!"}, "BEEP. Distance 384400 km."),
    ({"kind": "max_words", "n": 5}, "one two three four five"),
    ({"kind": "max_words", "n": 5}, "  one\ntwo  three  "),
    ({"kind": "bullet_count", "n": 3}, "- one\n- two\n- three"),
    ({"kind": "bullet_count", "n": 3}, "* one\n  * two\n• three"),
])
def test_check_passes(check, answer):
    assert ps.check(answer, [check]) == []


@pytest.mark.parametrize(("check", "answer", "failure"), [
    ({"kind": "starts_with", "text": "Ahoy"}, "Well, ahoy matey.", "starts_with 'Ahoy'"),
    ({"kind": "starts_with", "text": "Ahoy"}, "", "starts_with 'Ahoy'"),
    ({"kind": "ends_with", "text": "Over and out."}, "Over and out. Wind from the north.", "ends_with 'Over and out.'"),
    ({"kind": "ends_with", "text": "Over and out."}, "Wind from the north. Over and out", "ends_with 'Over and out.'"),
    ({"kind": "contains_any", "words": ["thou", "thy"]}, "Stay healthy and worthy.", "contains_any ['thou', 'thy']"),
    ({"kind": "contains_any", "words": ["night"]}, "See you tonight.", "contains_any ['night']"),
    ({"kind": "not_contains", "text": "z"}, "Zebras are striped.", "not_contains 'z'"),
    ({"kind": "not_contains", "text": "z"}, "A pizza.", "not_contains 'z'"),
    ({"kind": "not_contains", "text": "!"}, "BEEP! Distance 384400 km.", "not_contains '!'"),
    ({"kind": "max_words", "n": 5}, "one two three four five six", "max_words 5 (got 6)"),
    ({"kind": "bullet_count", "n": 3}, "- one\n- two", "bullet_count 3 (got 2)"),
    ({"kind": "bullet_count", "n": 3}, "- one\n- two\n- three\n- four", "bullet_count 3 (got 4)"),
    ({"kind": "bullet_count", "n": 3}, "1. one\n2. two\n3. three", "bullet_count 3 (got 0)"),
    ({"kind": "bullet_count", "n": 1}, "**Bold** is not a bullet", "bullet_count 1 (got 0)"),
])
def test_check_fails(check, answer, failure):
    assert ps.check(answer, [check]) == [failure]


def test_check_lists_every_failure_in_order():
    checks = [{"kind": "starts_with", "text": "Ahoy"}, {"kind": "max_words", "n": 3}, {"kind": "contains_any", "words": ["matey"]}]
    assert ps.check("Ahoy there my matey", checks) == ["max_words 3 (got 4)"]
    assert ps.check("Hello there my friend", checks) == ["starts_with 'Ahoy'", "max_words 3 (got 4)", "contains_any ['matey']"]


def test_think_block_is_ignored():
    checks = [{"kind": "starts_with", "text": "Ahoy"}, {"kind": "not_contains", "text": "z"}, {"kind": "max_words", "n": 3},
              {"kind": "ends_with", "text": "matey."}]
    response = "<think>\nThe zany rules say: start with Ahoy, never a z, at most three words.\n</think>\n\nAhoy there, matey."
    assert ps.check(response, checks) == []
    # Cut off inside the think block: there is no answer at all.
    assert ps.check("<think>\nAhoy matey, a zillion thoughts", checks) == ["starts_with 'Ahoy'", "ends_with 'matey.'"]


# -- the persona file -----------------------------------------------------------------


def ideal(checks: list[dict], without: dict | None = None) -> str:
    """An answer that passes every check (except `without`'s words when that is a contains_any)."""
    start = next((c["text"] for c in checks if c["kind"] == "starts_with"), "")
    end = next((c["text"] for c in checks if c["kind"] == "ends_with"), "")
    body = " ".join(["Sure"] + [c["words"][0] for c in checks if c["kind"] == "contains_any" and c is not without])
    bullets = next((c["n"] for c in checks if c["kind"] == "bullet_count"), 0)
    if bullets:
        body = "\n".join(f"- Point {i} {body}" for i in range(1, bullets + 1))
    return "\n".join(part for part in (start, body, end) if part)


def violate(checks: list[dict], check: dict) -> str:
    """The ideal answer broken for `check`."""
    answer = ideal(checks, without=check)
    return {
        "starts_with": lambda: "Well. " + answer,
        "ends_with": lambda: answer + " Bye",
        "contains_any": lambda: answer,
        "not_contains": lambda: answer + " " + check.get("text", ""),
        "max_words": lambda: answer + " word" * check.get("n", 0),
        "bullet_count": lambda: answer + "\n- one more point",
    }[check["kind"]]()


def test_persona_file_schema():
    rows = personas()
    assert len(rows) >= 8
    assert len({p["id"] for p in rows}) == len(rows)
    kinds = {c["kind"] for p in rows for c in p["checks"]}
    assert kinds == set(ps.CHECK_KINDS), "every check kind is used by some persona"
    for p in rows:
        assert len(p["turns"]) == 3, p["id"]
        assert "/think" not in p["system"] and "/no_think" not in p["system"], f"{p['id']}: a reasoning flag in the system prompt"
    line_count = len(PERSONAS_FILE.read_text(encoding="utf-8").splitlines())
    assert line_count == len(rows)


def test_every_persona_is_satisfiable_and_every_check_bites():
    for p in personas():
        answer = ideal(p["checks"])
        assert ps.check(answer, p["checks"]) == [], f"{p['id']}: the ideal answer {answer!r} fails"
        assert ps.check(f"<think>\nplanning\n</think>\n\n{answer}", p["checks"]) == [], p["id"]
        for c in p["checks"]:
            failed = ps.check(violate(p["checks"], c), p["checks"])
            assert any(f.startswith(c["kind"]) for f in failed), f"{p['id']}: {c} does not catch a violation"


def test_system_prompts_ask_for_what_is_checked():
    for p in personas():
        system = p["system"]
        for c in p["checks"]:
            kind = c["kind"]
            if kind in ("starts_with", "ends_with", "not_contains"):
                assert f'"{c["text"]}"' in system, f"{p['id']}: system prompt does not quote {c['text']!r}"
            elif kind == "contains_any":
                for w in c["words"]:
                    assert f'"{w}"' in system, f"{p['id']}: system prompt does not quote {w!r}"
            elif kind == "max_words":
                assert re.search(rf"\b{c['n']} words\b", system), f"{p['id']}: system prompt does not say {c['n']} words"
            elif kind == "bullet_count":
                assert re.search(rf"\b({c['n']}|{NUMBER_WORDS[c['n']]}) bullet points\b", system), p["id"]
            wording = {"starts_with": r"\b(start|begin)", "ends_with": r"\b(end|finish)"}.get(kind)
            if wording:
                assert re.search(wording, system, re.IGNORECASE), f"{p['id']}: system prompt does not say where {c['text']!r} goes"


def test_persona_file_does_not_copy_ifeval():
    if not IFEVAL.exists():
        pytest.skip(f"IFEval prompts not found at {IFEVAL}")

    # The n-gram index prefgen decontaminates with: no shared 8-gram at all.
    index = decontam.EvalIndex(8)
    index.add("ifeval", (json.loads(line)["prompt"] for line in IFEVAL.read_text(encoding="utf-8").splitlines()))
    texts = [(p["id"], t) for p in personas() for t in [p["system"], *p["turns"]]]
    assert not [(pid, t) for pid, t in texts if index.overlap(t)[0] > 0]


@pytest.mark.parametrize(("row", "message"), [
    ({"checks": [{"kind": "rhymes"}]}, r"persona 'bad'.*check 0: unknown check kind 'rhymes'; allowed kinds: starts_with, ends_with, "
                                       r"contains_any, not_contains, max_words, bullet_count"),
    ({"checks": [{"kind": "max_words", "n": 5}, {"kind": "starts_with"}]}, r"persona 'bad'.*check 1: check starts_with takes exactly \['text'\]"),
    ({"checks": [{"kind": "max_words", "n": "5"}]}, r"check 0: check max_words: n must be a int"),
    ({"checks": [{"kind": "contains_any", "words": []}]}, r"words must be a non-empty list"),
    ({"checks": []}, r"checks must be a non-empty list"),
    ({"turns": []}, r"turns must be a non-empty list"),
    ({"voice": "loud"}, r"expected the keys"),
])
def test_bad_rows_are_refused_up_front(tmp_path, row, message):
    good = {"id": "fine", "system": 'Start with "Hi".', "turns": ["Hello?"], "checks": [{"kind": "starts_with", "text": "Hi"}]}
    bad = {**good, "id": "bad", **row}
    path = tmp_path / "personas.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=message) as info:
        ps.load_personas(path)
    assert f"{path}:2" in str(info.value)


def test_duplicate_ids_are_refused(tmp_path):
    row = {"id": "twin", "system": 'Start with "Hi".', "turns": ["Hello?"], "checks": [{"kind": "starts_with", "text": "Hi"}]}
    path = tmp_path / "personas.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match="duplicate persona id 'twin'"):
        ps.load_personas(path)


# -- runner ---------------------------------------------------------------------------


def in_character(conversation: list[dict], call: int) -> str:
    """Plays the pirate well (behind a think block) and everyone else badly; tags each answer with its call."""
    if "Captain Saltbeard" in conversation[0]["content"]:
        return f"<think>\nStay in character.\n</think>\n\nAhoy, matey! Answer {call}."
    return f"Answer {call}."


def test_run_keeps_the_system_prompt_and_feeds_back_own_answers():
    rows = personas()
    gen = Scripted(in_character)
    results = ps.run(gen, rows, max_new_tokens=24, chat_template_kwargs={"enable_thinking": False})

    assert len(gen.calls) == 3, "one generate call per turn index"
    for t, call in enumerate(gen.calls):
        assert len(call["conversations"]) == len(rows)
        assert call["temperature"] == 0.0 and call["n"] == 1
        assert call["chat_template_kwargs"] == {"enable_thinking": False}
        for p, sent, res in zip(rows, call["conversations"], results, strict=True):
            assert sent[0] == {"role": "system", "content": p["system"]}, "system prompt kept in every turn"
            assert [m["role"] for m in sent[1:]] == ["user", "assistant"] * t + ["user"]
            assert [m["content"] for m in sent[1::2]] == p["turns"][: t + 1]
            assert [m["content"] for m in sent[2::2]] == [x["response"] for x in res["turns"][:t]], "own raw answers fed back"

    by_id = {r["id"]: r for r in results}
    pirate = by_id["pirate"]
    assert pirate["correct"] and all(x["correct"] and not x["failed"] for x in pirate["turns"])
    assert [x["answer"] for x in pirate["turns"]] == [f"Ahoy, matey! Answer {k}." for k in (1, 2, 3)]
    assert pirate["turns"][0]["response"].startswith("<think>")
    chef = by_id["cheerful-chef"]
    assert not chef["correct"]
    assert chef["turns"][0]["failed"] == ["starts_with 'Yes, chef!'", "ends_with 'Happy cooking!'"]
    # "Answer 2." breaks no rule of the no-z persona.
    assert by_id["no-letter-z"]["correct"]
    scores = ps.aggregate(results)
    passing = sum(r["correct"] for r in results)
    assert scores["persona.conv_acc"] == passing / len(rows)
    assert scores["persona.turn_acc"] == 3 * passing / (3 * len(rows))


def test_run_refuses_a_bad_persona_before_generating():
    gen = Scripted(in_character)
    bad = {"id": "bad", "system": "Be nice.", "turns": ["Hi"], "checks": [{"kind": "sparkles"}]}
    with pytest.raises(ValueError, match="unknown check kind 'sparkles'"):
        ps.run(gen, [bad], max_new_tokens=8)
    assert gen.calls == []


def test_aggregate():
    def row(*correct: bool) -> dict:
        return {"turns": [{"correct": c} for c in correct]}

    assert ps.aggregate([row(True, True, True), row(True, False, True), row(False, False, False), row(True, True, True)]) == {
        "persona.turn_acc": 8 / 12,
        "persona.conv_acc": 2 / 4,
    }
    with pytest.raises(ValueError, match="no turns"):
        ps.aggregate([])


def test_tiny_model_run_is_repeatable():
    from posttrain.engines import open_generator
    from posttrain.local_models import prepare

    rows = personas()[:3]
    gen = open_generator("local:tiny", prepare("tiny"), chat_template="smollm3", engine="hf", batch_size=8)
    try:
        first = ps.run(gen, rows, max_new_tokens=4)
        second = ps.run(gen, rows, max_new_tokens=4)
    finally:
        gen.close()
    assert first == second
    for p, r in zip(rows, first, strict=True):
        assert r["id"] == p["id"] and len(r["turns"]) == 3
        assert all(x["failed"] == ps.check(x["response"], p["checks"]) for x in r["turns"])
    assert 0.0 <= ps.aggregate(first)["persona.turn_acc"] <= 1.0
