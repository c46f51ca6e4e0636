"""LoRA through PEFT: the recipe's `lora:` block as a `peft.LoraConfig` for the
TRL trainers (`peft_config=`), what a model card says about it, and the merge
that turns base + adapter into a plain model.

Full fine-tuning is `lora: null` (the default). With LoRA the trainers save
only the adapter in their checkpoints (resume loads it back onto the base);
the stage's final model is merged (`merge_and_unload`), so later stages and
users load it with `AutoModelForCausalLM.from_pretrained` like any model.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

from posttrain.recipe import LoraConfig

log = logging.getLogger(__name__)


def peft_config(lora: LoraConfig | None):
    """The PEFT config for the recipe's `lora:` block, or None for full fine-tuning."""
    if lora is None:
        return None
    import peft

    return peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def finetuning_facts(lora: LoraConfig | None) -> dict:
    """What the model card says about how the weights were trained."""
    if lora is None:
        return {"finetuning": "full"}
    targets = lora.target_modules if isinstance(lora.target_modules, str) else ", ".join(lora.target_modules)
    return {"finetuning": "lora (merged)", "lora_r": lora.r, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "lora_target_modules": targets}


@contextmanager
def _without_zero3_init():
    """Load a model whole, on this process alone, even inside a DeepSpeed ZeRO-3
    run: transformers would otherwise build it under `deepspeed.zero.Init`
    (a collective), which only rank 0 reaches here. transformers has no public
    switch for this, so the global it reads is cleared and put back."""
    from transformers.integrations import deepspeed as hf_deepspeed

    if not hf_deepspeed.is_deepspeed_zero3_enabled():
        yield
        return
    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path) -> None:
    """Base model + LoRA adapter -> one plain model in `out_dir` (PEFT's
    `merge_and_unload`), in the dtype the base is stored in."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with _without_zero3_init():
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto")
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
        merged.save_pretrained(out_dir)
    log.info("merged the LoRA adapter into %s", out_dir)
