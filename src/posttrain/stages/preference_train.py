"""preference_train: one chunk of iterative DPO/APO with TRL's DPOTrainer,
starting from the previous chunk's policy (the reference is that policy).

Full fine-tuning: DPOTrainer loads the reference as a second, frozen copy of
the policy. LoRA (`preference.lora`): the reference is the same model with the
adapter disabled, so no second copy is loaded; the final model is merged."""

from __future__ import annotations

from datasets import Dataset

from posttrain.datasets_io import read_dataset
from posttrain.models import write_model_ref
from posttrain.recipe import PreferenceConfig
from posttrain.stages.context import StageContext, StageResult
from posttrain.stages.training import build_trainer, common_args, existing_final, save_trained, train_summary, train_with_checkpoints


def dpo_loss_args(cfg: PreferenceConfig) -> dict:
    """Recipe loss name -> DPOConfig fields (names match TRL's loss_type)."""
    return {"loss_type": [cfg.loss], "beta": cfg.beta}


def dpo_config(cfg: PreferenceConfig, ctx: StageContext):
    from trl import DPOConfig

    return DPOConfig(
        **common_args(cfg, ctx, ctx.config["seed"], ctx.config["report_to"]),
        **dpo_loss_args(cfg),
        max_length=cfg.max_length,
        padding_free=cfg.padding_free,
    )


def pairs_dataset(ctx: StageContext) -> Dataset:
    rows = read_dataset(ctx.inputs["pairs"])
    return Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])


def run(ctx: StageContext) -> StageResult:
    from trl import DPOTrainer

    cfg = PreferenceConfig.model_validate(ctx.config["preference"])
    done = existing_final(ctx)
    if done:
        write_model_ref(ctx.outputs["model"], done)
        return StageResult(metrics={"train.reused_final": 1.0}, metadata={"model": {"uri": done.uri, "sha": done.sha}})
    dataset = pairs_dataset(ctx)
    # The config first: under ZeRO-3 it decides how the model is loaded.
    args = dpo_config(cfg, ctx)
    trainer, tokenizer, parent = build_trainer(DPOTrainer, args, cfg, ctx, dataset)
    train_with_checkpoints(trainer, ctx, cfg.keep_checkpoints)
    metrics = {**train_summary(trainer), "train.pairs": float(len(dataset))}
    rewards = [e for e in trainer.state.log_history if "rewards/accuracies" in e]
    if rewards:
        metrics["train.reward_accuracy_last"] = float(rewards[-1]["rewards/accuracies"])
        metrics["train.reward_margin_last"] = float(rewards[-1]["rewards/margins"])
    facts = {"chunk": ctx.config["chunk"], "loss": cfg.loss, "beta": cfg.beta}
    ref = save_trained(trainer, tokenizer, ctx, parent, cfg.lora, facts, metrics)
    if ref is None:  # not rank 0: rank 0 writes the outputs
        return StageResult()
    write_model_ref(ctx.outputs["model"], ref)
    return StageResult(metrics=metrics, metadata={"model": {"uri": ref.uri, "revision": ref.revision, "sha": ref.sha, "parent": parent.uri}})
