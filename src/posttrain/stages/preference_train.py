"""preference_train: one chunk of preference training, starting from the
previous chunk's policy.

`preference.loss` picks the TRL trainer (posttrain/preference_losses.py):
DPOTrainer for DPO, IPO, APO-zero/-down and length-normalised DPO;
CPOTrainer with the SimPO loss; ORPOTrainer; KTOTrainer on the pairs unpaired
into desirable and undesirable rows.

Losses with a reference (the DPO family, KTO) use the previous chunk's policy
as the reference. Full fine-tuning: the trainer loads it as a second, frozen
copy of the policy. LoRA (`preference.lora`): the reference is the same model
with the adapter disabled, so no second copy is loaded; the final model is
merged. Reference-free losses (SimPO, ORPO) load no reference at all."""

from __future__ import annotations

import logging

from datasets import Dataset

from posttrain.datasets_io import read_dataset
from posttrain.models import write_model_ref
from posttrain.preference_losses import hyperparameters, loss_args, loss_spec, paired_to_kto, resolved_lr, trl_classes
from posttrain.recipe import PreferenceConfig
from posttrain.stages.context import StageContext, StageResult
from posttrain.stages.training import build_trainer, common_args, existing_final, save_trained, train_summary, train_with_checkpoints

log = logging.getLogger(__name__)

# Last logged value of these trainer metrics -> stage metric (those the trainer logs).
LOGGED_METRICS = {
    "rewards/accuracies": "train.reward_accuracy_last",  # DPO, SimPO, ORPO
    "rewards/margins": "train.reward_margin_last",  # DPO, SimPO, ORPO
    "log_odds_ratio": "train.log_odds_ratio_last",  # ORPO
    "kl": "train.kl_last",  # KTO
}


def with_resolved_lr(cfg: PreferenceConfig, ctx: StageContext) -> PreferenceConfig:
    """The config with `lr` resolved: the recipe's, or the SFT learning rate
    (`sft_lr` in the stage config) / 10."""
    return cfg.model_copy(update={"lr": resolved_lr(cfg, ctx.config.get("sft_lr"))})


def trainer_config(cfg: PreferenceConfig, ctx: StageContext, loss_kwargs: dict):
    """The TRL config of the loss's trainer. `cfg.lr` must be resolved."""
    spec = loss_spec(cfg.loss)
    config_cls, _ = trl_classes(spec.family)
    data = {"max_length": cfg.max_length}
    if spec.family == "dpo":
        data["padding_free"] = cfg.padding_free
    elif cfg.padding_free:
        log.info("padding_free applies to DPOTrainer only: %s trains on padded batches", spec.trainer)
    if spec.family in ("cpo", "orpo"):
        # Their collator reads the tokenized columns, which the model's signature does not name.
        data["remove_unused_columns"] = False
    return config_cls(**common_args(cfg, ctx, ctx.config["seed"], ctx.config["report_to"]), **loss_kwargs, **data)


def pair_rows(ctx: StageContext) -> list[dict]:
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in read_dataset(ctx.inputs["pairs"])]


def pairs_dataset(ctx: StageContext) -> Dataset:
    return Dataset.from_list(pair_rows(ctx))


def training_data(cfg: PreferenceConfig, ctx: StageContext) -> tuple[Dataset, dict, dict[str, float]]:
    """(dataset, TRL loss fields, data metrics): the pairs as they are, or for
    KTO unpaired, with the loss weights for its label counts."""
    pairs = pair_rows(ctx)
    if loss_spec(cfg.loss).family != "kto":
        return Dataset.from_list(pairs), loss_args(cfg), {"train.pairs": float(len(pairs))}
    rows = paired_to_kto(pairs)
    n_desirable = sum(r["label"] for r in rows)
    n_undesirable = len(rows) - n_desirable
    metrics = {"train.pairs": float(len(pairs)), "train.desirable": float(n_desirable), "train.undesirable": float(n_undesirable)}
    return Dataset.from_list(rows), loss_args(cfg, n_desirable, n_undesirable), metrics


def run(ctx: StageContext) -> StageResult:
    cfg = PreferenceConfig.model_validate(ctx.config["preference"])
    done = existing_final(ctx)
    if done:
        write_model_ref(ctx.outputs["model"], done)
        return StageResult(metrics={"train.reused_final": 1.0}, metadata={"model": {"uri": done.uri, "sha": done.sha}})
    cfg = with_resolved_lr(cfg, ctx)
    spec = loss_spec(cfg.loss)
    dataset, loss_kwargs, data_metrics = training_data(cfg, ctx)
    # The config first: under ZeRO-3 it decides how the model is loaded.
    args = trainer_config(cfg, ctx, loss_kwargs)
    _, trainer_cls = trl_classes(spec.family)
    log.info("loss %s (%s): %s, %s, lr %g, %s", cfg.loss, spec.label, spec.trainer,
             "with a reference model" if spec.reference else "reference-free", cfg.lr, loss_kwargs)
    trainer, tokenizer, parent = build_trainer(trainer_cls, args, cfg, ctx, dataset)
    train_with_checkpoints(trainer, ctx, cfg.keep_checkpoints)
    metrics = {**train_summary(trainer), **data_metrics}
    for key, name in LOGGED_METRICS.items():
        logged = [e[key] for e in trainer.state.log_history if key in e]
        if logged:
            metrics[name] = float(logged[-1])
    facts = {"chunk": ctx.config["chunk"], **hyperparameters(cfg, loss_kwargs), "lr": cfg.lr}
    ref = save_trained(trainer, tokenizer, ctx, parent, cfg.lora, facts, metrics)
    if ref is None:  # not rank 0: rank 0 writes the outputs
        return StageResult()
    write_model_ref(ctx.outputs["model"], ref)
    return StageResult(metrics=metrics, metadata={"model": {"uri": ref.uri, "revision": ref.revision, "sha": ref.sha, "parent": parent.uri}})
