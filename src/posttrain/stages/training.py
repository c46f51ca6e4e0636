"""Shared by the training stages: loading a policy, TRL arguments from the
recipe, the trainer (full fine-tuning or LoRA), saving the final model to the
checkpoint store.

The same code runs in one process (CPU, one GPU, KFP's local runner) and once
per GPU under `accelerate launch` with DeepSpeed ZeRO-3 (posttrain/launch.py).
In the launched case every rank trains and takes part in saves (ZeRO-3 saves
are collective), and only rank 0 uploads, merges and writes outputs."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from posttrain.launch import is_main_process
from posttrain.lora import finetuning_facts, merge_adapter, peft_config
from posttrain.models import ModelRef, materialize, read_model_ref
from posttrain.store import manifest_digest
from posttrain.templates import load_template

log = logging.getLogger(__name__)

# Written by Trainer.save_model next to the weights; a pickle nobody loading the model needs.
TRAINER_LEFTOVERS = ("training_args.bin",)


def load_tokenizer(model_dir: Path, chat_template: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = load_template(chat_template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def materialize_shared(ref: ModelRef) -> Path:
    """Launched processes share the model cache: one downloads, the others wait
    for it and then find it there."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # set by the launcher for each process
        return materialize(ref)
    from filelock import FileLock

    from posttrain.local_models import cache_dir

    cache_dir().mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir() / ".materialize.lock")):
        return materialize(ref)


def load_policy(model_artifact: Path, chat_template: str, *, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32):
    """(model, tokenizer, ref) for the model referenced by a Model artifact."""
    from transformers import AutoModelForCausalLM

    ref = read_model_ref(model_artifact)
    path = materialize_shared(ref)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attention(attn_implementation))
    return model, load_tokenizer(path, chat_template), ref


def use_bf16(requested: bool) -> bool:
    available = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if requested and not available:
        log.warning("bf16 requested but no CUDA device with bf16 support: training in fp32")
    return requested and available


def attention(requested: str) -> str:
    """The recipe's attention kernel, or sdpa where FlashAttention-2 cannot run."""
    if requested != "flash_attention_2":
        return requested
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        # Measured on an H100 (README, bench/sft_gpu.py): padding-free packing
        # under sdpa computes masked attention over the whole packed row and is
        # slower than padded batches; only a varlen kernel makes packing pay.
        log.warning("attn_implementation=flash_attention_2 requested but no CUDA device with the flash-attn package: using sdpa "
                    "(on a GPU, packed batches under sdpa train slower than padded ones: install flash-attn in the train image)")
        return "sdpa"
    return requested


def use_liger(requested: bool) -> bool:
    """The Liger kernels need CUDA (Triton) and the liger-kernel package (the `gpu` extra)."""
    if not requested:
        return False
    from transformers.utils import is_liger_kernel_available

    if not (torch.cuda.is_available() and is_liger_kernel_available()):
        log.warning("use_liger_kernel requested but no CUDA device with the liger-kernel package: using the plain PyTorch layers")
        return False
    return True


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
        # As in the published SmolLM3 recipe: reentrant checkpointing (which
        # PEFT + ZeRO-3 needs anyway) and the loss normalised by the tokens of
        # all devices, so every token weighs the same whatever the GPU count.
        gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": True} if cfg.gradient_checkpointing else None,
        average_tokens_across_devices=cfg.average_tokens_across_devices,
        use_liger_kernel=use_liger(cfg.use_liger_kernel),
        # Rank 0 uploads checkpoints while the others wait in the next collective
        # (the published recipe's value; the default 30 min is too short for a
        # large upload).
        ddp_timeout=18000,
        logging_steps=cfg.logging_steps,
        report_to=reporting or "none",
        # Saves go to the store through CheckpointUploader (stages/checkpoints.py).
        save_strategy="steps",
        save_steps=cfg.save_steps,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
    )


def policy_dtype(args) -> torch.dtype:
    """Under DeepSpeed the engine keeps fp32 master weights, so the model is
    loaded in bf16 (as the published recipe does); a single process trains fp32
    weights with bf16 autocast, since plain AdamW on bf16 weights would lose
    updates as small as a 1e-6 learning rate makes them."""
    if getattr(args, "deepspeed_plugin", None) is not None and args.bf16:
        return torch.bfloat16
    return torch.float32


def build_trainer(trainer_cls, args, cfg, ctx, train_dataset, *, ref_model=None):
    """(trainer, tokenizer, parent ref): the policy from the `policy` input, with
    LoRA adapters when the recipe has `lora:` (TRL wraps it through `peft_config`).

    The TRL config must exist before the model is loaded: under ZeRO-3 it is
    what makes transformers build the model already sharded (zero3_init_flag).
    With LoRA and a reference-based preference loss, DPOTrainer uses the same
    model with the adapter disabled as the reference: no second copy.
    `ref_model`: a reference that is not the policy (preference training
    against another model); passed to the trainer only when given, so the
    trainers without that argument (SFT) are called as before."""
    model, tokenizer, parent = load_policy(ctx.inputs["policy"], ctx.config["chat_template"],
                                           attn_implementation=cfg.attn_implementation, dtype=policy_dtype(args))
    extra = {"ref_model": ref_model} if ref_model is not None else {}
    trainer = trainer_cls(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer, peft_config=peft_config(cfg.lora), **extra)
    if cfg.lora is not None and is_main_process():
        # Under ZeRO-3 a parameter here is this rank's shard; ds_numel is its full size.
        trainable = sum(getattr(p, "ds_numel", p.numel()) for p in trainer.model.parameters() if p.requires_grad)
        total = sum(getattr(p, "ds_numel", p.numel()) for p in trainer.model.parameters())
        log.info("LoRA r=%d alpha=%d on %s: %d of %d parameters train", cfg.lora.r, cfg.lora.alpha, cfg.lora.target_modules, trainable, total)
    return trainer, tokenizer, parent


def train_summary(trainer) -> dict[str, float]:
    """Steps, first and last logged loss, so a report shows that the stage
    really trained (the weight change is added by save_trained)."""
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    out = {"train.steps": float(trainer.state.global_step)}
    if losses:
        out["train.loss_first"] = float(losses[0])
        out["train.loss_last"] = float(losses[-1])
    return out


def _tensors(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file holding it (single file or sharded)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return {name: model_dir / file for name, file in json.loads(index.read_text())["weight_map"].items()}
    from safetensors import safe_open

    single = model_dir / "model.safetensors"
    with safe_open(single, "pt") as f:
        return dict.fromkeys(f.keys(), single)


def max_weight_change(before_dir: Path, after_dir: Path) -> float:
    """Largest absolute change of any weight between two saved models, read one
    tensor at a time (the whole model is never held in memory twice)."""
    from safetensors import safe_open

    before, after = _tensors(before_dir), _tensors(after_dir)
    change = 0.0
    for name, file in after.items():
        if name not in before:
            continue
        with safe_open(file, "pt") as a, safe_open(before[name], "pt") as b:
            change = max(change, (a.get_tensor(name).float() - b.get_tensor(name).float()).abs().max().item())
    return change


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


def publish_final(local: Path, tokenizer, ctx, parent: ModelRef, facts: dict, metrics: dict[str, float]) -> ModelRef:
    """Write the tokenizer and model card next to the weights in `local`, upload
    to the store, return the reference."""
    tokenizer.save_pretrained(local)
    card, readme = model_card(ctx, parent, facts, metrics)
    (local / "posttrain.json").write_text(json.dumps(card, indent=1, sort_keys=True))
    (local / "README.md").write_text(readme)
    key = ctx.checkpoint_key("final")
    uri = ctx.store.put(local, key)
    ctx.store.release(local, key)
    return ModelRef(uri=uri, revision="final", sha=manifest_digest(ctx.store.manifest(key)))


def save_trained(trainer, tokenizer, ctx, parent: ModelRef, lora, facts: dict, metrics: dict[str, float]) -> ModelRef | None:
    """Save the trained model to the store as a plain model: full weights, or
    with LoRA the adapter merged into the base. Every rank takes part in the
    save (ZeRO-3 gathers the 16-bit weights); rank 0 merges, uploads and
    returns the reference, the other ranks return None."""
    local = ctx.workdir / "final"
    saved = ctx.workdir / "adapter" if lora is not None else local
    trainer.save_model(str(saved))
    if not is_main_process():
        return None
    parent_dir = materialize(parent)
    if lora is not None:
        merge_adapter(parent_dir, saved, local)
    for name in TRAINER_LEFTOVERS:
        (local / name).unlink(missing_ok=True)
    metrics["train.max_weight_change"] = max_weight_change(parent_dir, local)
    return publish_final(local, tokenizer, ctx, parent, {**finetuning_facts(lora), **facts}, metrics)


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
