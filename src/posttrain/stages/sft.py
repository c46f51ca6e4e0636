"""sft: TRL SFTTrainer with packing and assistant-only loss (the mask comes
from the chat template's generation tags)."""

from __future__ import annotations

from datasets import Dataset

from posttrain.datasets_io import read_dataset
from posttrain.models import write_model_ref
from posttrain.recipe import SFTConfig as SFTRecipe
from posttrain.recipe import TrainConfig
from posttrain.stages.context import StageContext, StageResult
from posttrain.stages.training import common_args, existing_final, load_policy, save_final, snapshot, train_summary, train_with_checkpoints


def train_causal_lm(ctx: StageContext, cfg: TrainConfig, dataset: Dataset, assistant_only: bool) -> StageResult:
    """Shared by sft and midtrain: train, save to the store, write the Model artifact."""
    from trl import SFTConfig, SFTTrainer

    done = existing_final(ctx)
    if done:
        write_model_ref(ctx.outputs["model"], done)
        return StageResult(metrics={"train.reused_final": 1.0}, metadata={"model": {"uri": done.uri, "sha": done.sha}})
    model, tokenizer, parent = load_policy(ctx.inputs["policy"], ctx.config["chat_template"])
    before = snapshot(model)
    args = SFTConfig(
        **common_args(cfg, ctx, ctx.config["seed"], ctx.config["report_to"]),
        max_length=cfg.max_length,
        packing=cfg.packing,
        packing_strategy=cfg.packing_strategy,
        assistant_only_loss=assistant_only,
        dataset_text_field="text",
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    train_with_checkpoints(trainer, ctx, cfg.keep_checkpoints)
    metrics = train_summary(trainer, before)
    ref = save_final(model, tokenizer, ctx, parent, {}, metrics)
    write_model_ref(ctx.outputs["model"], ref)
    return StageResult(metrics=metrics, metadata={"model": {"uri": ref.uri, "revision": ref.revision, "sha": ref.sha, "parent": parent.uri}})


def run(ctx: StageContext) -> StageResult:
    cfg = SFTRecipe.model_validate(ctx.config["train"])
    rows = read_dataset(ctx.inputs["data"])
    dataset = Dataset.from_list([{"messages": r["messages"]} for r in rows])
    return train_causal_lm(ctx, cfg, dataset, assistant_only=cfg.assistant_only_loss)
