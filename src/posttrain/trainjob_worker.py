"""One node of a TrainJob (posttrain/trainjob.py): the container command

    python3 -m posttrain.trainjob_worker <recipe>/trainjob/<job>

Every node fetches the stage spec and the inputs from the checkpoint store
(POSTTRAIN_STORE), then runs its share of the stage: `accelerate launch` over
all nodes (torchrun's PET_* variables from the torch-distributed runtime give
the node count, this node's rank and node 0's address) with DeepSpeed ZeRO-3
on GPUs, or in this process when the whole job is one process (the tests).
Node 0, where global rank 0 runs, uploads the outputs and then the
StageResult; the launcher downloads them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from posttrain import launch
from posttrain.store import MANIFEST, CheckpointStore, open_store
from posttrain.trainjob import RESULT_FILE, SHARED_WORKDIR_ENV, SPEC_FILE, Staging, get_json, put_json

log = logging.getLogger(__name__)


def machines_from_env(env=os.environ) -> tuple[launch.Machines, int]:
    """(the machines, processes per machine) from torchrun's variables; one
    machine with every visible GPU (or one process) without them."""
    nproc = env.get("PET_NPROC_PER_NODE", "")
    per_node = int(nproc) if nproc.isdigit() else max(launch.visible_gpus(), 1)
    m = launch.Machines(count=int(env.get("PET_NNODES", "1")), rank=int(env.get("PET_NODE_RANK", "0")),
                        main_ip=env.get("PET_MASTER_ADDR", "127.0.0.1"), main_port=int(env.get("PET_MASTER_PORT", "29500")))
    return m, per_node


def link_inputs(fetched: Path, dest: Path) -> Path:
    """The fetched input as the stage would have seen it in the KFP task: the
    same files (symlinked, not copied) without the store's manifest, so the
    stage's input fingerprint, and with it its checkpoint keys, are the same."""
    for src in fetched.rglob("*"):
        rel = src.relative_to(fetched)
        if src.is_dir() or rel == Path(MANIFEST):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).symlink_to(src.resolve())
    dest.mkdir(parents=True, exist_ok=True)
    return dest


def fetch_inputs(store: CheckpointStore, staging: Staging, names: list[str], local: Path) -> dict[str, Path]:
    return {name: link_inputs(store.get(staging.input(name), local / "fetched"), local / "inputs" / name) for name in names}


def output_paths(kinds: dict[str, str | None], local: Path) -> dict[str, Path]:
    """A folder per output; a single-file output is that folder's one file."""
    paths = {}
    for name, filename in kinds.items():
        folder = local / "outputs" / name
        folder.mkdir(parents=True, exist_ok=True)
        paths[name] = folder / filename if filename else folder
    return paths


def upload_outputs(store: CheckpointStore, staging: Staging, outputs: dict[str, Path], result) -> None:
    """The outputs, then the result: the launcher takes the result's presence to mean all is there."""
    for name, path in outputs.items():
        store.put(path.parent if path.suffix else path, staging.output(name))
    put_json(store, staging.result, RESULT_FILE, json.loads(launch.result_json(result)))


def run_stage(spec: dict, inputs: dict[str, Path], outputs: dict[str, Path], machines: launch.Machines, per_node: int,
              shared_workdir: Path | None):
    """This node's share of the stage; the StageResult on node 0, None elsewhere."""
    total = machines.count * per_node
    if total == 1:
        return launch.run_in_process(spec["stage"], spec["config"], inputs, outputs)
    if machines.count > 1 and shared_workdir is None:
        raise RuntimeError(f"{SHARED_WORKDIR_ENV} is not set: the nodes need a shared scratch folder for their checkpoints")
    gpus = launch.visible_gpus() > 0
    return launch.run_launched(spec["stage"], spec["config"], inputs, outputs, total, deepspeed=gpus, machines=machines,
                               shared_workdir=shared_workdir, env=None if gpus else {"ACCELERATE_USE_CPU": "true"})


def shared_workdir(job: str, attempt: str) -> Path | None:
    """The nodes' common scratch folder on the cache volume, one per TrainJob
    created (a restarted pod of the same TrainJob uses the same one; the stage
    resumes from the store's checkpoints, not from what is left there)."""
    root = os.environ.get(SHARED_WORKDIR_ENV)
    return Path(root) / job / attempt if root else None


def main(prefix: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    store = open_store(os.environ["POSTTRAIN_STORE"])
    staging = Staging(prefix)
    machines, per_node = machines_from_env()
    job = prefix.rstrip("/").rsplit("/", 1)[-1]
    log.info("node %d of %d (%d processes each) for %s", machines.rank, machines.count, per_node, prefix)
    local = Path(tempfile.mkdtemp(prefix="posttrain-trainjob-"))
    try:
        spec = get_json(store, staging.spec, SPEC_FILE, local / "spec")
        inputs = fetch_inputs(store, staging, spec["inputs"], local)
        outputs = output_paths(spec["outputs"], local)
        shared = shared_workdir(job, spec["attempt"])
        result = run_stage(spec, inputs, outputs, machines, per_node, shared)
        if machines.rank == 0 and result is not None:
            upload_outputs(store, staging, outputs, result)
            log.info("outputs and result uploaded under %s", store.key_uri(prefix))
            if shared is not None:
                shutil.rmtree(shared.parent, ignore_errors=True)
    finally:
        shutil.rmtree(local, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1])
