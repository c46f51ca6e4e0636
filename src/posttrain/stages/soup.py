"""soup: a uniform weight average of the `select.soup.top_k` best preference
checkpoints (by the selection objective), saved as one more model to
evaluate. Checkpoints of one run share the architecture and the tokenizer;
weights are averaged one safetensors file at a time in float32, so memory
holds one shard per ingredient, not whole models."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from posttrain.datasets_io import read_records
from posttrain.models import ModelRef, write_model_ref
from posttrain.recipe import SelectConfig
from posttrain.stages.context import StageContext, StageResult
from posttrain.stages.select_best import ranked
from posttrain.stages.training import existing_final, load_tokenizer, materialize_shared, publish_final

log = logging.getLogger(__name__)


class SoupError(ValueError):
    pass


def weight_files(model_dir: Path) -> list[str]:
    files = sorted(p.name for p in model_dir.glob("*.safetensors"))
    if not files:
        raise SoupError(f"{model_dir}: no safetensors weights to average")
    return files


def average(dirs: list[Path], out: Path) -> None:
    """Average the weights of `dirs` into `out` (config, tokenizer and card files from the first)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    files = weight_files(dirs[0])
    for d in dirs[1:]:
        if weight_files(d) != files:
            raise SoupError(f"{d}: weight files {weight_files(d)} differ from {dirs[0]}'s {files}: not the same architecture")
    out.mkdir(parents=True, exist_ok=True)
    for path in dirs[0].iterdir():
        if path.is_file() and path.suffix != ".safetensors":
            shutil.copyfile(path, out / path.name)
    for name in files:
        handles = [safe_open(d / name, "pt") for d in dirs]
        averaged = {}
        for key in handles[0].keys():
            first = handles[0].get_tensor(key)
            total = first.to(torch.float32)
            for h in handles[1:]:
                total = total + h.get_tensor(key).to(torch.float32)
            averaged[key] = (total / len(handles)).to(first.dtype).contiguous()
        save_file(averaged, out / name, metadata={"format": "pt"})


def run(ctx: StageContext) -> StageResult:
    cfg = SelectConfig.model_validate(ctx.config["select"])
    board = read_records(ctx.inputs["scoreboard"])
    chunks = [r for r in ranked(board, cfg.objective) if "chunk-" in r["label"]]
    picked = chunks[: cfg.soup.top_k]
    if len(picked) < 2:
        raise SoupError(f"select.soup: needs at least 2 preference checkpoints on the scoreboard, found {len(picked)}")
    labels = [r["label"] for r in picked]
    done = existing_final(ctx)
    if done:
        write_model_ref(ctx.outputs["model"], done)
        return StageResult(metrics={"soup.reused_final": 1.0}, metadata={"model": {"uri": done.uri, "soup_of": labels}})
    log.info("soup of %s", ", ".join(labels))
    refs = [ModelRef(**r["model"]) for r in picked]
    dirs = [materialize_shared(ref) for ref in refs]
    local = ctx.workdir / "final"
    average(dirs, local)
    tokenizer = load_tokenizer(dirs[0], ctx.config["chat_template"])
    metrics = {"soup.ingredients": float(len(picked))}
    ref = publish_final(local, tokenizer, ctx, refs[0], {"soup_of": ", ".join(labels)}, metrics)
    write_model_ref(ctx.outputs["model"], ref)
    return StageResult(metrics=metrics, metadata={"model": {"uri": ref.uri, "sha": ref.sha, "soup_of": labels}})
