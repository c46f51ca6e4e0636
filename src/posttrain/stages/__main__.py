"""Run one stage outside KFP, in this process, as a pod does:

    python -m posttrain.stages SPEC.json

SPEC = {"stage": "sft", "config": {...}, "inputs": {name: dir}, "outputs": {name: dir}}.
Used by the restart tests and bench/resume.py, and for debugging a stage."""

import importlib
import json
import logging
import sys
from pathlib import Path

from posttrain.stages.context import StageContext


def main(spec_path: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    spec = json.loads(Path(spec_path).read_text())
    inputs = {k: Path(v) for k, v in spec["inputs"].items()}
    outputs = {k: Path(v) for k, v in spec["outputs"].items()}
    for path in outputs.values():
        path.mkdir(parents=True, exist_ok=True)
    ctx = StageContext.create(spec["config"], inputs, outputs)
    try:
        result = importlib.import_module(f"posttrain.stages.{spec['stage']}").run(ctx)
    finally:
        ctx.cleanup()
    print(json.dumps(result.metrics), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
