"""sft: TRL SFTTrainer with packing and assistant-only loss, on the data the
tokenize task rendered, masked (the chat template's generation tags) and
packed once (posttrain/stages/tokenize.py): TRL's own preparation is skipped.
The same function trains midtrain."""

from __future__ import annotations

import logging

from posttrain.models import read_model_ref, write_model_ref
from posttrain.recipe import SFTConfig as SFTRecipe
from posttrain.recipe import TrainConfig
from posttrain.stages.context import StageContext, StageResult
from posttrain.stages.tokenize import load_tokenized
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

log = logging.getLogger(__name__)


def train_causal_lm(ctx: StageContext, cfg: TrainConfig) -> StageResult:
    """Shared by sft and midtrain: train on the `tokenized` input, save to the
    store, write the Model artifact."""
    from trl import SFTConfig, SFTTrainer

    done = existing_final(ctx)
    if done:
        write_model_ref(ctx.outputs["model"], done)
        return StageResult(metrics={"train.reused_final": 1.0}, metadata={"model": {"uri": done.uri, "sha": done.sha}})
    tokenizer = load_tokenizer(materialize_shared(read_model_ref(ctx.inputs["policy"])), ctx.config["chat_template"])
    dataset, tokenized = load_tokenized(ctx, tokenizer)
    log.info("training on %d packed rows (%d tokens) from %s", tokenized["rows"], tokenized["tokens"], tokenized["uri"])
    # The config first: under ZeRO-3 it decides how the model is loaded. The
    # labels already carry the assistant-only mask and the rows are packed:
    # TRL skips its preparation, and `packing` only sets its padding-free collator.
    args = SFTConfig(
        **common_args(cfg, ctx, ctx.config["seed"], ctx.config["report_to"]),
        max_length=cfg.max_length,
        packing=cfg.packing,
        packing_strategy=cfg.packing_strategy,
        dataset_kwargs={"skip_prepare_dataset": True},
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
    return train_causal_lm(ctx, SFTRecipe.model_validate(ctx.config["train"]))
