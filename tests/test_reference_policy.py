"""The reference of the preference losses (issue 7), on the tiny model: which
model each `preference.reference` mode trains against in chunk 2, and the
precomputed reference log-probs kept in the checkpoint store
(posttrain/ref_logprobs.py): computed and stored once, reused by a rerun of
the same chunk, recomputed when the pairs change; also with two launched
processes on CPU."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import RECIPE, ROOT
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.dag import stage_configs
from posttrain.data.artifacts import write_dataset
from posttrain.local_models import prepare
from posttrain.models import ModelRef, write_model_ref
from posttrain.preference_losses import trl_classes
from posttrain.recipe import apply_overrides, load_recipe
from posttrain.ref_logprobs import COLUMNS, PREFIX
from posttrain.stages import preference_train
from posttrain.stages.context import StageContext

LORA = "{r: 8, alpha: 16, dropout: 0.05, target_modules: all-linear}"
SFT = ModelRef(uri="local:tiny")
PAIRS = [
    ("Name a colour.", "Blue.", "I like turtles and many other things."),
    ("Say hello in French.", "Bonjour.", "Goodbye, see you tomorrow."),
    ("What is 2 + 2?", "4.", "It depends on what you mean by numbers."),
    ("Give a one-word greeting.", "Hi!", "Once upon a time there was a greeting."),
]


def _pairs(pairs=PAIRS) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}], "reasoning_mode": "no_think"} for p, c, r in pairs]


@pytest.fixture(scope="module")
def previous_policy(tmp_path_factory) -> ModelRef:
    """Chunk 1's output: the tiny model with every weight moved, saved as a plain model folder."""
    out = tmp_path_factory.mktemp("policy-1")
    model = AutoModelForCausalLM.from_pretrained(prepare("tiny"), dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(prepare("tiny")).save_pretrained(out)
    return ModelRef(uri=f"file://{out}", revision="final", sha="chunk-1")


@pytest.fixture
def chunk2(tmp_path, monkeypatch, previous_policy):
    """Run preference_train chunk 2 (policy = chunk 1's model) with a `reference` input;
    returns (result, what the stage passed and built, model card)."""
    monkeypatch.setenv("POSTTRAIN_STORE", f"file://{tmp_path / 'store'}")
    monkeypatch.delenv("POSTTRAIN_LOG_DIR", raising=False)
    write_model_ref(tmp_path / "sft", SFT)
    write_model_ref(tmp_path / "policy", previous_policy)
    seen: dict = {}
    real = preference_train.build_trainer

    def spy(*args, **kwargs):
        seen["ref_model"] = kwargs.get("ref_model")
        seen["trainer"], tokenizer, parent = real(*args, **kwargs)
        return seen["trainer"], tokenizer, parent

    monkeypatch.setattr(preference_train, "build_trainer", spy)

    def run(*overrides: str, reference: str | None = "initial", pairs: list[dict] | None = None):
        recipe = apply_overrides(load_recipe(RECIPE, "tiny"), ["preference.max_steps=1", "preference.gradient_accumulation_steps=1", *overrides])
        write_dataset(tmp_path / "pairs", pairs or _pairs(), {})
        inputs = {"policy": tmp_path / "policy", "pairs": tmp_path / "pairs"}
        if reference is not None:  # as the DAG wires it
            inputs["reference"] = tmp_path / ("sft" if reference == "initial" else "policy")
        ctx = StageContext.create(stage_configs(recipe)["preference_train_2"], inputs, {"model": tmp_path / "out" / "model"})
        try:
            result = preference_train.run(ctx)
        finally:
            ctx.cleanup()
        card = json.loads((Path(result.metadata["model"]["uri"].removeprefix("file://")) / "posttrain.json").read_text())
        return result, dict(seen), card

    return run


def _same_weights(model, folder: Path) -> bool:
    saved = load_file(folder / "model.safetensors")
    state = model.state_dict()
    return all(torch.equal(state[k], v) for k, v in saved.items())


@pytest.mark.parametrize("lora", [False, True])
def test_initial_reference_in_chunk_2_is_the_sft_model(chunk2, previous_policy, lora):
    # With LoRA too: the policy with its adapter disabled would be chunk 1's model, not the SFT model.
    result, seen, card = chunk2(*([f"preference.lora={LORA}"] if lora else []), reference="initial")
    ref = seen["ref_model"]
    assert ref is not None and ref is not seen["trainer"].model
    assert _same_weights(ref, prepare("tiny"))
    assert not _same_weights(ref, Path(previous_policy.uri.removeprefix("file://")))
    assert card["reference"] == SFT.uri and card["parent"]["uri"] == previous_policy.uri
    # Precomputed (the default): the values in the data are the SFT model's, and no reference copy stays for training.
    trainer = seen["trainer"]
    assert trainer.ref_model is None
    data = trainer.train_dataset
    batch = trainer.data_collator([data[i] for i in range(len(data))])
    sft = AutoModelForCausalLM.from_pretrained(prepare("tiny"), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = sft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    expected = (logps * batch["completion_mask"][:, 1:]).sum(1)
    torch.testing.assert_close(torch.tensor(list(data["ref_chosen_logps"]) + list(data["ref_rejected_logps"])), expected, atol=1e-4, rtol=1e-5)
    assert result.metrics["train.ref_logps_reused"] == 0.0


@pytest.mark.parametrize("reference", ["previous", None])
def test_previous_reference_or_none_is_the_policy_itself(chunk2, previous_policy, reference):
    # None: a caller from before the `reference` input; the policy is the reference as before.
    _, seen, card = chunk2(reference=reference)
    assert seen["ref_model"] is None
    assert card["reference"] == previous_policy.uri


def test_initial_reference_without_precompute_trains_against_it(chunk2):
    _, seen, _ = chunk2("preference.precompute_ref_log_probs=false", reference="initial")
    trainer = seen["trainer"]
    assert trainer.ref_model is seen["ref_model"] and _same_weights(trainer.ref_model, prepare("tiny"))


@pytest.mark.parametrize("loss", ["simpo", "orpo"])
def test_reference_free_loss_loads_no_reference(chunk2, monkeypatch, loss):
    monkeypatch.setattr(preference_train, "load_policy", lambda *a, **k: pytest.fail("a reference was loaded"))
    result, seen, card = chunk2(f"preference.loss={loss}", "preference.beta=null", reference="initial")
    assert seen["ref_model"] is None and card["reference"] is None
    assert "train.ref_logps_reused" not in result.metrics


# -- precomputed reference log-probs in the store ----------------------------------


@pytest.mark.parametrize("loss", ["apo_zero", "kto"])
def test_reference_log_probs_are_stored_reused_and_invalidated(chunk2, tmp_path, monkeypatch, loss):
    family = "kto" if loss == "kto" else "dpo"
    trainer_cls = trl_classes(family)[1]
    calls = []
    real = trainer_cls.compute_ref_log_probs

    def counting(self, model, inputs):
        calls.append(len(inputs["input_ids"]))
        return real(self, model, inputs)

    monkeypatch.setattr(trainer_cls, "compute_ref_log_probs", counting)  # the subclass's super() finds it too
    overrides = [f"preference.loss={loss}", "preference.beta=null"]

    def ref_logps(seen) -> dict:
        data = seen["trainer"].train_dataset
        return {c: list(data[c]) for c in COLUMNS[family] if c in data.column_names}

    first, seen, _ = chunk2(*overrides)
    assert first.metrics["train.ref_logps_reused"] == 0.0 and calls
    stored = list((tmp_path / "store" / PREFIX).iterdir())
    assert len(stored) == 1 and (stored[0] / "manifest.json").is_file()
    computed = ref_logps(seen)
    assert computed and all(len(v) == len(seen["trainer"].train_dataset) for v in computed.values())

    # The same chunk again (its final model gone, as after a failure late in the chunk): reused, TRL computes nothing.
    shutil.rmtree(tmp_path / "store" / "smollm3")
    calls.clear()
    again, seen, _ = chunk2(*overrides)
    assert again.metrics["train.ref_logps_reused"] == 1.0 and calls == []
    assert ref_logps(seen) == computed
    assert again.metrics["train.steps"] == 1.0

    # Other pairs: other values, computed again and stored under another key.
    changed = _pairs(PAIRS[:-1] + [("Give a one-word greeting.", "Hi!", "A greeting is a word.")])
    third, _, _ = chunk2(*overrides, pairs=changed)
    assert third.metrics["train.ref_logps_reused"] == 0.0 and calls
    assert len(list((tmp_path / "store" / PREFIX).iterdir())) == 2


def test_reward_means_over_the_chunk_are_stage_metrics(chunk2):
    result, seen, card = chunk2("preference.max_steps=2")
    logged = [e for e in seen["trainer"].state.log_history if "rewards/margins" in e]
    assert len(logged) == 2
    assert result.metrics["train.reward_margin"] == pytest.approx(sum(e["rewards/margins"] for e in logged) / 2)
    for name in ("train.rewards_chosen", "train.rewards_rejected", "train.reward_margin", "train.reward_accuracy"):
        assert card["metrics"][name] == result.metrics[name]


LAUNCHED = """
import json, sys
from pathlib import Path
from posttrain.launch import run_launched
a = json.loads(Path(sys.argv[1]).read_text())
r = run_launched("preference_train", a["config"], {k: Path(v) for k, v in a["inputs"].items()}, {"model": Path(a["out"])}, 2,
                 deepspeed=False, env={"ACCELERATE_USE_CPU": "true"})
print(json.dumps(r.metrics))
"""


def test_two_launched_processes_compute_then_reuse(tmp_path, previous_policy):
    # Every rank runs TRL's precompute and reads rank 0's result file; then every rank reuses the stored values.
    prepare("tiny")  # built once here, not by two ranks at the same time
    write_model_ref(tmp_path / "sft", SFT)
    write_model_ref(tmp_path / "policy", previous_policy)
    write_dataset(tmp_path / "pairs", _pairs(PAIRS + [("Name a fruit.", "Apple.", "A car."), ("Capital of France?", "Paris.", "Berlin.")]), {})
    recipe = apply_overrides(load_recipe(RECIPE, "tiny"), ["preference.max_steps=1", "preference.gradient_accumulation_steps=1"])
    job = {"config": stage_configs(recipe)["preference_train_2"], "out": str(tmp_path / "out"),
           "inputs": {k: str(tmp_path / k) for k in ("policy", "pairs")} | {"reference": str(tmp_path / "sft")}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "POSTTRAIN_STORE": f"file://{tmp_path / 'store'}", "HF_HUB_OFFLINE": "1", "POSTTRAIN_CACHE": str(ROOT / ".cache")}
    env.pop("POSTTRAIN_LOG_DIR", None)
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", LAUNCHED, str(tmp_path / "job.json")], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-4000:]
        runs.append((json.loads(done.stdout.strip().splitlines()[-1]), done.stderr))
        shutil.rmtree(tmp_path / "store" / "smollm3")  # the final model: the second run trains again
    (first, first_log), (second, second_log) = runs
    assert first["train.ref_logps_reused"] == 0.0 and second["train.ref_logps_reused"] == 1.0
    assert all(f"[rank {r}] posttrain.ref_logprobs: reference log-probs: reused from" in second_log for r in (0, 1))
    assert second["train.loss_first"] == first["train.loss_first"]
