"""Resume benchmark: kill -9 a training stage at a random step after its first
checkpoint, restart it, and measure

- steps recomputed = last step finished before the kill - step resumed from
  (goal: at most the save interval),
- time from restart to the first resumed training step, as a ratio to a fresh
  start's time to its first step (both include process start and model load).

Runs the `tiny` profile's sft stage on CPU with real processes:
    python bench/resume.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _report import report  # noqa: E402
from conftest import write_tokenized  # noqa: E402  (the tokenize stage on raw rows)

from posttrain.dag import stage_configs
from posttrain.datasets_io import read_jsonl
from posttrain.models import ModelRef, write_model_ref
from posttrain.recipe import apply_overrides, load_recipe

ROOT = Path(__file__).resolve().parents[1]
STEPS, SAVE_EVERY = 24, 4
LOSS_LINE = re.compile(r"'loss'")


def make_run(base: Path, name: str) -> tuple[list[str], dict]:
    recipe = apply_overrides(
        load_recipe(ROOT / "pipelines/smollm3.yaml", "tiny"),
        [f"sft.max_steps={STEPS}", f"sft.save_steps={SAVE_EVERY}", "sft.per_device_batch_size=1"],
    )
    run = base / name
    run.mkdir(parents=True)
    write_model_ref(run / "policy", ModelRef(uri="local:tiny"))
    tokenized = write_tokenized(run / "data", read_jsonl(ROOT / "data/local/sft.jsonl")[:64], recipe)
    spec = {"stage": "sft", "config": stage_configs(recipe)["sft"], "inputs": {"policy": str(run / "policy"), "tokenized": str(tokenized)},
            "outputs": {"model": str(run / "out")}}
    (run / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "POSTTRAIN_STORE": f"file://{run / 'store'}", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.setdefault("POSTTRAIN_CACHE", str(ROOT / ".cache"))
    env.pop("POSTTRAIN_LOG_DIR", None)
    return [sys.executable, "-m", "posttrain.stages", str(run / "spec.json")], env


def time_to_first_step(cmd: list[str], env: dict) -> tuple[float, str]:
    """Seconds from process start to its first logged training step; runs to the end."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = None
    for line in proc.stdout:
        if first is None and LOSS_LINE.search(line):
            first = time.monotonic() - start
    err = proc.stderr.read()
    assert proc.wait() == 0, err[-3000:]
    return first, err


def kill_and_resume(base: Path, name: str, rng: random.Random) -> dict:
    cmd, env = make_run(base, name)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    steps_done, uploaded = 0, False
    kill_after = None
    for line in proc.stdout:
        if LOSS_LINE.search(line):
            steps_done += 1
        if "checkpoint uploaded" in line and not uploaded:
            uploaded = True
            kill_after = steps_done + rng.randint(1, SAVE_EVERY + 1)
        if kill_after is not None and steps_done >= kill_after:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    seconds, err = time_to_first_step(cmd, env)
    resumed = int(re.search(r"resuming from \S+checkpoint-(\d+)", err).group(1))
    return {"killed_after_step": steps_done, "resumed_from": resumed, "recomputed": steps_done - resumed, "restart_to_first_step_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
        base = Path(tmp)
        fresh = [time_to_first_step(*make_run(base, f"fresh-{i}"))[0] for i in range(args.repeats)]
        kills = [kill_and_resume(base, f"kill-{i}", rng) for i in range(args.repeats)]
    resumed = [k["restart_to_first_step_s"] for k in kills]
    recomputed = [k["recomputed"] for k in kills]
    print(f"tiny sft, {STEPS} steps, save every {SAVE_EVERY}, {args.repeats} runs each, CPU")
    print("| measure | median | spread | goal |")
    print("|---|---:|---|---|")
    print(f"| steps recomputed after kill -9 | {statistics.median(recomputed)} | {min(recomputed)}–{max(recomputed)} | ≤ {SAVE_EVERY} (save interval) |")
    print(f"| restart → first resumed step (s) | {statistics.median(resumed):.1f} | {min(resumed):.1f}–{max(resumed):.1f} | |")
    print(f"| fresh start → first step (s) | {statistics.median(fresh):.1f} | {min(fresh):.1f}–{max(fresh):.1f} | |")
    print(f"| ratio resumed / fresh | {statistics.median(resumed) / statistics.median(fresh):.2f} | | ≈ 1 (resume adds little) |")
    print("raw:", json.dumps(kills))
    setup = f"the `tiny` profile's sft stage as a real process on CPU, {STEPS} steps, a checkpoint every {SAVE_EVERY}, killed (-9) at a random step"
    for kill, fresh_s in zip(kills, fresh):
        report("resume: steps recomputed after kill -9", "steps redone after the restart (A) vs the save interval (B); value: A/B",
               kill["recomputed"], SAVE_EVERY, unit="steps", goal=("<=", 1.0), setup=setup,
               limits="a kill just before a save loses up to one save interval of steps")
        report("resume: time to first resumed step", "restart → first resumed step (A) vs fresh start → first step (B)",
               kill["restart_to_first_step_s"], fresh_s, unit="s", setup=setup)
    if max(recomputed) > SAVE_EVERY:
        sys.exit(f"goal missed: up to {max(recomputed)} steps recomputed, save interval {SAVE_EVERY}")


if __name__ == "__main__":
    main()
