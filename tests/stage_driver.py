"""Run one stage in this process, as a pod would (used by the restart tests):
python stage_driver.py SPEC.json, where SPEC = {stage, config, inputs, outputs}."""

import importlib
import json
import logging
import sys
from pathlib import Path

from posttrain.stages.context import StageContext

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    spec = json.loads(Path(sys.argv[1]).read_text())
    ctx = StageContext.create(spec["config"], {k: Path(v) for k, v in spec["inputs"].items()}, {k: Path(v) for k, v in spec["outputs"].items()})
    for path in ctx.outputs.values():
        path.mkdir(parents=True, exist_ok=True)
    result = importlib.import_module(f"posttrain.stages.{spec['stage']}").run(ctx)
    print(json.dumps(result.metrics), flush=True)
