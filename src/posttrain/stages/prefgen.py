"""prefgen: preference pairs for one chunk of the prompts.

prompts of this chunk ─▶ checked, deduplicated, decontaminated against the
eval sets ─▶ responses (on_policy: N samples of the policy; strong_vs_weak:
one answer each from the strong and the weak model) ─▶ grades ─▶ pairs,
with every dropped prompt counted by reason ─▶ pairs Dataset, statistics
Markdown, HTML page of sample pairs.

Responses and grades are computed in shards kept in the checkpoint store, so a
restarted stage continues from its last complete shard. Their keys cover only
the settings they depend on: changing the margin, the length control or the
error threshold reuses every sample and grade.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from posttrain import decontam
from posttrain.data.artifacts import read_dataset, write_dataset
from posttrain.data.rows import prompt_row
from posttrain.engines import open_generator
from posttrain.eval import sets
from posttrain.generation import reasoning_kwargs, split_reasoning
from posttrain.graders import build_grader
from posttrain.models import ModelRef, read_model_ref
from posttrain.prefgen_report import length_stats, samples_html, stats_markdown
from posttrain.recipe import ModelSource, PrefgenConfig
from posttrain.stages.context import StageContext, StageResult
from posttrain.stages.shards import run_sharded
from posttrain.stages.training import materialize_shared

log = logging.getLogger(__name__)
EXAMPLES = 5
# Settings that only decide which graded responses become pairs.
PAIRING_FIELDS = ("min_margin", "length_control", "max_error_fraction", "sample_pairs", "filter_disagreements")


class PrefgenError(RuntimeError):
    pass


class Tally:
    """Prompts dropped by reason and problems by kind, each with examples; and
    which prompts had an error, for the recipe's error threshold."""

    def __init__(self) -> None:
        self.dropped: dict[str, dict] = defaultdict(lambda: {"count": 0, "examples": []})
        self.issues: dict[str, dict] = defaultdict(lambda: {"count": 0, "examples": []})
        self.error_keys: set = set()

    def drop(self, reason: str, key) -> None:
        d = self.dropped[reason]
        d["count"] += 1
        if len(d["examples"]) < EXAMPLES:
            d["examples"].append(key)

    def issue(self, kind: str, example: str, key) -> None:
        d = self.issues[kind]
        d["count"] += 1
        if len(d["examples"]) < EXAMPLES:
            d["examples"].append(f"{key}: {example}"[:300])
        self.error_keys.add(key)

    def check(self, prompts: int, max_fraction: float, when: str) -> None:
        share = len(self.error_keys) / max(prompts, 1)
        if share > max_fraction:
            problems = "\n".join(f"  {kind}: {d['count']} (e.g. {d['examples'][0]})" for kind, d in self.issues.items())
            raise PrefgenError(
                f"prefgen {when}: {len(self.error_keys)} of {prompts} prompts ({100 * share:.1f}%) had problems, "
                f"more than prefgen.max_error_fraction = {max_fraction}:\n{problems}"
            )


def stratum(row: dict) -> tuple:
    """Rows are spread over chunks evenly within each (source, reasoning mode)."""
    mode = row.get("reasoning_mode") or (row.get("chat_template_kwargs") or {}).get("enable_thinking")
    return str(row.get("source")), str(mode)


def chunk_rows(rows: list[dict], chunk: int, chunks: int, seed: int) -> list[dict]:
    """Chunk `chunk` (1-based) of `chunks` of a list of rows (chunk_indices)."""
    return [rows[i] for i in chunk_indices([stratum(r) for r in rows], chunk, chunks, seed)]


def chunk_prompts(prompts, chunk: int, chunks: int, seed: int) -> list[dict]:
    """This chunk's rows of the prompts Dataset: strata from its columns, then
    only the chunk's rows read (as generators and graders take them)."""
    # A prepare_data prompts artifact has no mode column: the strata are its sources (one tuple a row).
    sources = prompts["source"] if "source" in prompts.column_names else [None] * len(prompts)
    strata = [(str(s), "None") for s in sources]
    return [prompt_row(r) for r in prompts.select(chunk_indices(strata, chunk, chunks, seed)).to_list()]


def chunk_indices(strata: list[tuple], chunk: int, chunks: int, seed: int) -> list[int]:
    """Chunk `chunk` (1-based) of `chunks`: disjoint, together complete, and
    stratified: each stratum's rows, shuffled with the seed, are dealt round
    robin over the chunks, the deal carrying on from one stratum to the next
    so chunk sizes differ by at most one."""
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(strata):
        groups.setdefault(key, []).append(i)
    rng = random.Random(seed)
    picked, position = [], 0
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        for i in members:
            if position % chunks == chunk - 1:
                picked.append(i)
            position += 1
    return picked


def prompt_doc(row: dict) -> tuple[dict | None, str | None]:
    """A prompt row as generators and graders see it (`messages`: the prompt
    conversation, `prompt`: its last user turn), or why it cannot be used."""
    messages = row.get("messages")
    if messages is None and isinstance(row.get("prompt"), str):
        messages = [{"role": "user", "content": row["prompt"]}]
    if not isinstance(messages, list) or not messages:
        return None, "missing column: prompt (a string) or messages (a conversation)"
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages):
        return None, "messages: each turn needs string role and content"
    if messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
        return None, "messages: the prompt must end with a non-empty user turn"
    return {**row, "messages": messages, "prompt": messages[-1]["content"]}, None


def usable_docs(rows: list[dict], tally: Tally) -> list[dict]:
    docs, seen = [], set()
    for i, row in enumerate(rows):
        key = row.get("key", f"row-{i}")
        doc, problem = prompt_doc(row)
        if doc is None:
            tally.drop("invalid prompt row", key)
            tally.issue(problem, f"columns {sorted(row)}", key)
            continue
        # The same prompt twice would give two pairs for one prompt.
        text = " ".join(" ".join(m["content"].lower().split()) for m in doc["messages"])
        if text in seen:
            tally.drop("duplicate prompt", key)
            continue
        seen.add(text)
        docs.append({**doc, "key": key})
    return docs


def decontaminate(docs: list[dict], eval_sets: list[dict], ngram: int, threshold: float, tally: Tally) -> list[dict]:
    index = decontam.EvalIndex(ngram)
    for ref in eval_sets:
        index.add(ref["name"], (t for row in sets.load(ref) for t in decontam.eval_texts(row)))
    kept = []
    for doc in docs:
        share, owner = index.overlap(" ".join(m["content"] for m in doc["messages"] if m["role"] == "user"))
        if share >= threshold:
            tally.drop(f"overlaps eval set {owner}", doc["key"])
        else:
            kept.append(doc)
    return kept


def _scope(ctx: StageContext, leave_out: tuple[str, ...]) -> dict:
    return {**ctx.config, "prefgen": {k: v for k, v in ctx.config["prefgen"].items() if k not in leave_out}}


def _model_path(source: ModelSource) -> Path:
    return materialize_shared(ModelRef(uri=source.uri, revision=source.revision))


def sample(ctx: StageContext, cfg: PrefgenConfig, docs: list[dict], name: str, model_id: str, path: Callable[[], Path],
           chat_template: str | None, n: int, seed: int) -> list[list[str]]:
    """`n` responses per doc from one model, in shards; the model is loaded
    only if a shard is missing."""
    generator = None

    def work(shard: list[dict]) -> list[dict]:
        nonlocal generator
        if generator is None:
            generator = open_generator(model_id, path(), chat_template=chat_template, engine=cfg.engine, batch_size=cfg.batch_size,
                                       tensor_parallel_size=cfg.tensor_parallel_size, seed=seed)
        out = generator.generate([d["messages"] for d in shard], max_new_tokens=cfg.max_new_tokens, n=n, temperature=cfg.temperature,
                                 top_p=cfg.top_p, seed=seed, chat_template_kwargs=reasoning_kwargs(cfg.reasoning_mode))
        return [{"key": d["key"], "responses": r} for d, r in zip(shard, out)]

    try:
        rows = run_sharded(ctx, name, docs, cfg.shard_size, work, scope=_scope(ctx, (*PAIRING_FIELDS, "grader")))
    finally:
        if generator is not None:
            generator.close()
    return [r["responses"] for r in rows]


def grade(ctx: StageContext, cfg: PrefgenConfig, docs: list[dict], responses: list[list[str]]) -> list[dict]:
    """One graded row per doc: {scores, issues, detail, grader}."""
    grader = None

    def work(shard: list[tuple[dict, list[str]]]) -> list[dict]:
        nonlocal grader
        if grader is None:
            grader = build_grader(cfg.grader, model_path=_model_path, engine=cfg.engine,
                                  tensor_parallel_size=cfg.tensor_parallel_size, seed=ctx.config["seed"])
        graded = grader.grade([d for d, _ in shard], [r for _, r in shard])
        return [{"key": d["key"], "scores": g.scores, "issues": [asdict(i) for i in g.issues], "detail": g.detail, "grader": grader.id}
                for (d, _), g in zip(shard, graded)]

    try:
        return run_sharded(ctx, "grades", list(zip(docs, responses)), cfg.shard_size, work, scope=_scope(ctx, PAIRING_FIELDS))
    finally:
        if grader is not None:
            grader.close()


def choose(method: str, scores: list[float] | None, min_margin: float, filter_disagreements: bool) -> tuple[tuple[int, int] | None, str]:
    """((chosen, rejected) response indices, "kept") or (None, why not)."""
    if method == "strong_vs_weak":
        if scores is not None and filter_disagreements and scores[1] > scores[0]:
            return None, "grader prefers the weak answer"
        return (0, 1), "kept"
    if scores is None:
        return None, "grader could not score"
    best = max(range(len(scores)), key=lambda i: scores[i])
    worst = min(range(len(scores)), key=lambda i: scores[i])
    if scores[best] == scores[worst]:
        return None, "tie"
    if scores[best] - scores[worst] < min_margin:
        return None, "below min_margin"
    return (best, worst), "kept"


def balance_lengths(pairs: list[dict], tally: Tally) -> list[dict]:
    """Drop the lowest-margin pairs of the larger side until as many pairs have
    the longer answer chosen as rejected: length stops predicting `chosen`."""
    longer = [p for p in pairs if p["chosen_tokens"] > p["rejected_tokens"]]
    shorter = [p for p in pairs if p["chosen_tokens"] < p["rejected_tokens"]]
    big = longer if len(longer) > len(shorter) else shorter
    excess = len(big) - min(len(longer), len(shorter))
    gone = {id(p) for p in sorted(big, key=lambda p: p["margin"] if p["margin"] is not None else 0.0)[:excess]}
    for p in pairs:
        if id(p) in gone:
            tally.drop("length balance", p["key"])
    return [p for p in pairs if id(p) not in gone]


def _metric_name(reason: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in reason.lower()).strip("_")


def run(ctx: StageContext) -> StageResult:
    cfg = PrefgenConfig.model_validate(ctx.config["prefgen"])
    chunk, chunks, seed = ctx.config["chunk"], ctx.config["chunks"], ctx.config["seed"]
    rows = chunk_prompts(read_dataset(ctx.inputs["prompts"]), chunk, chunks, seed)
    if cfg.max_prompts_per_chunk:
        rows = rows[: cfg.max_prompts_per_chunk]
    tally = Tally()
    docs = usable_docs(rows, tally)
    dc = cfg.decontamination
    if dc.enabled:
        docs = decontaminate(docs, ctx.config["eval_sets"], dc.ngram, dc.threshold, tally)
    # Bad prompt rows fail the stage before any model is loaded.
    tally.check(len(rows), cfg.max_error_fraction, "prompt rows")

    policy = read_model_ref(ctx.inputs["policy"])
    seed = seed * 1000 + chunk
    if cfg.method == "on_policy":
        generators = [policy.uri]
        responses = sample(ctx, cfg, docs, "samples", policy.uri, lambda: materialize_shared(policy), ctx.config["chat_template"],
                           cfg.samples_per_prompt, seed)
    else:
        generators = [cfg.strong.uri, cfg.weak.uri]
        strong = sample(ctx, cfg, docs, "strong", cfg.strong.uri, lambda: _model_path(cfg.strong), None, 1, seed)
        weak = sample(ctx, cfg, docs, "weak", cfg.weak.uri, lambda: _model_path(cfg.weak), None, 1, seed)
        responses = [[s[0], w[0]] for s, w in zip(strong, weak)]

    graded = grade(ctx, cfg, docs, responses) if cfg.grader else [{"scores": None, "issues": [], "grader": "none"} for _ in docs]
    for doc, g in zip(docs, graded):
        for issue in g["issues"]:
            tally.issue(issue["kind"], issue["example"], doc["key"])

    from transformers import AutoTokenizer

    # Lengths in the policy's tokens: what preference training will see.
    tokenizer = AutoTokenizer.from_pretrained(materialize_shared(policy))
    pairs = []
    for doc, texts, g in zip(docs, responses, graded):
        picked, why = choose(cfg.method, g["scores"], cfg.min_margin, cfg.filter_disagreements)
        if picked is None:
            tally.drop(why, doc["key"])
            continue
        c, r = picked
        if not split_reasoning(texts[c])[1].strip():
            tally.drop("chosen answer empty or unfinished", doc["key"])
            continue
        if texts[c] == texts[r]:
            tally.drop("identical answers", doc["key"])
            continue
        scores = g["scores"]
        pairs.append({
            "key": doc["key"], "source": doc.get("source"), "chunk": chunk, "method": cfg.method, "reasoning_mode": cfg.reasoning_mode,
            "prompt": doc["messages"],
            "chosen": [{"role": "assistant", "content": texts[c]}],
            "rejected": [{"role": "assistant", "content": texts[r]}],
            "score_chosen": scores[c] if scores else None, "score_rejected": scores[r] if scores else None,
            "margin": scores[c] - scores[r] if scores else None,
            "chosen_tokens": len(tokenizer(texts[c], add_special_tokens=False)["input_ids"]),
            "rejected_tokens": len(tokenizer(texts[r], add_special_tokens=False)["input_ids"]),
            "chosen_model": generators[0] if cfg.method == "on_policy" else cfg.strong.uri,
            "rejected_model": generators[0] if cfg.method == "on_policy" else cfg.weak.uri,
            "grader": g["grader"],
        })
    if cfg.length_control == "balance":
        pairs = balance_lengths(pairs, tally)

    summary = {"chunk": chunk, "method": cfg.method, "generators": generators, "grader": graded[0]["grader"] if graded else "none",
               "reasoning_mode": cfg.reasoning_mode, "prompts": len(rows), "dropped": dict(tally.dropped), "issues": dict(tally.issues)}
    ctx.outputs["stats"].write_text(stats_markdown(summary, pairs))
    ctx.outputs["samples"].write_text(samples_html(pairs, cfg.sample_pairs, f"Preference pairs, chunk {chunk}"))
    # Grader problems fail the stage only now, with shards and reports written.
    tally.check(len(rows), cfg.max_error_fraction, "grading")
    if not pairs:
        raise PrefgenError(
            f"prefgen chunk {chunk}: 0 pairs from {len(rows)} prompts ("
            + ", ".join(f"{k}: {v['count']}" for k, v in tally.dropped.items())
            + "); raise prefgen.samples_per_prompt or prefgen.temperature, or lower prefgen.min_margin"
        )
    write_dataset(ctx.outputs["pairs"], pairs, {"chunk": chunk, "generators": generators, "grader": summary["grader"],
                                                "dropped": {k: v["count"] for k, v in tally.dropped.items()}})
    metrics = {
        "prefgen.prompts": float(len(rows)),
        "prefgen.pairs": float(len(pairs)),
        "prefgen.prompts_with_errors": float(len(tally.error_keys)),
        **{f"prefgen.dropped.{_metric_name(k)}": float(v["count"]) for k, v in tally.dropped.items()},
        **{f"prefgen.{k}": float(v) for k, v in length_stats(pairs).items() if v == v},
    }
    return StageResult(metrics=metrics, metadata={"pairs": {"chunk": chunk, "rows": len(pairs), "grader": summary["grader"]}})
