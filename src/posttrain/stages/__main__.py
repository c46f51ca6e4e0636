"""Run one stage outside KFP, in this process, as a pod does:

    python -m posttrain.stages SPEC.json

SPEC = {"stage": "sft", "config": {...}, "inputs": {name: dir}, "outputs": {name: dir or file}},
optionally "result": a path where the StageResult (metrics, metadata, params)
is written as JSON, and "workdir": a scratch folder to use instead of a fresh
one (kept afterwards; its owner removes it).

Used by the restart tests and bench/resume.py, for debugging a stage, and by
posttrain/launch.py, which starts it once per GPU under `accelerate launch`
with a shared workdir: then only rank 0 writes the result."""

import importlib
import json
import logging
import os
import sys
from pathlib import Path

from posttrain.launch import is_main_process, result_json
from posttrain.stages.context import StageContext


def _leave_process_group() -> None:
    """Tear the launched ranks' process group down before exit: left to
    interpreter shutdown, its threads can abort a rank ("terminate called
    without an active exception") after the stage has succeeded."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(spec_path: str) -> None:
    rank = f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s {rank}%(name)s: %(message)s", stream=sys.stderr)
    spec = json.loads(Path(spec_path).read_text())
    inputs = {k: Path(v) for k, v in spec["inputs"].items()}
    outputs = {k: Path(v) for k, v in spec["outputs"].items()}
    for path in outputs.values():
        # Directory artifacts (models, datasets), or single files (report.md, samples.html).
        (path.parent if path.suffix else path).mkdir(parents=True, exist_ok=True)
    shared = Path(spec["workdir"]) if spec.get("workdir") else None
    if shared:
        shared.mkdir(parents=True, exist_ok=True)
    ctx = StageContext.create(spec["config"], inputs, outputs, workdir=shared)
    try:
        result = importlib.import_module(f"posttrain.stages.{spec['stage']}").run(ctx)
    finally:
        if not shared:
            ctx.cleanup()
    _leave_process_group()
    if not is_main_process():
        return
    if spec.get("result"):
        out = Path(spec["result"])
        tmp = out.with_name(out.name + ".partial")
        tmp.write_text(result_json(result))
        tmp.rename(out)
    print(json.dumps(result.metrics), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
