"""select_best: pick the evaluated checkpoint with the best recipe objective
(ties: shorter answers) and decide the release gate."""

from __future__ import annotations

from posttrain.datasets_io import read_dataset, write_dataset
from posttrain.eval import vibe
from posttrain.models import ModelRef, write_model_ref
from posttrain.recipe import SelectConfig
from posttrain.stages.context import StageContext, StageResult
from posttrain.stages.evaluate import results_table


class SelectionError(ValueError):
    pass


def _response_tokens(metrics: dict) -> float:
    """Mean answer length (IFEval's, in the first reasoning mode measured): ties go to shorter answers."""
    return next((v for k, v in sorted(metrics.items()) if k.startswith("ifeval.mean_response_tokens")), 0.0)


def choose(board: list[dict], cfg: SelectConfig) -> tuple[dict, bool]:
    """(best candidate, gate passed). Candidates are the chat models: sft and
    every preference chunk (base and mid-training are not release candidates)."""
    candidates = [r for r in board if r["label"] not in ("base", "midtrain")]
    if not candidates:
        raise SelectionError("select_best: no trained checkpoint was evaluated")
    if cfg.metric not in candidates[0]["metrics"]:
        raise SelectionError(f"select.metric = {cfg.metric!r}: not an eval metric; allowed: {', '.join(sorted(candidates[0]['metrics']))}")
    best = max(candidates, key=lambda r: (r["metrics"][cfg.metric], -_response_tokens(r["metrics"])))
    sft = next((r for r in board if r["label"] == "sft"), best)
    passed = best["metrics"][cfg.metric] >= sft["metrics"][cfg.metric] - cfg.max_regression_vs_sft
    return best, passed


def run(ctx: StageContext) -> StageResult:
    cfg = SelectConfig.model_validate(ctx.config["select"])
    board = read_dataset(ctx.inputs["scoreboard"])
    best, passed = choose(board, cfg)
    write_model_ref(ctx.outputs["model"], ModelRef(**best["model"]))
    table = results_table(board, selected=best["label"])
    gate = "passed" if passed else "failed"
    ctx.outputs["report"].write_text(
        f"## Results\n\n{table}\nSelected **{best['label']}** (`{best['model']['uri']}`) by `{cfg.metric}`; release gate {gate} "
        f"(may not fall more than {cfg.max_regression_vs_sft} below sft).\n"
    )
    ctx.outputs["vibe"].write_text(vibe.page(board, f"Vibe test: {ctx.config['recipe']}, every evaluated checkpoint"))
    write_dataset(ctx.outputs["results"], board, {"selected": best["label"], "gate_passed": passed, "metric": cfg.metric})
    return StageResult(
        metrics={"selected." + k: v for k, v in best["metrics"].items()},
        metadata={"model": {**best["model"], "label": best["label"]}},
        params={"passed": passed, "selected": best["label"]},
    )
