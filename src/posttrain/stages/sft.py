"""sft: TRL SFTTrainer with packing and assistant-only loss (the mask comes
from the chat template's generation tags)."""

from __future__ import annotations

import logging

from datasets import Dataset

from posttrain.datasets_io import read_dataset
from posttrain.models import read_model_ref, write_model_ref
from posttrain.recipe import SFTConfig as SFTRecipe
from posttrain.recipe import TrainConfig
from posttrain.stages.context import StageContext, StageResult
from posttrain.stages.training import (
    build_trainer,
    common_args,
    existing_final,
    load_tokenizer,
    materialize_shared,
    save_trained,
    train_summary,
    train_with_checkpoints,
)
from posttrain.template_lint import lint
from posttrain.templates import row_template_kwargs

log = logging.getLogger(__name__)


def train_causal_lm(ctx: StageContext, cfg: TrainConfig, dataset: Dataset, assistant_only: bool) -> StageResult:
    """Shared by sft and midtrain: train, save to the store, write the Model artifact."""
    from trl import SFTConfig, SFTTrainer

    done = existing_final(ctx)
    if done:
        write_model_ref(ctx.outputs["model"], done)
        return StageResult(metrics={"train.reused_final": 1.0}, metadata={"model": {"uri": done.uri, "sha": done.sha}})
    # The config first: under ZeRO-3 it decides how the model is loaded.
    args = SFTConfig(
        **common_args(cfg, ctx, ctx.config["seed"], ctx.config["report_to"]),
        max_length=cfg.max_length,
        packing=cfg.packing,
        packing_strategy=cfg.packing_strategy,
        assistant_only_loss=assistant_only,
        dataset_text_field="text",
    )
    trainer, tokenizer, parent = build_trainer(SFTTrainer, args, cfg, ctx, dataset)
    train_with_checkpoints(trainer, ctx, cfg.keep_checkpoints)
    metrics = train_summary(trainer)
    ref = save_trained(trainer, tokenizer, ctx, parent, cfg.lora, {}, metrics)
    if ref is None:  # not rank 0: rank 0 writes the outputs
        return StageResult()
    write_model_ref(ctx.outputs["model"], ref)
    return StageResult(metrics=metrics, metadata={"model": {"uri": ref.uri, "revision": ref.revision, "sha": ref.sha, "parent": parent.uri}})


def run(ctx: StageContext) -> StageResult:
    cfg = SFTRecipe.model_validate(ctx.config["train"])
    rows = read_dataset(ctx.inputs["data"])
    # Each row's template arguments (enable_thinking from its `reasoning` flag, then
    # its own chat_template_kwargs): TRL's SFTTrainer passes this column to
    # apply_chat_template for every example.
    dataset = Dataset.from_list([{"messages": r["messages"], "chat_template_kwargs": row_template_kwargs(r)} for r in rows])
    if existing_final(ctx) is None:  # a reused final model was linted when it was trained
        tokenizer = load_tokenizer(materialize_shared(read_model_ref(ctx.inputs["policy"])), ctx.config["chat_template"])
        summary = lint(rows, tokenizer, sample=cfg.template_lint_rows, seed=ctx.config["seed"])  # raises TemplateLintError
        log.info("chat template lint passed: %s", summary)
    return train_causal_lm(ctx, cfg, dataset, assistant_only=cfg.assistant_only_loss)
