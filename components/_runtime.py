"""The one place where KFP artifacts become a stage context and back.

Model and Dataset artifacts are directories; Markdown and HTML artifacts are
single files; a Metrics output receives the stage's metrics. No ML here: where
the stage runs (here, or re-launched on every GPU) is posttrain.launch's call.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

DIRECTORY_ARTIFACTS = ("system.Model", "system.Dataset")
STAGE_TIMES_ENV = "POSTTRAIN_STAGE_TIMES"


def with_variant(config: dict, variant: str) -> dict:
    """A sweep branch's task: its loop item (JSON {"name", section: {field:
    value}}) overrides fields of the sections the task's config has, and its
    name is recorded as `variant`."""
    if not variant:
        return config
    item = json.loads(variant)
    out = {**config, "variant": item["name"]}
    for section, fields in item.items():
        if section != "name" and section in out:
            out[section] = {**out[section], **fields}
    return out


def _record_stage_time(stage: str, seconds: float) -> None:
    """The stage's own time, for bench/orchestration.py (which names the file)."""
    path = os.environ.get(STAGE_TIMES_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"stage": stage, "seconds": seconds}) + "\n")


def run_stage(stage: str, config: str, inputs: dict, outputs: dict, variant: str = ""):
    from posttrain.launch import execute

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    metrics = outputs.pop("metrics", None)
    out_paths = {}
    for name, artifact in outputs.items():
        path = Path(artifact.path)
        (path if artifact.schema_title in DIRECTORY_ARTIFACTS else path.parent).mkdir(parents=True, exist_ok=True)
        out_paths[name] = path
    # In this process, or (a training stage on several GPUs) once per GPU
    # under `accelerate launch`: posttrain/launch.py decides.
    started = time.perf_counter()
    result = execute(stage, with_variant(json.loads(config), variant), {k: Path(a.path) for k, a in inputs.items()}, out_paths)
    _record_stage_time(stage, time.perf_counter() - started)
    for name, meta in result.metadata.items():
        outputs[name].metadata.update(meta)
    if metrics is not None:
        metrics.metadata.update(result.metadata.get("metrics", {}))
        for name, value in result.metrics.items():
            metrics.log_metric(name, value)
        # A file at the artifact's path too: KFP's local cache treats an
        # artifact without one as missing and would never reuse the task.
        Path(metrics.path).parent.mkdir(parents=True, exist_ok=True)
        Path(metrics.path).write_text(json.dumps(result.metrics, indent=1, sort_keys=True))
    return result
