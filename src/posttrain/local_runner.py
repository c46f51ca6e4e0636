"""Run a recipe's DAG on this machine through KFP's own local runner.

Everything a run writes goes under runs/<recipe>-<timestamp>/: the KFP
pipeline root, checkpoints, TensorBoard logs, report.md, vibe.html,
curves.html and curves.png (per-chunk training and eval curves) and each
chunk's prefgen-<k>-samples.html. KFP's local cache
lives in runs/.kfp-cache so that a second run reuses unchanged tasks.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from posttrain.recipe import Recipe
from posttrain.stages.context import LOG_DIR_ENV, STORE_ENV


@dataclass
class LocalRun:
    run_dir: Path
    report: str
    seconds: float


def _preference_data(run_dir: Path) -> str:
    """Each chunk's pair statistics (for report.md), with its page of sample
    pairs copied next to the report: prefgen-<k>-samples.html, or for a chunk
    generated inside sweep branch i, prefgen-b<i>-<k>-samples.html."""
    sections = []
    for stats in sorted(run_dir.glob("kfp/*/**/prefgen*/stats"), key=lambda p: (str(p.parent.parent), len(p.parent.name), p.parent.name)):
        chunk = stats.parent.name.removeprefix("prefgen").lstrip("-") or "1"
        branch = stats.parent.parent.name.rsplit("-iteration-", 1)[1] if "-iteration-" in stats.parent.parent.name else None
        name = f"prefgen-b{branch}-{chunk}" if branch is not None else f"prefgen-{chunk}"
        samples = stats.parent / "samples"
        if samples.is_file():
            shutil.copyfile(samples, run_dir / f"{name}-samples.html")
        text = stats.read_text()
        if branch is not None:
            text = text.replace(f"# Preference pairs, chunk {chunk}", f"# Preference pairs, chunk {chunk} (sweep branch {branch})", 1)
        # One heading level down: the chunk sections sit under the run's report.
        sections.append(text.replace("\n#", "\n##").replace("# Preference pairs", "## Preference pairs", 1))
    return "\n".join(sections)


def _new_run_dir(runs_root: Path, name: str) -> Path:
    """A fresh folder; a run started in the same second as another (a fully
    cached rerun takes about that) gets a -2, -3, ... suffix."""
    runs_root.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = (runs_root / (name if n == 1 else f"{name}-{n}")).resolve()
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"{runs_root}: no free run folder name for {name}")


def run_local(recipe: Recipe, runs_root: Path, *, caching: bool = True) -> LocalRun:
    from kfp import local

    from posttrain.dag import build_pipeline
    from posttrain.local_models import prepare

    if recipe.base_model.uri.startswith("local:"):
        prepare(recipe.base_model.uri.removeprefix("local:"))  # once; cached afterwards

    run_dir = _new_run_dir(runs_root, f"{recipe.name}-{recipe.profile}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.environ.update(
        {
            STORE_ENV: f"file://{run_dir / 'checkpoints'}",
            LOG_DIR_ENV: str(run_dir / "tensorboard"),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(run_dir / "kfp"),
        enable_caching=caching,
        cache_root=str(runs_root.resolve() / ".kfp-cache"),
    )
    started = time.monotonic()
    outputs = build_pipeline(recipe, cluster=False)()
    seconds = time.monotonic() - started
    results = Path(outputs.outputs["report"].path).read_text()
    stats = Path(outputs.outputs["stats"].path).read_text()
    shutil.copyfile(outputs.outputs["vibe"].path, run_dir / "vibe.html")
    shutil.copyfile(outputs.outputs["curves"].path, run_dir / "curves.html")
    png = Path(outputs.outputs["curves"].path).with_name("curves_png")
    if png.is_file():
        shutil.copyfile(png, run_dir / "curves.png")
        results += "\n![Per-chunk curves](curves.png)\n"
    report = f"# {recipe.name} ({recipe.profile})\n\nRun folder: `{run_dir}`\n\n{results}\n{stats}\n{_preference_data(run_dir)}"
    (run_dir / "report.md").write_text(report)
    return LocalRun(run_dir=run_dir, report=results, seconds=seconds)
