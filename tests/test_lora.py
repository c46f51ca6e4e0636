"""LoRA (PEFT) in the training stages, on the tiny model: only the adapter
trains, checkpoints hold only the adapter and resume from it, the final model
is merged into a plain model, and DPO with LoRA loads no reference copy (the
reference is the policy with its adapter disabled)."""

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import RECIPE, ROOT, write_tokenized
from safetensors.torch import load_file

from posttrain.dag import stage_configs
from posttrain.data.artifacts import write_dataset
from posttrain.datasets_io import read_jsonl
from posttrain.local_models import prepare
from posttrain.models import ModelRef, write_model_ref
from posttrain.recipe import apply_overrides, load_recipe
from posttrain.stages import preference_train, sft
from posttrain.stages import training as training_mod
from posttrain.stages.context import StageContext

LORA = "{r: 8, alpha: 16, dropout: 0.05, target_modules: all-linear}"
PAIRS = [
    ("Name a colour.", "Blue.", "I like turtles and many other things."),
    ("Say hello in French.", "Bonjour.", "Goodbye, see you tomorrow."),
    ("What is 2 + 2?", "4.", "It depends on what you mean by numbers."),
    ("Give a one-word greeting.", "Hi!", "Once upon a time there was a greeting."),
]


def _final_dir(result) -> Path:
    return Path(result.metadata["model"]["uri"].removeprefix("file://"))


def _base_tensors() -> dict[str, torch.Tensor]:
    return load_file(prepare("tiny") / "model.safetensors")


@pytest.fixture
def stage(tmp_path, monkeypatch):
    """Run a training stage in this process against a file:// store under tmp_path."""
    monkeypatch.setenv("POSTTRAIN_STORE", f"file://{tmp_path / 'store'}")
    monkeypatch.delenv("POSTTRAIN_LOG_DIR", raising=False)
    write_model_ref(tmp_path / "policy", ModelRef(uri="local:tiny"))

    def make(name: str, config: dict, data: dict[str, list[dict]]) -> StageContext:
        inputs = {"policy": tmp_path / "policy"}
        for key, rows in data.items():
            if key == "data":  # SFT rows: the training stage reads them tokenized
                if not (tmp_path / "tokenized").exists():
                    write_tokenized(tmp_path / "tokenized", rows, load_recipe(RECIPE, "tiny"))
                inputs["tokenized"] = tmp_path / "tokenized" / "tokenized"
                continue
            if not (tmp_path / key).exists():
                write_dataset(tmp_path / key, rows, {})
            inputs[key] = tmp_path / key
        return StageContext.create(config, inputs, {"model": tmp_path / name / "model"})

    return make


def _spy_save(monkeypatch, module) -> dict:
    """Capture the trainer (and its model before the merge) at the moment the stage saves."""
    seen: dict = {}
    real = training_mod.save_trained

    def spy(trainer, *args, **kwargs):
        seen["trainer"] = trainer
        seen["params"] = {n: (p.detach().clone(), p.requires_grad) for n, p in trainer.model.named_parameters()}
        return real(trainer, *args, **kwargs)

    monkeypatch.setattr(module, "save_trained", spy)
    return seen


def test_sft_lora_trains_only_the_adapter_merges_the_final_and_resumes(stage, monkeypatch, caplog):
    recipe = apply_overrides(load_recipe(RECIPE, "tiny"), ["sft.max_steps=3", "sft.save_steps=1", "sft.keep_checkpoints=2", f"sft.lora={LORA}"])
    config = stage_configs(recipe)["sft"]
    data = {"data": read_jsonl(ROOT / "data/local/sft.jsonl")[:16]}
    seen = _spy_save(monkeypatch, sft)
    ctx = stage("first", config, data)
    try:
        result = sft.run(ctx)
    finally:
        ctx.cleanup()

    # Before the merge: a PEFT model whose only trainable (and changed) weights are the adapters.
    from accelerate.utils import is_peft_model

    assert is_peft_model(seen["trainer"].model)
    trainable = {n for n, (_, grad) in seen["params"].items() if grad}
    assert trainable and all("lora_" in n for n in trainable), sorted(trainable)[:5]
    base = _base_tensors()
    frozen = 0
    for name, (value, grad) in seen["params"].items():
        if grad:
            continue
        plain = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        assert torch.equal(value, base[plain]), f"{name} changed although it is not an adapter weight"
        frozen += 1
    assert frozen == len(base)
    assert any(v.abs().max() > 0 for n, (v, _) in seen["params"].items() if "lora_B" in n), "the adapters never trained"

    # The final model: merged, plain, loadable, different from the base where LoRA acts and only there.
    final = _final_dir(result)
    assert not (final / "adapter_config.json").exists() and not (final / "adapter_model.safetensors").exists()
    merged = load_file(final / "model.safetensors")
    assert set(merged) == set(base)
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert torch.equal(merged["model.norm.weight"], base["model.norm.weight"])
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])
    assert result.metrics["train.max_weight_change"] > 0
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(final)
    assert type(model).__name__ == "LlamaForCausalLM"
    card = json.loads((final / "posttrain.json").read_text())
    assert (card["finetuning"], card["lora_r"], card["lora_alpha"]) == ("lora (merged)", 8, 16)
    assert "**lora_r**: 8" in (final / "README.md").read_text()

    # Checkpoints hold the adapter only.
    store = Path(ctx.store.key_uri("").removeprefix("file://"))
    checkpoints = sorted(store.rglob("checkpoint-*"))
    assert [c.name for c in checkpoints] == ["checkpoint-2", "checkpoint-3"]
    assert (checkpoints[0] / "adapter_model.safetensors").is_file() and not (checkpoints[0] / "model.safetensors").exists()

    # Resume from the adapter-only checkpoint-2 (as after a crash in step 3): the same final weights.
    ctx.store.delete(ctx.checkpoint_key("final"))
    ctx.store.delete(ctx.checkpoint_key("checkpoint-3"))
    caplog.set_level(logging.INFO)
    again = stage("resumed", config, data)
    try:
        resumed = sft.run(again)
    finally:
        again.cleanup()
    assert "checkpoint-2" in caplog.text.split("resuming from")[1].splitlines()[0]
    weights = load_file(_final_dir(resumed) / "model.safetensors")
    assert max((weights[k] - merged[k]).abs().max().item() for k in merged) <= 1e-6


def test_dpo_with_lora_uses_the_policy_without_adapter_as_reference(stage, monkeypatch):
    recipe = apply_overrides(load_recipe(RECIPE, "tiny"), ["preference.max_steps=2", "preference.lr=1e-2", f"preference.lora={LORA}"])
    config = stage_configs(recipe)["preference_train_1"]
    pairs = [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
              "rejected": [{"role": "assistant", "content": r}]} for p, c, r in PAIRS]

    # No second model may be loaded for the reference.
    import trl.trainer.dpo_trainer as dpo_module

    def no_copy(*args, **kwargs):
        raise AssertionError("DPOTrainer loaded a reference model copy")

    monkeypatch.setattr(dpo_module, "create_model_from_path", no_copy)
    seen = _spy_save(monkeypatch, preference_train)
    ctx = stage("dpo", config, {"pairs": pairs})
    try:
        result = preference_train.run(ctx)
    finally:
        ctx.cleanup()

    trainer = seen["trainer"]
    assert trainer.ref_model is None
    # The reference log-probs are those of the base model, although the adapter has trained.
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    trainer.model.eval()
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.model, batch)
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(prepare("tiny"), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    base_logps = (logps * batch["completion_mask"][:, 1:]).sum(1)
    torch.testing.assert_close(torch.cat([ref_chosen, ref_rejected]), base_logps, atol=1e-4, rtol=1e-5)
    with torch.no_grad():
        policy = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (policy - logits).abs().max() > 1e-3, "the adapter did not change the policy"

    # The final model is merged, loads as a plain model and differs from the base.
    final = _final_dir(result)
    merged = AutoModelForCausalLM.from_pretrained(final)
    assert type(merged).__name__ == "LlamaForCausalLM"
    base_sd = base.state_dict()
    assert any(not torch.equal(v, base_sd[k]) for k, v in merged.state_dict().items())
    card = json.loads((final / "posttrain.json").read_text())
    assert (card["finetuning"], card["lora_r"], card["lora_alpha"], card["loss"]) == ("lora (merged)", 8, 16, "apo_zero")
