"""prefgen: on-policy preference pairs. The current policy answers each of
this chunk's prompts N times; the IFEval verifier scores every answer by the
share of the prompt's instructions it follows; chosen = best, rejected =
worst, dropped when tied or below the recipe's margin."""

from __future__ import annotations

import random
from collections import Counter

from posttrain.datasets_io import read_dataset, write_dataset
from posttrain.eval import ifeval
from posttrain.generation import generate, reasoning_kwargs, split_reasoning
from posttrain.recipe import PrefgenConfig
from posttrain.stages.context import StageContext, StageResult
from posttrain.stages.shards import run_sharded
from posttrain.stages.training import load_policy


class NoPairsError(RuntimeError):
    pass


def chunk_rows(rows: list[dict], chunk: int, chunks: int, seed: int) -> list[dict]:
    """Chunk `chunk` (1-based) of `chunks` disjoint, seeded slices of the rows."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in order[chunk - 1 :: chunks]]


def make_pair(doc: dict, answers: list[str], min_margin: float) -> tuple[dict | None, str]:
    """(pair, why): the best and worst scored answers, or None with the reason."""
    # Scored on the answer; the pair keeps the whole response, reasoning included.
    scored = sorted(((ifeval.instruction_score(doc, split_reasoning(a)[1]), a) for a in answers), key=lambda x: x[0])
    (low, rejected), (high, chosen) = scored[0], scored[-1]
    if high == low:
        return None, "tie"
    if high - low < min_margin:
        return None, "below margin"
    pair = {
        "key": doc["key"],
        "prompt": [{"role": "user", "content": doc["prompt"]}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "score_chosen": high,
        "score_rejected": low,
        "margin": high - low,
    }
    return pair, "kept"


def run(ctx: StageContext) -> StageResult:
    cfg = PrefgenConfig.model_validate(ctx.config["prefgen"])
    chunk, chunks, seed = ctx.config["chunk"], ctx.config["chunks"], ctx.config["seed"]
    docs = chunk_rows(read_dataset(ctx.inputs["prompts"]), chunk, chunks, seed)
    if cfg.max_prompts_per_chunk:
        docs = docs[: cfg.max_prompts_per_chunk]
    model, tokenizer, ref = load_policy(ctx.inputs["policy"], ctx.config["chat_template"])

    def sample(shard: list[dict]) -> list[dict]:
        answers = generate(
            model, tokenizer, [[{"role": "user", "content": d["prompt"]}] for d in shard],
            max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, temperature=cfg.temperature,
            top_p=cfg.top_p, num_return_sequences=cfg.samples_per_prompt, seed=seed + chunk,
            chat_template_kwargs=reasoning_kwargs(cfg.reasoning_mode),
        )
        return [{"key": d["key"], "answers": a} for d, a in zip(shard, answers)]

    samples = [s["answers"] for s in run_sharded(ctx, "samples", docs, cfg.shard_size, sample)]
    outcomes: Counter = Counter()
    pairs = []
    for doc, answers in zip(docs, samples):
        pair, why = make_pair(doc, answers, cfg.min_margin)
        outcomes[why] += 1
        if pair:
            pairs.append({**pair, "generator": ref.uri, "grader": cfg.grader})
    if not pairs:
        raise NoPairsError(
            f"prefgen chunk {chunk}: 0 pairs from {len(docs)} prompts ({dict(outcomes)}); "
            "raise prefgen.samples_per_prompt or prefgen.temperature, or lower prefgen.min_margin"
        )
    write_dataset(ctx.outputs["pairs"], pairs, {"chunk": chunk, "generator": ref.uri, "outcomes": dict(outcomes)})
    n = len(pairs)
    metrics = {
        "prefgen.prompts": float(len(docs)),
        "prefgen.pairs": float(n),
        "prefgen.dropped_tie": float(outcomes["tie"]),
        "prefgen.dropped_margin": float(outcomes["below margin"]),
        "prefgen.mean_margin": sum(p["margin"] for p in pairs) / n,
        "prefgen.mean_chosen_chars": sum(len(p["chosen"][0]["content"]) for p in pairs) / n,
        "prefgen.mean_rejected_chars": sum(len(p["rejected"][0]["content"]) for p in pairs) / n,
    }
    return StageResult(metrics=metrics, metadata={"pairs": {"chunk": chunk, "rows": n}})
