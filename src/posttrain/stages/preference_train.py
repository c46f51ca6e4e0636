"""preference_train: one chunk of iterative DPO/APO with TRL's DPOTrainer,
starting from the previous chunk's policy (the reference is that policy)."""

from __future__ import annotations

from datasets import Dataset

from posttrain.datasets_io import read_dataset
from posttrain.models import write_model_ref
from posttrain.recipe import PreferenceConfig
from posttrain.stages.context import StageContext, StageResult
from posttrain.stages.training import common_args, existing_final, load_policy, save_final, snapshot, train_summary, train_with_checkpoints


def dpo_loss_args(cfg: PreferenceConfig) -> dict:
    """Recipe loss name -> DPOConfig fields (names match TRL's loss_type)."""
    return {"loss_type": [cfg.loss], "beta": cfg.beta}


def run(ctx: StageContext) -> StageResult:
    from trl import DPOConfig, DPOTrainer

    cfg = PreferenceConfig.model_validate(ctx.config["preference"])
    done = existing_final(ctx)
    if done:
        write_model_ref(ctx.outputs["model"], done)
        return StageResult(metrics={"train.reused_final": 1.0}, metadata={"model": {"uri": done.uri, "sha": done.sha}})
    rows = read_dataset(ctx.inputs["pairs"])
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    model, tokenizer, parent = load_policy(ctx.inputs["policy"], ctx.config["chat_template"])
    before = snapshot(model)
    args = DPOConfig(
        **common_args(cfg, ctx, ctx.config["seed"], ctx.config["report_to"]),
        **dpo_loss_args(cfg),
        max_length=cfg.max_length,
        padding_free=cfg.padding_free,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    train_with_checkpoints(trainer, ctx, cfg.keep_checkpoints)
    metrics = {**train_summary(trainer, before), "train.pairs": float(len(rows))}
    rewards = [e for e in trainer.state.log_history if "rewards/accuracies" in e]
    if rewards:
        metrics["train.reward_accuracy_last"] = float(rewards[-1]["rewards/accuracies"])
        metrics["train.reward_margin_last"] = float(rewards[-1]["rewards/margins"])
    ref = save_final(model, tokenizer, ctx, parent, {"chunk": ctx.config["chunk"], "loss": cfg.loss, "beta": cfg.beta}, metrics)
    write_model_ref(ctx.outputs["model"], ref)
    return StageResult(metrics=metrics, metadata={"model": {"uri": ref.uri, "revision": ref.revision, "sha": ref.sha, "parent": parent.uri}})
