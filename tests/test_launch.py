"""Scale-out: where a stage runs (in process with 0/1 GPU, `accelerate launch`
with DeepSpeed ZeRO-3 with more), the launch command, the shipped DeepSpeed
config as accelerate and DeepSpeed themselves read it, and a real 2-process
run on CPU (gloo data parallel; DeepSpeed itself needs GPUs): SIGTERM stops
both ranks at the same step, rank 0 alone uploads a checkpoint holding both
ranks' state, the retry resumes and rank 0 merges and writes the outputs."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import RECIPE, ROOT, write_tokenized

from posttrain import launch
from posttrain.dag import stage_configs
from posttrain.recipe import apply_overrides, load_recipe


def _cluster_train(section: str = "sft"):
    recipe = load_recipe(RECIPE)
    return getattr(recipe, section if section != "preference_train" else "preference")


# -- where a stage runs ----------------------------------------------------------------


@pytest.mark.parametrize("gpus", [0, 1])
def test_training_stage_runs_in_process_with_at_most_one_gpu(monkeypatch, gpus):
    calls = []
    monkeypatch.setattr(launch, "visible_gpus", lambda: gpus)
    monkeypatch.setattr(launch, "run_in_process", lambda *a: calls.append("in_process") or "r")
    monkeypatch.setattr(launch, "run_launched", lambda *a, **k: calls.append("launched") or "r")
    for stage in ("midtrain", "sft", "preference_train", "evaluate"):
        launch.execute(stage, {}, {}, {})
    assert calls == ["in_process"] * 4


def test_training_stage_is_launched_on_every_gpu_and_other_stages_are_not(monkeypatch):
    calls = []
    monkeypatch.setattr(launch, "visible_gpus", lambda: 8)
    monkeypatch.setattr(launch, "run_in_process", lambda stage, *a: calls.append((stage, "in_process")))
    monkeypatch.setattr(launch, "run_launched", lambda stage, c, i, o, n, **k: calls.append((stage, n)))
    for stage in ("midtrain", "sft", "preference_train", "evaluate", "prefgen", "prepare_data"):
        launch.execute(stage, {}, {}, {})
    assert calls == [("midtrain", 8), ("sft", 8), ("preference_train", 8),
                     ("evaluate", "in_process"), ("prefgen", "in_process"), ("prepare_data", "in_process")]


# -- the launch command --------------------------------------------------------------


def test_launch_command_is_what_the_recipe_asks_for_and_accelerate_parses_it(tmp_path):
    from accelerate.commands.launch import launch_command_parser

    configs = stage_configs(load_recipe(RECIPE))
    assert launch.mixed_precision("sft", configs["sft"]) == "bf16"
    assert launch.mixed_precision("preference_train", configs["preference_train_1"]) == "bf16"
    assert launch.mixed_precision("sft", {"train": {"bf16": False}}) == "no"
    spec = tmp_path / "spec.json"
    cmd = launch.launch_command(spec, 8, "bf16", deepspeed_config=launch.deepspeed_config_path(), port=29555)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[-3:] == ["-m", "posttrain.stages", str(spec)]
    args = launch_command_parser().parse_args(cmd[3:])
    assert args.num_processes == 8 and args.num_machines == 1 and args.mixed_precision == "bf16"
    assert args.use_deepspeed and Path(args.deepspeed_config_file) == launch.deepspeed_config_path()
    assert args.zero3_init_flag == "true" and args.main_process_port == 29555
    assert args.module and args.training_script == "posttrain.stages" and args.training_script_args == [str(spec)]
    assert launch.deepspeed_config_path().is_file()


# -- GPU kernels and recipe switches -------------------------------------------------------


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU fallback")
def test_gpu_kernels_fall_back_on_cpu_with_a_warning(caplog, tmp_path):
    from posttrain.stages.training import attention, common_args, use_liger

    assert attention("flash_attention_2") == "sdpa" and attention("eager") == "eager"
    assert use_liger(True) is False and use_liger(False) is False
    assert "flash_attention_2 requested" in caplog.text and "use_liger_kernel requested" in caplog.text
    cfg = _cluster_train("sft").model_copy(update={"attn_implementation": "flash_attention_2", "use_liger_kernel": True})
    args = common_args(cfg, SimpleNamespace(log_dir=None, workdir=tmp_path), 42, ["none"])
    assert args["use_liger_kernel"] is False and args["bf16"] is False
    # From the recipe, as in the published SmolLM3 recipe.
    assert args["gradient_checkpointing"] is True and args["gradient_checkpointing_kwargs"] == {"use_reentrant": True}
    assert args["average_tokens_across_devices"] is True


# -- the DeepSpeed config ------------------------------------------------------------------


def _resolved_config(cfg, world_size: int = 1) -> dict:
    """The shipped config with its "auto" values filled from the recipe, the way
    the Trainer does (transformers' HfTrainerDeepSpeedConfig)."""
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    hf = HfTrainerDeepSpeedConfig(str(launch.deepspeed_config_path()))
    args = SimpleNamespace(
        world_size=world_size, per_device_train_batch_size=cfg.per_device_batch_size, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_grad_norm=cfg.max_grad_norm, learning_rate=cfg.lr, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.0,
        save_on_each_node=False, fp16=False, fp16_full_eval=False, bf16=cfg.bf16, bf16_full_eval=False, get_warmup_steps=lambda n: int(n * cfg.warmup_ratio),
    )
    hf.trainer_config_process(args)
    hf.trainer_config_finalize(args, SimpleNamespace(config=SimpleNamespace(hidden_size=2048)), num_training_steps=1000)
    return hf.config


def test_zero3_config_is_stage_3_bf16_no_offload_16bit_save():
    raw = json.loads(launch.deepspeed_config_path().read_text())
    zero = raw["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "none"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert raw["bf16"]["enabled"] in (True, "auto")  # "auto": from --mixed_precision / the recipe's bf16
    resolved = _resolved_config(_cluster_train("sft"), world_size=8)
    assert resolved["bf16"]["enabled"] is True
    assert resolved["train_batch_size"] == 1 * 2 * 8  # per device x accumulation x GPUs (x 8 nodes = 128 in the recipe)
    assert resolved["gradient_clipping"] == 0.2


@pytest.mark.parametrize("section", ["sft", "midtrain", "preference_train"])
def test_deepspeed_accepts_the_config(section):
    from deepspeed.runtime.config import DeepSpeedConfig

    ds = DeepSpeedConfig(_resolved_config(_cluster_train(section)))
    assert ds.zero_optimization_stage == 3 and ds.zero_enabled
    assert ds.bfloat16_config.enabled and not ds.float16_config.enabled
    assert ds.zero_config.offload_param is None or ds.zero_config.offload_param.device == "none"
    assert ds.zero_config.offload_optimizer is None or ds.zero_config.offload_optimizer.device == "none"
    assert ds.zero_config.gather_16bit_weights_on_model_save
    # DeepSpeed checks the keys: a misspelt one is refused, so the checks above mean something.
    bad = _resolved_config(_cluster_train(section))
    bad["zero_optimization"]["stage3_gather_16bit_weight_on_model_save"] = True
    with pytest.raises(Exception, match="stage3_gather_16bit_weight_on_model_save"):
        DeepSpeedConfig(bad)


def test_accelerate_deepspeed_plugin_accepts_the_config(monkeypatch):
    from accelerate.utils import DeepSpeedPlugin

    # What `accelerate launch --use_deepspeed --deepspeed_config_file ... --zero3_init_flag true` sets.
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(launch.deepspeed_config_path()))
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO3_INIT", "true")
    plugin = DeepSpeedPlugin()
    plugin.set_mixed_precision("bf16")
    assert plugin.zero_stage == 3 and plugin.zero3_init_flag is True and plugin.zero3_save_16bit_model is True
    assert plugin.offload_optimizer_device == plugin.offload_param_device == "none"
    assert plugin.deepspeed_config["bf16"]["enabled"] is True


# -- two processes on CPU --------------------------------------------------------------

WRAPPER = """
import json, logging, sys
from pathlib import Path
from posttrain.launch import run_launched
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s wrapper %(name)s: %(message)s")
a = json.loads(Path(sys.argv[1]).read_text())
paths = lambda d: {k: Path(v) for k, v in d.items()}
# No DeepSpeed on CPU: plain data parallel over gloo, with the same spec, result file and rank-0 rules.
r = run_launched(a["stage"], a["config"], paths(a["inputs"]), paths(a["outputs"]), 2, deepspeed=False, env={"ACCELERATE_USE_CPU": "true"})
print(json.dumps({"metrics": r.metrics, "metadata": r.metadata}))
"""


def test_two_processes_on_cpu_preempt_resume_and_merge(tmp_path):
    from safetensors.torch import load_file

    from posttrain.datasets_io import read_jsonl
    from posttrain.local_models import prepare
    from posttrain.models import ModelRef, write_model_ref

    prepare("tiny")  # built once here, not by two ranks at the same time
    recipe = apply_overrides(load_recipe(RECIPE, "tiny"), ["sft.max_steps=3", "sft.save_steps=1", "sft.lora={r: 8, alpha: 16}"])
    write_model_ref(tmp_path / "policy", ModelRef(uri="local:tiny"))
    tokenized = write_tokenized(tmp_path / "data", read_jsonl(ROOT / "data/local/sft.jsonl")[:16], recipe)
    job = {"stage": "sft", "config": stage_configs(recipe)["sft"], "inputs": {"policy": str(tmp_path / "policy"), "tokenized": str(tokenized)},
           "outputs": {"model": str(tmp_path / "out")}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "POSTTRAIN_STORE": f"file://{tmp_path / 'store'}", "HF_HUB_OFFLINE": "1", "POSTTRAIN_CACHE": str(ROOT / ".cache")}
    env.pop("POSTTRAIN_LOG_DIR", None)
    cmd = [sys.executable, "-c", WRAPPER, str(tmp_path / "job.json")]

    # Preemption: SIGTERM to the wrapper once the first checkpoint is in the store.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = []
    for line in proc.stderr:
        log.append(line)
        if "checkpoint uploaded" in line:
            proc.send_signal(signal.SIGTERM)
            break
    _, rest = proc.communicate(timeout=300)
    text = "".join(log) + rest
    assert proc.returncode == 143, text[-4000:]
    stops = [line.split("saving a checkpoint at step ")[1].split()[0] for line in text.splitlines() if "SIGTERM: saving a checkpoint" in line]
    assert len(stops) == 2 and stops[0] == stops[1], stops  # both ranks, the same step
    step = stops[0]
    uploads = [line for line in text.splitlines() if "checkpoint uploaded" in line]
    assert uploads and all("[rank 0]" in line for line in uploads)
    (checkpoint,) = (tmp_path / "store").rglob(f"checkpoint-{step}")
    names = {p.name for p in checkpoint.iterdir()}
    assert {"rng_state_0.pth", "rng_state_1.pth", "adapter_model.safetensors", "manifest.json"} <= names and "model.safetensors" not in names
    assert not (tmp_path / "out" / "model.json").exists()

    # The retry resumes, finishes, and rank 0 alone merges and writes the outputs.
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"checkpoint-{step}" in done.stderr.split("resuming from")[1].splitlines()[0]
    assert "[rank 0] posttrain.lora: merged" in done.stderr and "[rank 1] posttrain.lora" not in done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    ref = json.loads((tmp_path / "out" / "model.json").read_text())
    assert result["metadata"]["model"]["uri"] == ref["uri"] and result["metrics"]["train.steps"] == 3.0
    final = Path(ref["uri"].removeprefix("file://"))
    assert not (final / "adapter_config.json").exists()
    assert "model.layers.0.self_attn.q_proj.weight" in load_file(final / "model.safetensors")
