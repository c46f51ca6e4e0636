"""Where a stage runs: in this process, or re-launched on every GPU of the pod.

A training stage (midtrain, sft, preference_train) on a pod with more than one
visible GPU runs under `accelerate launch` with DeepSpeed ZeRO-3
(`configs/zero3.json`): the stage spec goes to a file, `python -m
posttrain.stages SPEC` runs once per GPU, rank 0 writes the stage's outputs and
its StageResult (metrics + metadata) to a JSON file that this process reads
back. Everything else, and any stage with 0 or 1 GPU, runs in this process as
before. A training stage whose config carries a `launcher` for more than one
node runs as a Kubeflow Trainer TrainJob instead (posttrain/trainjob.py): this
process only launches and follows it, and each node runs `launch_command` with
its `Machines`. The KFP components call `execute` and know nothing of this.

At the end, `is_main_process` for the stages (accelerate's process state;
the collectives the stages need come from accelerate.utils).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)

TRAINING_STAGES = ("midtrain", "sft", "preference_train")
# Which recipe section holds a training stage's settings.
TRAIN_SECTION = {"midtrain": "train", "sft": "train", "preference_train": "preference"}
# On SIGTERM the launcher gives the workers this long to save and upload a
# checkpoint before it kills them (torch elastic's default is 30 s). The pod's
# termination grace period is the real bound.
SHUTDOWN_TIMEOUT_S = 900


def deepspeed_config_path() -> Path:
    """The DeepSpeed ZeRO-3 config shipped in the package."""
    return Path(str(resources.files("posttrain") / "configs" / "zero3.json"))


def visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


def should_launch(stage: str, gpus: int) -> bool:
    """Re-launch with one process per GPU only for a training stage with several GPUs."""
    return stage in TRAINING_STAGES and gpus > 1


def mixed_precision(stage: str, config: dict) -> str:
    section = config.get(TRAIN_SECTION.get(stage, ""), {})
    return "bf16" if section.get("bf16", True) else "no"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Machines:
    """The nodes of a multi-node launch and this one's place among them (on a
    TrainJob node: torchrun's PET_* variables, set by the Trainer)."""

    count: int
    rank: int
    main_ip: str
    main_port: int


def launch_command(spec_path: Path, num_processes: int, mixed_precision: str = "bf16", *,
                   deepspeed_config: Path | None = None, port: int | None = None, machines: Machines | None = None) -> list[str]:
    """`accelerate launch` of `python -m posttrain.stages SPEC`, on one machine
    or, with `machines`, as this machine's share of `num_processes` (all nodes).

    With `deepspeed_config` (the cluster path: `deepspeed_config_path()`) the
    processes run DeepSpeed ZeRO-3 with `zero3_init_flag`; without it, plain
    multi-process data parallel (used by the CPU test, where DeepSpeed cannot run)."""
    m = machines or Machines(count=1, rank=0, main_ip="", main_port=port or free_port())
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--num_processes", str(num_processes), "--num_machines", str(m.count), "--machine_rank", str(m.rank),
           "--mixed_precision", mixed_precision, "--dynamo_backend", "no",
           "--main_process_port", str(m.main_port)]
    if m.count > 1:
        # Static rendezvous: global rank = machine rank x processes per machine +
        # local rank, so global rank 0 (which writes the result) is on machine 0.
        cmd += ["--main_process_ip", m.main_ip, "--rdzv_backend", "static"]
    if deepspeed_config is not None:
        cmd += ["--use_deepspeed", "--deepspeed_config_file", str(deepspeed_config), "--zero3_init_flag", "true"]
        if m.count > 1:
            # torchrun on every node; accelerate's default (pdsh) would ssh from node 0.
            cmd += ["--deepspeed_multinode_launcher", "standard"]
    else:
        cmd += ["--multi_gpu"]
    return [*cmd, "-m", "posttrain.stages", str(spec_path)]


def run_in_process(stage: str, config: dict, inputs: dict[str, Path], outputs: dict[str, Path]):
    """Today's path: build the context here and call the stage."""
    import importlib

    from posttrain.stages.context import StageContext

    ctx = StageContext.create(config, inputs, outputs)
    try:
        return importlib.import_module(f"posttrain.stages.{stage}").run(ctx)
    finally:
        ctx.cleanup()


def run_launched(stage: str, config: dict, inputs: dict[str, Path], outputs: dict[str, Path], num_processes: int, *,
                 deepspeed: bool = True, env: dict[str, str] | None = None, machines: Machines | None = None,
                 shared_workdir: Path | None = None):
    """Run the stage in `num_processes` processes and return rank 0's StageResult
    (None on a machine other than the first of `machines`: rank 0 is not there).

    The processes share one scratch folder (`workdir` in the spec: the Trainer's
    output_dir must be the same for every rank, since each writes its own
    shards into a checkpoint): a fresh local one, or `shared_workdir` (a volume
    every machine mounts) for a multi-node launch. SIGTERM is passed on to the
    launcher, which passes it to every process; they save a checkpoint together
    and exit, and this process then exits with 143 so the task is retried and resumes."""
    from posttrain.stages.context import StageResult

    workdir = Path(tempfile.mkdtemp(prefix=f"posttrain-{config.get('task', stage)}-launch-"))
    try:
        spec = {"stage": stage, "config": config, "inputs": {k: str(v) for k, v in inputs.items()},
                "outputs": {k: str(v) for k, v in outputs.items()}, "workdir": str(shared_workdir or workdir / "work"),
                "result": str(workdir / "result.json")}
        spec_path = workdir / "spec.json"
        spec_path.write_text(json.dumps(spec))
        cmd = launch_command(spec_path, num_processes, mixed_precision(stage, config),
                             deepspeed_config=deepspeed_config_path() if deepspeed else None, machines=machines)
        log.info("launching %s on %d processes: %s", stage, num_processes, " ".join(cmd))
        child_env = {**os.environ, **(env or {})}
        child_env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))
        proc = subprocess.Popen(cmd, env=child_env)
        terminated = []

        def forward(signum, _frame):
            terminated.append(signum)
            proc.send_signal(signum)

        previous = signal.signal(signal.SIGTERM, forward)
        try:
            rc = proc.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
        if terminated:
            from posttrain.stages.checkpoints import Preempted

            log.warning("%s: SIGTERM passed on to the launched processes; they exited with %d", stage, rc)
            raise Preempted()
        if rc == 0 and machines is not None and machines.rank != 0:
            return None
        result_file = Path(spec["result"])
        if rc != 0 or not result_file.is_file():
            raise RuntimeError(f"{stage}: launched stage failed (exit status {rc}); see the log of rank 0 above")
        data = json.loads(result_file.read_text())
        return StageResult(**data)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def execute(stage: str, config: dict, inputs: dict[str, Path], outputs: dict[str, Path]):
    """Run a stage where it belongs (see the module docstring)."""
    launcher = config.get("launcher")
    if launcher and launcher.get("nodes", 1) > 1:
        from posttrain.trainjob import run_trainjob

        return run_trainjob(stage, config, inputs, outputs)
    gpus = visible_gpus()
    if should_launch(stage, gpus):
        return run_launched(stage, config, inputs, outputs, gpus)
    return run_in_process(stage, config, inputs, outputs)


def result_json(result) -> str:
    return json.dumps(asdict(result), sort_keys=True)


# -- inside a launched stage ---------------------------------------------------------


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that writes outputs and uploads.
    accelerate's process state, which the Trainer shares."""
    from accelerate import PartialState

    return PartialState().is_main_process
