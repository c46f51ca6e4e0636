"""posttrain.eval.lmeval: IFEval and the math suite through lm-eval's harness, offline.

Every evaluate() here runs with non-loopback sockets refused (`no_network`).
Two local models: the random `tiny` model for wiring (prompts, shards of the
math task, seeding), and smollm2-135m-instruct where the responses must be text
worth scoring: tiny's greedy output is a run of newlines, which lm-eval strips
to "" and every IFEval check fails on.
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
from pathlib import Path

import pytest
from netguard import no_network

from posttrain.eval import ifeval, lmeval
from posttrain.eval.mathcheck import TIMED_OUT, MathCheck, check

ROOT = Path(__file__).resolve().parents[1]
IFEVAL = ROOT.parent / "shared" / "data" / "ifeval" / "input_data.jsonl"
MATH = ROOT / "src" / "posttrain" / "eval" / "data" / "math.jsonl"
N_IFEVAL = 5
NO_THINK_PREFILL = "<|im_start|>assistant\n<think>\n\n</think>\n"


def run(task, model_tok, **kwargs):
    """evaluate() with the network refused; fails if anything tried to reach it
    (a caught OSError inside lm-eval would otherwise go unnoticed)."""
    model, tokenizer = model_tok
    kwargs = {"reasoning_mode": "no_think", "max_gen_toks": 16, "batch_size": 4} | kwargs
    with no_network() as attempts:
        out = lmeval.evaluate(task, model=model, tokenizer=tokenizer, **kwargs)
    assert not attempts, f"evaluate() tried to reach the network: {attempts}"
    return out


# -- fixtures ------------------------------------------------------------------------


def _load(name: str):
    from transformers import AutoModelForCausalLM

    from posttrain.local_models import prepare
    from posttrain.stages.training import load_tokenizer

    path = prepare(name)
    return AutoModelForCausalLM.from_pretrained(path), load_tokenizer(path, "smollm3")


@pytest.fixture(scope="module")
def tiny():
    return _load("tiny")


@pytest.fixture(scope="module")
def smol():
    return _load("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def ifeval_docs(tmp_path_factory):
    """The first prompts of the IFEval set (their kwargs differ in keys, which
    Arrow fills with None: the scoring must not see a difference)."""
    if not IFEVAL.is_file():
        pytest.skip(f"IFEval prompts not found at {IFEVAL}")
    lines = IFEVAL.read_text().splitlines()[:N_IFEVAL]
    path = tmp_path_factory.mktemp("ifeval") / "ifeval.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def smol_run(smol, ifeval_docs):
    # batch_size=1: a doc's greedy response cannot depend on what it is padded
    # against, so shards can be compared with this run.
    return run(lmeval.ifeval_task(str(ifeval_docs[0])), smol, max_gen_toks=24, batch_size=1)


# -- IFEval --------------------------------------------------------------------------


def test_ifeval_scores_match_posttrain_score(smol_run, ifeval_docs):
    rows, metrics = smol_run
    docs = ifeval_docs[1]
    assert [r["doc_id"] for r in rows] == list(range(N_IFEVAL))
    assert [r["id"] for r in rows] == [d["key"] for d in docs]
    scores = []
    for row, doc in zip(rows, docs, strict=True):
        assert row["response"].strip() and row["filtered"] == row["response"]
        assert doc["prompt"] in row["prompt"]
        s = ifeval.score(doc, row["filtered"])
        scores.append(s)
        m = row["metrics"]
        assert m["prompt_level_strict_acc"] == s["prompt_strict"]
        assert m["inst_level_strict_acc"] == s["inst_strict"]
        assert m["prompt_level_loose_acc"] == s["prompt_loose"]
        assert m["inst_level_loose_acc"] == s["inst_loose"]
    assert any(x for s in scores for x in s["inst_loose"]), "no instruction followed: the comparison says little"
    ours = ifeval.aggregate(scores)
    assert set(metrics) == {"prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc"}
    for level in ("strict", "loose"):
        assert metrics[f"prompt_level_{level}_acc"] == pytest.approx(ours[f"prompt_{level}"])
        assert metrics[f"inst_level_{level}_acc"] == pytest.approx(ours[f"inst_{level}"])


def test_ifeval_task_docs_score_like_the_file():
    """Every IFEval prompt, as lm-eval's task loads it from JSONL, scores as the raw row does."""
    if not IFEVAL.is_file():
        pytest.skip(f"IFEval prompts not found at {IFEVAL}")
    from lm_eval.tasks import TaskManager

    task = lmeval.ifeval_task(str(IFEVAL))
    with no_network():
        docs = list(TaskManager(include_defaults=False).load([task])["tasks"][task["task"]].eval_docs)
    raw = [json.loads(line) for line in IFEVAL.read_text().splitlines()]
    assert len(docs) == len(raw) > 500
    for doc, row in zip(docs, raw, strict=True):
        for response in (row["prompt"], row["prompt"].lower() + "\n\nP.S. done"):
            r, s = task["process_results"](doc, [response]), ifeval.score(row, response)
            assert (r["inst_level_strict_acc"], r["inst_level_loose_acc"]) == (s["inst_strict"], s["inst_loose"]), row["key"]


def test_indices_select_shards(smol, smol_run, ifeval_docs):
    task = lmeval.ifeval_task(str(ifeval_docs[0]))
    full, _ = smol_run
    # Unsorted on purpose: lm-eval selects docs in dataset order but labels them in the order given.
    first, first_metrics = run(task, smol, max_gen_toks=24, batch_size=1, indices=[3, 0])
    second, _ = run(task, smol, max_gen_toks=24, batch_size=1, indices=[1, 2, 4])
    assert [r["doc_id"] for r in first] == [0, 3]
    assert [r["id"] for r in first] == [full[0]["id"], full[3]["id"]]
    assert sorted(first + second, key=lambda r: r["doc_id"]) == full
    # Aggregates cover the shard's docs only.
    assert first_metrics["prompt_level_loose_acc"] == pytest.approx(sum(r["metrics"]["prompt_level_loose_acc"] for r in first) / 2)
    assert lmeval.evaluate(task, model=None, tokenizer=None, reasoning_mode="think", max_gen_toks=8, batch_size=1, indices=[]) == ([], {})


def test_repeatable(smol, tiny, ifeval_docs):
    task = lmeval.ifeval_task(str(ifeval_docs[0]))
    a = run(task, smol, indices=[0, 1, 4], batch_size=3)
    assert run(task, smol, indices=[0, 1, 4], batch_size=3) == a
    # Sampling too: the seeds reach torch (tiny's sampled output is varied text).
    sampled = task | {"generation_kwargs": {"until": [], "do_sample": True, "temperature": 1.0}}
    b = run(sampled, tiny, seed=0)
    assert run(sampled, tiny, seed=0) == b
    assert len({r["response"] for r in b[0]}) == N_IFEVAL
    assert [r["response"] for r in run(sampled, tiny, seed=1)[0]] != [r["response"] for r in b[0]]


@pytest.mark.parametrize("mode", ["no_think", "think"])
def test_prompt_follows_reasoning_mode(tiny, ifeval_docs, monkeypatch, mode):
    seen = []
    real = type(tiny[1]).apply_chat_template

    def spy(self, conversation, *args, **kwargs):
        seen.append(kwargs.get("enable_thinking"))
        return real(self, conversation, *args, **kwargs)

    monkeypatch.setattr(type(tiny[1]), "apply_chat_template", spy)
    rows, _ = run(lmeval.ifeval_task(str(ifeval_docs[0])), tiny, reasoning_mode=mode, indices=[0, 2])
    assert seen and set(seen) == {mode == "think"}
    for row in rows:
        assert f"Reasoning Mode: /{mode}\n" in row["prompt"]
        if mode == "no_think":
            assert row["prompt"].endswith(NO_THINK_PREFILL)
        else:
            assert row["prompt"].endswith("<|im_start|>assistant\n")  # the model opens its own think block


# -- math ----------------------------------------------------------------------------


def test_math_process_results(monkeypatch):
    task = lmeval.math_task(str(MATH), timeout_s=5)
    score = task["process_results"]
    doc = {"id": "t", "question": "?", "answer": "42"}
    right, wrong = {"acc": 1.0, "timeout": 0.0}, {"acc": 0.0, "timeout": 0.0}
    assert score(doc, ["Six sevens make \\boxed{42}."]) == right
    assert score(doc, ["So the answer is \\boxed{41}."]) == wrong
    # The answer only inside the reasoning does not count; raw or cut by lm-eval alike.
    assert score(doc, ["<think>6*7 = \\boxed{42}</think>\nI am not sure."]) == wrong
    assert score(doc, ["<think>6*7 = \\boxed{42}"]) == wrong  # unfinished think block: lm-eval leaves it in
    assert score(doc, ["<think>maybe \\boxed{41}</think>\nThe answer is \\boxed{42}."]) == right
    assert score(doc, ["The answer is \\boxed{42}."]) == right  # already cut at </think> by lm-eval
    assert score({**doc, "answer": "16/3"}, ["\\boxed{\\frac{16}{3}}"]) == right
    assert score({**doc, "answer": "2.4"}, ["It takes \\boxed{2.40} hours."]) == right
    monkeypatch.setattr(lmeval, "check", lambda *a: MathCheck(False, "timed out after 5s", TIMED_OUT))
    assert score(doc, ["\\boxed{42}"]) == {"acc": 0.0, "timeout": 1.0}


def test_math_task_runs(tiny):
    rows, metrics = run(lmeval.math_task(str(MATH), timeout_s=5), tiny, max_gen_toks=8, indices=[1, 0], batch_size=2)
    first = json.loads(MATH.read_text().splitlines()[0])
    assert [r["id"] for r in rows] == ["math-001", "math-002"]
    assert first["question"] in rows[0]["prompt"] and "\\boxed{}" in rows[0]["prompt"]
    assert set(metrics) == {"acc", "timeout"} and metrics["timeout"] == 0.0
    assert all(set(r["metrics"]) == {"acc", "timeout"} for r in rows)


def test_math_data():
    rows = [json.loads(line) for line in MATH.read_text().splitlines()]
    assert 50 <= len(rows) <= 80
    assert all(set(r) == {"id", "question", "answer"} for r in rows)
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"math-\d{3}", i) for i in ids)
    assert len({r["question"] for r in rows}) == len(rows)
    bad = [r for r in rows if not check(f"\\boxed{{{r['answer']}}}", r["answer"], 5).correct]
    assert not bad, f"answers math-verify cannot read back: {bad[:3]}"
    # The file is what the generator writes (deterministic, up to date).
    spec = importlib.util.spec_from_file_location("make_math_data", ROOT / "data" / "local" / "make_math_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.make_rows() == rows == module.make_rows()


def test_network_guard_refuses():
    with no_network() as attempts:
        with pytest.raises(OSError):
            socket.create_connection(("203.0.113.7", 443), timeout=1)
        with pytest.raises(OSError):
            socket.getaddrinfo("huggingface.co", 443)
        with socket.socket() as s, pytest.raises(OSError):
            s.connect(("203.0.113.7", 80))
    assert len(attempts) == 3
