"""System-prompt adherence, the automated vibe test: does the model stay in the
persona its system prompt sets, turn after turn?

Each persona (data/local/personas.jsonl) is a system prompt, a few user turns
and machine-checkable markers that the system prompt asks for in so many words
(the pirate starts every answer with "Ahoy", the bard ends with "Fare thee
well.", the robot stays under 25 words). The conversation is played turn by
turn with the system prompt kept in front and the model's own raw responses
fed back; turn t of every persona is generated in one greedy `generate` call.
Every check applies to the answer of every assistant turn: the response with
its leading think block dropped (`posttrain.generation.split_reasoning`; a
response cut off inside its think block has an empty answer).

Check kinds (`CHECK_KINDS`; text comparisons are case-insensitive):

- starts_with {"text"}: the answer begins with the text. Surrounding whitespace
  and markdown emphasis ("*", "_") at the ends are ignored ("**Ahoy**, matey").
- ends_with {"text"}: the answer ends with the text, ignoring the same.
- contains_any {"words"}: at least one of the words or phrases appears as a
  whole word ("thy" is not found in "healthy").
- not_contains {"text"}: the text appears nowhere, not even inside a word
  (for letters and punctuation: "z", "!", ",").
- max_words {"n"}: at most n whitespace-separated words.
- bullet_count {"n"}: exactly n bullet lines (lines starting with "-", "*" or
  "•" followed by a space).

`aggregate`: persona.turn_acc, the share of turns passing every check, and
persona.conv_acc, the share of personas passing every check in every turn.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from posttrain.engines import Generator
from posttrain.generation import split_reasoning

# kind -> {parameter: type}
CHECK_KINDS: dict[str, dict[str, type]] = {
    "starts_with": {"text": str},
    "ends_with": {"text": str},
    "contains_any": {"words": list},
    "not_contains": {"text": str},
    "max_words": {"n": int},
    "bullet_count": {"n": int},
}

_EDGE = " \t\r\n*_"
_BULLET = re.compile(r"^\s*[-*•]\s+\S", re.MULTILINE)


def _bad_check(check) -> str | None:
    """What is wrong with one check, or None."""
    if not isinstance(check, dict) or "kind" not in check:
        return f"a check must be an object with a 'kind', got {check!r}"
    kind = check["kind"]
    if kind not in CHECK_KINDS:
        return f"unknown check kind {kind!r}; allowed kinds: {', '.join(CHECK_KINDS)}"
    params = CHECK_KINDS[kind]
    if set(check) - {"kind"} != set(params):
        return f"check {kind} takes exactly {sorted(params)}, got {sorted(set(check) - {'kind'})}"
    for name, typ in params.items():
        value = check[name]
        if not isinstance(value, typ) or isinstance(value, bool):
            return f"check {kind}: {name} must be a {typ.__name__}, got {value!r}"
        if typ is str and not value.strip():
            return f"check {kind}: {name} is empty"
        if typ is int and value < 1:
            return f"check {kind}: {name} must be at least 1, got {value}"
        if typ is list and (not value or not all(isinstance(w, str) and w.strip() for w in value)):
            return f"check {kind}: {name} must be a non-empty list of non-empty strings, got {value!r}"
    return None


def validate(persona: dict, where: str = "") -> None:
    """Raise ValueError, naming the persona (and `where`, e.g. "file:line"), for a malformed row."""
    label = f"{where + ': ' if where else ''}persona {persona.get('id')!r}" if isinstance(persona, dict) else where or "persona"
    if not isinstance(persona, dict) or set(persona) != {"id", "system", "turns", "checks"}:
        keys = sorted(persona) if isinstance(persona, dict) else type(persona).__name__
        raise ValueError(f"{label}: expected the keys ['checks', 'id', 'system', 'turns'], got {keys}")
    if not isinstance(persona["system"], str) or not persona["system"].strip():
        raise ValueError(f"{label}: system must be a non-empty string")
    turns = persona["turns"]
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
        raise ValueError(f"{label}: turns must be a non-empty list of non-empty strings")
    if not isinstance(persona["checks"], list) or not persona["checks"]:
        raise ValueError(f"{label}: checks must be a non-empty list")
    for j, check in enumerate(persona["checks"]):
        problem = _bad_check(check)
        if problem:
            raise ValueError(f"{label}: check {j}: {problem}")


def load_personas(path: Path) -> list[dict]:
    """The personas of a JSONL file, every row validated (check kinds included) up front."""
    personas, seen = [], set()
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            validate(row, f"{path}:{lineno}")
            if row["id"] in seen:
                raise ValueError(f"{path}:{lineno}: duplicate persona id {row['id']!r}")
            seen.add(row["id"])
            personas.append(row)
    return personas


def _contains_word(text: str, word: str) -> bool:
    # \b only where the word starts or ends with a word character, so phrases and punctuation work too.
    pattern = ("\\b" if word[0].isalnum() else "") + re.escape(word) + ("\\b" if word[-1].isalnum() else "")
    return re.search(pattern, text, re.IGNORECASE) is not None


def _failure(answer: str, check: dict) -> str | None:
    """Why `answer` fails `check`, or None when it passes."""
    kind = check["kind"]
    if kind == "starts_with":
        if not answer.strip(_EDGE).lower().startswith(check["text"].strip(_EDGE).lower()):
            return f"starts_with {check['text']!r}"
    elif kind == "ends_with":
        if not answer.strip(_EDGE).lower().endswith(check["text"].strip(_EDGE).lower()):
            return f"ends_with {check['text']!r}"
    elif kind == "contains_any":
        if not any(_contains_word(answer, w) for w in check["words"]):
            return f"contains_any {check['words']!r}"
    elif kind == "not_contains":
        if check["text"].lower() in answer.lower():
            return f"not_contains {check['text']!r}"
    elif kind == "max_words":
        words = len(answer.split())
        if words > check["n"]:
            return f"max_words {check['n']} (got {words})"
    elif kind == "bullet_count":
        bullets = len(_BULLET.findall(answer))
        if bullets != check["n"]:
            return f"bullet_count {check['n']} (got {bullets})"
    else:
        raise ValueError(f"unknown check kind {kind!r}; allowed kinds: {', '.join(CHECK_KINDS)}")
    return None


def check(answer: str, checks: list[dict]) -> list[str]:
    """Descriptions of the checks that `answer` fails (empty: all passed). A
    leading think block is dropped first, so a whole response can be passed."""
    _, answer = split_reasoning(answer)
    return [f for c in checks if (f := _failure(answer, c)) is not None]


def run(generator: Generator, personas: list[dict], *, max_new_tokens: int, chat_template_kwargs: dict | None = None) -> list[dict]:
    """Play every persona's turns with its system prompt kept in front and the
    model's own raw responses fed back; one greedy `generate` call per turn
    index for all personas that have that turn. `chat_template_kwargs` goes to
    the template as is (None: the template's default reasoning mode). Returns
    `{"id", "messages", "turns": [{"user", "response", "answer", "failed", "correct"}], "correct"}` per persona."""
    for p in personas:
        validate(p)
    rows = [{"id": p["id"], "messages": [{"role": "system", "content": p["system"]}], "turns": [], "correct": True} for p in personas]
    for t in range(max((len(p["turns"]) for p in personas), default=0)):
        active = [i for i, p in enumerate(personas) if t < len(p["turns"])]
        for i in active:
            rows[i]["messages"].append({"role": "user", "content": personas[i]["turns"][t]})
        outputs = generator.generate([list(rows[i]["messages"]) for i in active], max_new_tokens=max_new_tokens, n=1,
                                     temperature=0.0, chat_template_kwargs=chat_template_kwargs)
        if len(outputs) != len(active):
            raise RuntimeError(f"generator {generator.id}: {len(outputs)} results for {len(active)} conversations at turn {t}")
        for i, out in zip(active, outputs, strict=True):
            response = out[0]
            _, answer = split_reasoning(response)
            failed = check(response, personas[i]["checks"])
            rows[i]["messages"].append({"role": "assistant", "content": response})
            rows[i]["turns"].append({"user": personas[i]["turns"][t], "response": response, "answer": answer,
                                     "failed": failed, "correct": not failed})
            rows[i]["correct"] = rows[i]["correct"] and not failed
    return rows


def aggregate(rows: list[dict]) -> dict[str, float]:
    """persona.turn_acc (turns passing every check) and persona.conv_acc (personas passing every check in every turn)."""
    turns = [t for r in rows for t in r["turns"]]
    if not turns:
        raise ValueError("no turns to score")
    return {
        "persona.turn_acc": sum(t["correct"] for t in turns) / len(turns),
        "persona.conv_acc": sum(all(t["correct"] for t in r["turns"]) for r in rows) / len(rows),
    }
