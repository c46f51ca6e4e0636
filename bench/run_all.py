"""`make bench`: run every benchmark in bench/, several times where a script
measures one sample per run, and write BENCHMARKS.md: one table of ratios
measured side by side (median over the samples, spread min–max), the goal
and whether it is met, what limits a missed goal, the machine, the library
versions and the date. Each script's full output goes to build/bench/<script>.log
and every sample to build/bench/rows.jsonl.

    python bench/run_all.py [--only NAME ...] [--quick] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import BENCH_JSON_ENV  # noqa: E402 - bench/ is not a package

# (script, arguments, invocations, quick arguments): scripts that take one
# sample per invocation are invoked several times; the others repeat inside.
SCRIPTS = [
    ("sft_packing.py", ["--repeats", "3"], 1, ["--repeats", "1", "--conversations", "32"]),
    # The efficiency row needs a real model (tiny spends its time in the LM head); one thread steadies it.
    ("sft_packing.py", ["--model", "smollm2-135m-instruct", "--repeats", "2", "--threads", "1"], 1,
     ["--model", "smollm2-135m-instruct", "--repeats", "1", "--conversations", "16", "--threads", "1"]),
    ("generation.py", [], 3, ["--prompts", "8", "--max-new-tokens", "16"]),
    ("preference.py", ["--checkpointing", "off"], 3, ["--checkpointing", "off", "--pairs", "16", "--epochs", "1"]),
    ("resume.py", ["--repeats", "3"], 1, ["--repeats", "1"]),
    ("orchestration.py", ["--repeats", "3"], 1, ["--repeats", "1"]),
    # One sample: the default sizes (16, 64, 256 MB of JSONL) take ~16 min on a 2-CPU machine.
    ("data_scale.py", [], 1, ["--quick"]),
    ("sft_gpu.py", [], 1, []),
]
VERSIONED = ["torch", "transformers", "trl", "accelerate", "peft", "datasets", "kfp", "deepspeed", "liger-kernel", "vllm"]


def machine() -> str:
    cpu, mem = platform.processor() or platform.machine(), ""
    if Path("/proc/cpuinfo").exists():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    if Path("/proc/meminfo").exists():
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f", {kib / 2**20:.0f} GiB memory"
    return f"{cpu}, {os.cpu_count()} CPUs{mem}, {platform.system()} {platform.release()}"


def gpu() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except ImportError:
        return None


def versions() -> str:
    out = [f"python {platform.python_version()}"]
    for name in VERSIONED:
        try:
            out.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(out)


def git_sha() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_script(script: str, label: str, args: list[str], invocations: int, rows_file: Path, log_dir: Path) -> tuple[bool, float]:
    """Run one script `invocations` times; its rows are appended to rows_file."""
    log = log_dir / f"{label}.log"
    start = time.monotonic()
    ok = True
    with log.open("w") as out:
        for i in range(invocations):
            print(f"== {script} {' '.join(args)} ({i + 1}/{invocations})", flush=True)
            out.write(f"== run {i + 1}/{invocations}: {script} {' '.join(args)}\n")
            out.flush()
            env = {**os.environ, BENCH_JSON_ENV: str(rows_file)}
            done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                print(f"   {script} failed (exit {done.returncode}): see {log.relative_to(ROOT)}", flush=True)
                ok = False
                break
    return ok, time.monotonic() - start


def pooled(rows: list[dict]) -> list[dict]:
    """Rows of one name pooled across samples, in first-seen order."""
    by_name: dict[str, list[dict]] = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append(row)
    out = []
    for name, samples in by_name.items():
        last = samples[-1]
        ratios = [s["ratio"] for s in samples]
        ratio = statistics.median(ratios)
        goal = last["goal"]
        met = None if goal is None else (ratio >= goal[1] if goal[0] == ">=" else ratio <= goal[1])
        out.append({**last, "name": name, "n": len(samples), "ratio": ratio, "lo": min(ratios), "hi": max(ratios),
                    "a": statistics.median(s["a"] for s in samples), "b": statistics.median(s["b"] for s in samples), "met": met})
    return out


def fmt(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value:.1%}"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{text} {unit}".strip()


def table(rows: list[dict]) -> str:
    lines = ["| benchmark | what is compared (A vs B) | A | B | ratio A/B (or the value named): median (spread) | samples | goal | met? |",
             "|---|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        # A share (ratio_unit "%") prints as a percentage, goal included.
        pct = r.get("ratio_unit") == "%"
        num = "{:.1%}" if pct else "{:.2f}"
        goal = "info"
        if r["goal"]:
            goal = f"{'≥' if r['goal'][0] == '>=' else '≤'} {format(r['goal'][1], '.0%' if pct else 'g')}"
        spread = f"{num.format(r['lo'])}–{num.format(r['hi'])}" if r["n"] > 1 else "one sample"
        met = {True: "yes", False: "**no**", None: "–"}[r["met"]]
        lines.append(f"| {r['name']} | {r['compared']} | {fmt(r['a'], r['unit'])} | {fmt(r['b'], r['unit'])} | "
                     f"**{num.format(r['ratio'])}** ({spread}) | {r['n']} | {goal} | {met} |")
    return "\n".join(lines)


def document(rows: list[dict], failures: list[str], seconds: dict[str, float], quick: bool) -> str:
    missed = [r for r in rows if r["met"] is False]
    device = gpu()
    parts = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`bench/run_all.py`); do not edit by hand. Every row is a ratio of two figures "
        "measured side by side in one run on the machine below; the median over all samples is quoted and the spread "
        "(min–max) shown. A and B are the medians of each side.",
        "",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, commit {git_sha()}" + (" — **quick mode: fewer, shorter runs**" if quick else ""),
        f"- machine: {machine()}; GPU: {device or 'none'}",
        f"- libraries: {versions()}",
        f"- time per script: {', '.join(f'{k} {v / 60:.1f} min' for k, v in seconds.items())}",
        "",
        table(rows),
        "",
    ]
    if failures:
        parts += ["**Failed** (no rows): " + ", ".join(failures) + " — see build/bench/*.log.", ""]
    if missed:
        parts += ["## Goals missed, and what limits them", ""]
        parts += [f"- **{r['name']}** ({r['ratio']:.2f} vs goal {r['goal'][1]:g}): {r['limits'] or 'not analysed'}" for r in missed]
        parts.append("")
    parts += ["## Setups", ""] + [f"- **{r['name']}**: {r['setup']}" for r in rows if r["setup"]] + [""]
    if not device:
        parts += ["## GPU", "",
                  "No GPU on the machine that ran this: the GPU rows (SFT tokens/s and MFU with FlashAttention-2 + Liger + "
                  "packing vs TRL defaults, `bench/sft_gpu.py`; preference training; vLLM vs HF generation, the GPU section of "
                  "`bench/generation.py`) were not measured here. On a CUDA machine `make bench` runs them and they join the table.", ""]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="script names (e.g. generation orchestration)")
    parser.add_argument("--quick", action="store_true", help="one short run of each (a smoke test of the machinery, not figures)")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    opts = parser.parse_args()
    log_dir = ROOT / "build" / "bench"
    log_dir.mkdir(parents=True, exist_ok=True)
    failures, seconds = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-rows-") as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        rows_file.touch()
        for script, args, invocations, quick_args in SCRIPTS:
            if opts.only and Path(script).stem not in opts.only:
                continue
            label = Path(script).stem + ("" if "--model" not in args else "-" + args[args.index("--model") + 1])
            ok, secs = run_script(script, label, quick_args if opts.quick else args, 1 if opts.quick else invocations, rows_file, log_dir)
            seconds[label] = secs
            if not ok:
                failures.append(script)
        rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
    # Every sample, kept for inspection beside the scripts' logs.
    (log_dir / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = Path(opts.out)
    out.write_text(document(pooled(rows), failures, seconds, opts.quick))
    print(f"wrote {out} ({len(pooled(rows))} rows)")
    if failures:
        sys.exit(f"benchmarks failed: {', '.join(failures)}")


if __name__ == "__main__":
    main()
