"""evaluate: generate answers to a fixed IFEval subset and score them with
lm-eval's instruction checkers; append a row to the run's scoreboard."""

from __future__ import annotations

import json

from posttrain.datasets_io import load_source, read_dataset, write_dataset
from posttrain.eval import ifeval
from posttrain.generation import generate, reasoning_kwargs, split_reasoning
from posttrain.recipe import EvalConfig
from posttrain.stages.context import StageContext, StageResult
from posttrain.stages.shards import run_sharded
from posttrain.stages.training import load_policy


def run(ctx: StageContext) -> StageResult:
    cfg = EvalConfig.model_validate(ctx.config["eval"])
    label = ctx.config["label"]
    model, tokenizer, ref = load_policy(ctx.inputs["model"], ctx.config["chat_template"])
    docs = load_source(cfg.ifeval_data.model_dump())
    docs = docs[: cfg.ifeval_limit] if cfg.ifeval_limit else docs

    def answer_and_score(shard: list[dict]) -> list[dict]:
        answers = generate(
            model, tokenizer, [[{"role": "user", "content": d["prompt"]}] for d in shard],
            max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, chat_template_kwargs=reasoning_kwargs(cfg.reasoning_mode),
        )
        # The instructions apply to the answer, not to the reasoning before it.
        return [
            {"key": d["key"], "prompt": d["prompt"], "response": a[0], "tokens": len(tokenizer(a[0])["input_ids"]),
             **ifeval.score(d, split_reasoning(a[0])[1])}
            for d, a in zip(shard, answers)
        ]

    samples = run_sharded(ctx, "samples", docs, cfg.shard_size, answer_and_score)
    metrics = {f"ifeval.{k}": v for k, v in ifeval.aggregate(samples).items()}
    metrics["ifeval.mean_response_tokens"] = sum(s["tokens"] for s in samples) / max(len(samples), 1)
    write_dataset(ctx.outputs["samples"], samples, {"label": label, "model": ref.uri})
    board = read_dataset(ctx.inputs["board"]) + [
        {"label": label, "model": json.loads(ref.to_json()), "metrics": metrics, "prompts": len(docs)}
    ]
    write_dataset(ctx.outputs["scoreboard"], board, {"labels": [r["label"] for r in board]})
    return StageResult(metrics=metrics, metadata={"samples": {"label": label, "prompts": len(docs)}})


def results_table(board: list[dict], selected: str | None = None) -> str:
    """Markdown table: one row per evaluated checkpoint (and the selected one)."""
    names = sorted({k for r in board for k in r["metrics"]})
    head = "| checkpoint | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names) + "\n"
    rows = [r for r in board]
    if selected is not None:
        chosen = next(r for r in board if r["label"] == selected)
        rows.append({**chosen, "label": f"selected ({selected})"})
    body = "".join(
        f"| {r['label']} | " + " | ".join(f"{r['metrics'].get(n, float('nan')):.3f}" for n in names) + " |\n"
        for r in rows
    )
    return head + body

