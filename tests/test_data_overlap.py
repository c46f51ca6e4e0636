"""Schema and contamination checks for the offline datasets in ``data/local/``.

The training data (SFT conversations, midtrain traces, preference-generation
prompts) must not overlap the IFEval evaluation prompts.  Overlap is measured
as shared word 8-grams after lowercasing and stripping punctuation.

Fast and offline: no network, no NLTK punkt (checks that need a sentence
tokenizer are skipped when punkt is not installed).
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "data" / "local"
SFT = LOCAL / "sft.jsonl"
MIDTRAIN = LOCAL / "midtrain.jsonl"
PREFGEN = LOCAL / "prefgen_prompts.jsonl"
IFEVAL = Path(__file__).resolve().parents[2] / "shared/data/ifeval/input_data.jsonl"

NGRAM = 8
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ROLES = {"system", "user", "assistant"}


# ---------------------------------------------------------------------------
# n-gram overlap helpers (to be moved into the library later)
# ---------------------------------------------------------------------------

_NON_WORD = re.compile(r"[^\w\s]|_", flags=re.UNICODE)


def normalize_words(text: str) -> list[str]:
    """Lowercase, replace punctuation with spaces, split on whitespace."""
    return _NON_WORD.sub(" ", text.lower()).split()


def word_ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    words = normalize_words(text)
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def build_index(texts, n: int = NGRAM) -> dict[tuple[str, ...], int]:
    """Map every n-gram of ``texts`` to the index of the first text containing it."""
    index: dict[tuple[str, ...], int] = {}
    for i, t in enumerate(texts):
        for g in word_ngrams(t, n):
            index.setdefault(g, i)
    return index


def find_overlaps(text: str, index: dict, n: int = NGRAM) -> list[tuple[tuple[str, ...], int]]:
    """n-grams of ``text`` present in ``index`` (with the matching reference id)."""
    return sorted((g, index[g]) for g in word_ngrams(text, n) if g in index)


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict]:
    assert path.exists(), f"missing {path}"
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            assert line.strip(), f"{path.name}:{lineno} is blank"
            rows.append(json.loads(line))
    return rows


@cache
def sft_rows():
    return _read_jsonl(SFT)


@cache
def mid_rows():
    return _read_jsonl(MIDTRAIN)


@cache
def pg_rows():
    return _read_jsonl(PREFGEN)


@cache
def ifeval_rows():
    if not IFEVAL.exists():
        pytest.skip(f"IFEval prompts not found at {IFEVAL}")
    return _read_jsonl(IFEVAL)


@cache
def ifeval_index():
    return build_index([r["prompt"] for r in ifeval_rows()])


def training_texts() -> list[tuple[str, str]]:
    """(source label, text) for every training text we ship."""
    out = []
    for r in sft_rows():
        for j, m in enumerate(r["messages"]):
            out.append((f"sft {r['id']} msg {j}", m["content"]))
    for r in mid_rows():
        out.append((f"midtrain {r['id']}", r["text"]))
    for r in pg_rows():
        out.append((f"prefgen key {r['key']}", r["prompt"]))
    return out


def training_prompts() -> list[tuple[str, str]]:
    out = [(f"sft {r['id']} msg {j}", m["content"])
           for r in sft_rows() for j, m in enumerate(r["messages"]) if m["role"] == "user"]
    out += [(f"prefgen key {r['key']}", r["prompt"]) for r in pg_rows()]
    return out


@cache
def registry():
    from lm_eval.tasks.ifeval import instructions_registry  # noqa: PLC0415

    return instructions_registry.INSTRUCTION_DICT


def _has_punkt() -> bool:
    try:
        import nltk  # noqa: PLC0415

        nltk.data.find("tokenizers/punkt")
        return True
    except LookupError:
        return False
    except Exception:  # pragma: no cover - nltk missing entirely
        return False


# Checkers whose check_following needs an NLTK sentence tokenizer.
NEEDS_PUNKT = {"length_constraints:number_sentences"}


# ---------------------------------------------------------------------------
# Schema tests
# ---------------------------------------------------------------------------


def test_sft_schema():
    rows = sft_rows()
    assert 100 <= len(rows) <= 400
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicate sft ids"
    n_reason = 0
    for r in rows:
        assert set(r) == {"id", "reasoning", "messages"}, r["id"]
        assert re.fullmatch(r"sft-\d{4}", r["id"]), r["id"]
        assert isinstance(r["reasoning"], bool), r["id"]
        msgs = r["messages"]
        assert msgs, r["id"]
        for m in msgs:
            assert set(m) == {"role", "content"}, r["id"]
            assert m["role"] in ROLES, (r["id"], m["role"])
            assert isinstance(m["content"], str) and m["content"].strip(), r["id"]
        roles = [m["role"] for m in msgs]
        assert "system" not in roles[1:], f"{r['id']}: system message must come first"
        turns = roles[1:] if roles[0] == "system" else roles
        assert turns and len(turns) % 2 == 0, r["id"]
        assert turns == ["user", "assistant"] * (len(turns) // 2), f"{r['id']}: roles {roles}"
        assert msgs[-1]["role"] == "assistant", r["id"]
        for m in msgs:
            has_open, has_close = THINK_OPEN in m["content"], THINK_CLOSE in m["content"]
            if r["reasoning"] and m["role"] == "assistant":
                assert has_open and has_close, f"{r['id']}: reasoning turn without think block"
                assert m["content"].startswith(THINK_OPEN), r["id"]
                assert m["content"].count(THINK_OPEN) == m["content"].count(THINK_CLOSE) == 1, r["id"]
                final = m["content"].split(THINK_CLOSE, 1)[1].strip()
                assert final, f"{r['id']}: empty final answer after </think>"
            else:
                assert not has_open and not has_close, f"{r['id']}: unexpected think tags"
        n_reason += r["reasoning"]
    assert 0.3 <= n_reason / len(rows) <= 0.7, "reasoning rows should be about half"


def test_sft_user_prompts_unique():
    firsts = [next(m["content"] for m in r["messages"] if m["role"] == "user") for r in sft_rows()]
    assert len(firsts) == len(set(firsts)), "duplicate first user prompt in sft.jsonl"


def test_midtrain_schema():
    rows = mid_rows()
    assert 30 <= len(rows) <= 200
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    for r in rows:
        assert set(r) == {"id", "text"}, r["id"]
        assert re.fullmatch(r"mid-\d{4}", r["id"]), r["id"]
        assert 60 <= len(r["text"].split()) <= 200, r["id"]
    assert len({r["text"] for r in rows}) == len(rows)


def test_prefgen_schema_and_registry():
    rows = pg_rows()
    assert 50 <= len(rows) <= 200
    assert [r["key"] for r in rows] == list(range(1, len(rows) + 1)), "keys must be 1..N"
    reg = registry()
    dummy = "This is a short dummy response. It has two sentences."
    check_punkt = _has_punkt()
    for r in rows:
        assert set(r) == {"key", "prompt", "instruction_id_list", "kwargs"}, r["key"]
        assert isinstance(r["key"], int) and isinstance(r["prompt"], str) and r["prompt"].strip()
        ids, kwargs = r["instruction_id_list"], r["kwargs"]
        assert ids and len(ids) == len(kwargs), r["key"]
        assert len(set(ids)) == len(ids), r["key"]
        for iid, kw in zip(ids, kwargs):
            assert iid in reg, f"key {r['key']}: unknown instruction id {iid}"
            assert isinstance(kw, dict), r["key"]
            checker = reg[iid](iid)
            checker.build_description(**kw)  # raises on unknown / bad kwargs
            if iid in NEEDS_PUNKT and not check_punkt:
                continue
            assert checker.check_following(dummy) in (True, False)


def test_prefgen_prompts_unique():
    prompts = [r["prompt"] for r in pg_rows()]
    assert len(prompts) == len(set(prompts))
    tasks = [r["prompt"].split(". ")[0] for r in pg_rows()]
    assert len(tasks) == len(set(tasks)), "each prefgen prompt should use a distinct task"


def test_local_data_size():
    total = sum(p.stat().st_size for p in LOCAL.iterdir() if p.is_file())
    assert total < 600 * 1024


# ---------------------------------------------------------------------------
# Contamination tests
# ---------------------------------------------------------------------------


def test_overlap_detector_flags_copied_text():
    prompts = [r["prompt"] for r in ifeval_rows()]
    index = ifeval_index()
    # A span copied from an eval prompt (with different case/punctuation and
    # surrounding text) must be flagged.
    src = next(p for p in prompts if len(normalize_words(p)) >= 20)
    span = normalize_words(src)[3:3 + NGRAM + 2]
    probe = "Here is my own request. " + " ".join(span).upper() + "!!! Thanks."
    hits = find_overlaps(probe, index)
    assert hits, "detector failed to flag text copied from an IFEval prompt"
    assert any(prompts[i] == src or tuple(span[:NGRAM]) in word_ngrams(prompts[i]) for _, i in hits)
    # ... and a clean, unrelated sentence is not.
    assert not find_overlaps("The quick brown fox jumps over the lazy dog near the quiet river bank today.", index)
    # Shorter than n words can never match.
    assert not find_overlaps(" ".join(span[:NGRAM - 1]), index)


def test_ngram_normalization():
    assert normalize_words("Hello, WORLD! It's P.S. time") == ["hello", "world", "it", "s", "p", "s", "time"]
    assert word_ngrams("a b c", 2) == {("a", "b"), ("b", "c")}
    assert word_ngrams("a b", 3) == set()


def test_no_ngram_overlap_with_ifeval():
    index = ifeval_index()
    prompts = [r["prompt"] for r in ifeval_rows()]
    problems = []
    for label, text in training_texts():
        hits = find_overlaps(text, index)
        if hits:
            g, i = hits[0]
            problems.append(f"{label}: shares {len(hits)} {NGRAM}-gram(s) with IFEval key "
                            f"{ifeval_rows()[i]['key']}, e.g. {' '.join(g)!r} (eval: {prompts[i][:80]!r})")
    assert not problems, "training data overlaps IFEval:\n" + "\n".join(problems[:20])


def test_no_exact_duplicate_of_ifeval_prompt():
    eval_exact = {r["prompt"].strip() for r in ifeval_rows()}
    eval_norm = {" ".join(normalize_words(r["prompt"])) for r in ifeval_rows()}
    for label, text in training_prompts():
        assert text.strip() not in eval_exact, f"{label} is an IFEval prompt"
        assert " ".join(normalize_words(text)) not in eval_norm, f"{label} duplicates an IFEval prompt"
