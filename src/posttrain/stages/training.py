"""Shared by the training stages: loading a policy, TRL arguments from the
recipe, saving the final model to the checkpoint store."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from posttrain.models import ModelRef, materialize, read_model_ref
from posttrain.store import manifest_digest
from posttrain.templates import load_template

log = logging.getLogger(__name__)


def load_tokenizer(model_dir: Path, chat_template: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = load_template(chat_template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(model_artifact: Path, chat_template: str):
    """(model, tokenizer, ref) for the model referenced by a Model artifact."""
    from transformers import AutoModelForCausalLM

    ref = read_model_ref(model_artifact)
    path = materialize(ref)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, load_tokenizer(path, chat_template), ref


def use_bf16(requested: bool) -> bool:
    available = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if requested and not available:
        log.warning("bf16 requested but no CUDA device with bf16 support: training in fp32")
    return requested and available


def common_args(cfg, ctx, seed: int, report_to: list[str]) -> dict:
    """TrainingArguments fields shared by SFTConfig and DPOConfig."""
    scheduler_kwargs = {"min_lr_rate": cfg.min_lr_rate} if cfg.lr_scheduler == "cosine_with_min_lr" else {}
    reporting = [r for r in report_to if r != "none"] if ctx.log_dir else []
    if ctx.log_dir:
        # transformers 5 reads the TensorBoard folder from the environment.
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(ctx.log_dir)
    return dict(
        output_dir=str(ctx.workdir / "trainer"),
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio of the total steps
        lr_scheduler_type=cfg.lr_scheduler,
        lr_scheduler_kwargs=scheduler_kwargs,
        max_grad_norm=cfg.max_grad_norm,
        bf16=use_bf16(cfg.bf16),
        gradient_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps,
        report_to=reporting or "none",
        # Saves go to the store through CheckpointUploader (stages/checkpoints.py).
        save_strategy="steps",
        save_steps=cfg.save_steps,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
    )


def snapshot(model, n: int = 4) -> dict:
    """Copies of the first few parameter tensors, to show later that training moved them."""
    return {name: p.detach().clone() for name, p in list(model.named_parameters())[:n]}


def train_summary(trainer, before: dict) -> dict[str, float]:
    """Steps, first and last logged loss and the largest weight change, so a
    report shows that the stage really trained."""
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    params = dict(trainer.model.named_parameters())
    out = {
        "train.steps": float(trainer.state.global_step),
        "train.max_weight_change": max((params[n].detach() - p).abs().max().item() for n, p in before.items()),
    }
    if losses:
        out["train.loss_first"] = float(losses[0])
        out["train.loss_last"] = float(losses[-1])
    return out


def model_card(ctx, parent: ModelRef, facts: dict, metrics: dict[str, float]) -> tuple[dict, str]:
    """What the final model is, as JSON and as a README: recipe, stage, parent,
    the training data with its resolved revisions, training metrics. The eval
    table is added by publish, once evaluation has run."""
    data = {}
    for name, path in ctx.inputs.items():
        info = path / "dataset.json"
        if info.is_file():
            data[name] = json.loads(info.read_text())
    card = {"recipe": ctx.config["recipe"], "profile": ctx.config["profile"], "stage": ctx.task,
            "parent": {"uri": parent.uri, "revision": parent.revision, "sha": parent.sha}, "data": data, "metrics": metrics, **facts}
    lines = [f"# {ctx.config['recipe']} / {ctx.task}", "", f"Trained by posttrain from `{parent.uri}` (profile {ctx.config['profile']}).", ""]
    lines += [f"- **{k}**: {v}" for k, v in facts.items()]
    for name, info in data.items():
        for src in info.get("sources", []):
            lines.append(f"- data `{name}`: {src.get('hub') or src.get('path')} {src.get('subset') or ''} {src.get('split', '')} @ {src.get('revision')}")
    lines += ["", "| metric | value |", "|---|---:|", *[f"| {k} | {v:.4g} |" for k, v in sorted(metrics.items())], ""]
    return card, "\n".join(lines)


def save_final(model, tokenizer, ctx, parent: ModelRef, facts: dict, metrics: dict[str, float]) -> ModelRef:
    """Save the trained model with its model card to the store; return its reference."""
    local = ctx.workdir / "final"
    model.save_pretrained(local)
    tokenizer.save_pretrained(local)
    card, readme = model_card(ctx, parent, facts, metrics)
    (local / "posttrain.json").write_text(json.dumps(card, indent=1, sort_keys=True))
    (local / "README.md").write_text(readme)
    key = ctx.checkpoint_key("final")
    uri = ctx.store.put(local, key)
    ctx.store.release(local, key)
    return ModelRef(uri=uri, revision="final", sha=manifest_digest(ctx.store.manifest(key)))


def existing_final(ctx) -> ModelRef | None:
    """The stage's final model if this exact configuration already produced it
    (a rerun or a retry after a late failure then costs nothing)."""
    key = ctx.checkpoint_key("final")
    manifest = ctx.store.manifest(key)
    if manifest is None:
        return None
    log.info("final model for fingerprint %s already in the store: %s", ctx.fingerprint[:16], ctx.store.key_uri(key))
    return ModelRef(uri=ctx.store.key_uri(key), revision="final", sha=manifest_digest(manifest))


def train_with_checkpoints(trainer, ctx, keep: int) -> None:
    """Resume from the newest complete checkpoint of this configuration, train,
    and upload every save in the background (see stages/checkpoints.py)."""
    from posttrain.stages.checkpoints import CheckpointUploader, resume_point

    uploader = CheckpointUploader(ctx, keep)
    trainer.add_callback(uploader)
    resume = resume_point(ctx)
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        uploader.finish()
