"""preference_train: one chunk of preference training, starting from the
previous chunk's policy.

`preference.loss` picks the TRL trainer (posttrain/preference_losses.py):
DPOTrainer for DPO, IPO, APO-zero/-down and length-normalised DPO;
CPOTrainer with the SimPO loss; ORPOTrainer; KTOTrainer on the pairs unpaired
into desirable and undesirable rows.

Losses with a reference (the DPO family, KTO) are trained against the
`reference` input (`preference.reference`: `initial`, the SFT model for every
chunk; `previous`, the policy the chunk starts from). A reference that is the
policy itself is not loaded: TRL copies the policy (full fine-tuning), uses the
policy with the adapter disabled (LoRA), or with precomputed reference
log-probs runs the policy before training. Any other reference is loaded and
passed to the trainer, with LoRA too (the adapter disabled would give the
chunk's starting policy, not the SFT model). Without a `reference` input the
policy is the reference (older callers). With LoRA the final model is merged.
Reference-free losses (SimPO, ORPO) load no reference at all.

`preference.precompute_ref_log_probs` (DPO family, KTO): the reference runs
once over the data before training and the values are kept in the checkpoint
store (posttrain/ref_logprobs.py), so a restarted or rerun chunk reuses them.

Each pair's `reasoning_mode` reaches the chat template as the row's
`chat_template_kwargs`, which all four TRL trainers pass to
apply_chat_template for that row."""

from __future__ import annotations

import logging

from datasets import Dataset

from posttrain.data.artifacts import read_dataset
from posttrain.generation import reasoning_kwargs
from posttrain.models import ModelRef, read_model_ref, write_model_ref
from posttrain.preference_losses import hyperparameters, loss_args, loss_spec, paired_to_kto, resolved_lr, trl_classes
from posttrain.recipe import PreferenceConfig
from posttrain.ref_logprobs import StoredRefLogProbs, cache_key, shared_dataset
from posttrain.stages.context import StageContext, StageResult
from posttrain.stages.training import (
    build_trainer,
    common_args,
    existing_final,
    load_policy,
    policy_dtype,
    save_trained,
    train_summary,
    train_with_checkpoints,
)

log = logging.getLogger(__name__)

# Last logged value of these trainer metrics -> stage metric (those the trainer logs).
LOGGED_METRICS = {
    "rewards/accuracies": "train.reward_accuracy_last",  # DPO, SimPO, ORPO
    "rewards/margins": "train.reward_margin_last",  # DPO, SimPO, ORPO
    "log_odds_ratio": "train.log_odds_ratio_last",  # ORPO
    "kl": "train.kl_last",  # KTO
}
# Mean over the chunk of these logged metrics -> stage metric (the evaluate stage
# reads them from the model card). KTO logs no accuracies.
MEAN_METRICS = {
    "rewards/chosen": "train.rewards_chosen",
    "rewards/rejected": "train.rewards_rejected",
    "rewards/margins": "train.reward_margin",
    "rewards/accuracies": "train.reward_accuracy",
}
# The trainers that can precompute the reference log-probs (DPOConfig and KTOConfig).
PRECOMPUTE_FAMILIES = ("dpo", "kto")


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
    if spec.family in PRECOMPUTE_FAMILIES:
        data["precompute_ref_log_probs"] = cfg.precompute_ref_log_probs
    return config_cls(**common_args(cfg, ctx, ctx.config["seed"], ctx.config["report_to"]), **loss_kwargs, **data)


def pair_rows(ctx: StageContext) -> list[dict]:
    """The pairs as the trainers read them. When the pairs say their reasoning
    mode, every row gets `chat_template_kwargs` (TRL renders the row with them);
    a row without a mode gets none ({}: the template's default)."""
    pairs = read_dataset(ctx.inputs["pairs"])
    columns = [c for c in ("prompt", "chosen", "rejected", "reasoning_mode") if c in pairs.column_names]
    rows = pairs.select_columns(columns).to_list()
    out = [{k: _without_nulls(r[k]) for k in ("prompt", "chosen", "rejected")} for r in rows]
    modes = [r.get("reasoning_mode") for r in rows]
    if any(modes):
        for row, mode in zip(out, modes, strict=True):
            row["chat_template_kwargs"] = reasoning_kwargs(mode) if mode else {}
    return out


def _without_nulls(turns):
    """Messages as written (Arrow gives every message every field of the column's struct)."""
    if isinstance(turns, list):
        return [{k: v for k, v in m.items() if v is not None} if isinstance(m, dict) else m for m in turns]
    return turns


def training_data(cfg: PreferenceConfig, ctx: StageContext) -> tuple[Dataset, dict, dict[str, float]]:
    """(dataset, TRL loss fields, data metrics): the pairs as they are, or for
    KTO unpaired, with the loss weights for its label counts."""
    pairs = pair_rows(ctx)
    if loss_spec(cfg.loss).family != "kto":
        return Dataset.from_list(pairs), loss_args(cfg), {"train.pairs": float(len(pairs))}
    rows = paired_to_kto(pairs)
    if "chat_template_kwargs" in pairs[0]:
        # paired_to_kto keeps prompt, completion and label; row j comes from pair j mod n (its docstring).
        for j, row in enumerate(rows):
            pair = pairs[j % len(pairs)]
            assert row["prompt"] == pair["prompt"], "paired_to_kto changed its row order"
            row["chat_template_kwargs"] = pair["chat_template_kwargs"]
    n_desirable = sum(r["label"] for r in rows)
    n_undesirable = len(rows) - n_desirable
    metrics = {"train.pairs": float(len(pairs)), "train.desirable": float(n_desirable), "train.undesirable": float(n_undesirable)}
    return Dataset.from_list(rows), loss_args(cfg, n_desirable, n_undesirable), metrics


def reference_model(cfg: PreferenceConfig, ctx: StageContext, args) -> tuple[ModelRef | None, object | None]:
    """(reference ref, model to pass as `ref_model`) for the recipe's loss:
    (None, None) for a reference-free loss; the policy's ref and no model when
    the reference is the policy (or the stage has no `reference` input);
    otherwise the `reference` input loaded as the policy is (dtype, attention)."""
    if not loss_spec(cfg.loss).reference:
        return None, None
    policy = read_model_ref(ctx.inputs["policy"])
    if "reference" not in ctx.inputs:
        return policy, None
    reference = read_model_ref(ctx.inputs["reference"])
    if (reference.uri, reference.sha) == (policy.uri, policy.sha):
        return policy, None
    model, _, _ = load_policy(ctx.inputs["reference"], ctx.config["chat_template"], attn_implementation=cfg.attn_implementation,
                              dtype=policy_dtype(args))
    return reference, model


def chunk_means(trainer) -> dict[str, float]:
    """Means over the chunk of the reward metrics the trainer logged (each log
    entry is already the mean over its logging window)."""
    out = {}
    for key, name in MEAN_METRICS.items():
        logged = [e[key] for e in trainer.state.log_history if key in e]
        if logged:
            out[name] = sum(float(v) for v in logged) / len(logged)
    return out


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
    reference, ref_model = reference_model(cfg, ctx, args)
    if reference is None:
        against = "reference-free"
    else:
        against = f"reference {reference.uri} ({'the policy' if ref_model is None else 'loaded beside the policy'})"
    log.info("loss %s (%s): %s, %s, lr %g, %s", cfg.loss, spec.label, spec.trainer, against, cfg.lr, loss_kwargs)
    stored = None
    if getattr(args, "precompute_ref_log_probs", False):
        ref_key = cache_key(reference, dataset.to_list(), chat_template=ctx.config["chat_template"], max_length=cfg.max_length,
                            family=spec.family, dtype=str(policy_dtype(args)),
                            batch_size=args.per_device_train_batch_size if spec.family == "kto" else None)
        stored = StoredRefLogProbs(ctx, ref_key, spec.family)
        trainer_cls = stored.trainer_class(trainer_cls)
        dataset = shared_dataset(dataset, ctx.workdir / "train-data")
    trainer, tokenizer, parent = build_trainer(trainer_cls, args, cfg, ctx, dataset, ref_model=ref_model)
    metrics = dict(data_metrics)
    if stored is not None:
        # Stored before training, so a chunk that fails while training reuses them when it restarts.
        metrics["train.ref_logps_reused"] = float(stored.finish(trainer, int(data_metrics["train.pairs"])))
        trainer.ref_model = None  # the values are in the data now: no reference copy kept while training
    del ref_model  # the trainer holds it while it needs it
    train_with_checkpoints(trainer, ctx, cfg.keep_checkpoints)
    metrics = {**train_summary(trainer), **metrics, **chunk_means(trainer)}
    for key, name in LOGGED_METRICS.items():
        logged = [e[key] for e in trainer.state.log_history if key in e]
        if logged:
            metrics[name] = float(logged[-1])
    facts = {"chunk": ctx.config["chunk"], **hyperparameters(cfg, loss_kwargs), "lr": cfg.lr, "reference": reference.uri if reference else None}
    ref = save_trained(trainer, tokenizer, ctx, parent, cfg.lora, facts, metrics)
    if ref is None:  # not rank 0: rank 0 writes the outputs
        return StageResult()
    write_model_ref(ctx.outputs["model"], ref)
    return StageResult(metrics=metrics, metadata={"model": {"uri": ref.uri, "revision": ref.revision, "sha": ref.sha, "parent": parent.uri}})
