"""select_best: pick the release candidate and decide the release gate.

Candidates are sft, every preference chunk of every sweep branch and the
soup. The best has the highest objective (the mean of `select.objective`'s
metrics); ties go to the lower KL to the SFT model, then to shorter answers.
The gate passes when the selected checkpoint's objective is at least
`select.gate_margin` above the SFT checkpoint's; otherwise nothing is
published and the report says why.
"""

from __future__ import annotations

import math

from posttrain import chunk_curves
from posttrain.datasets_io import read_records, write_records
from posttrain.eval import vibe
from posttrain.models import ModelRef, write_model_ref
from posttrain.recipe import SelectConfig
from posttrain.stages.context import StageContext, StageResult
from posttrain.stages.evaluate import results_table

NOT_CANDIDATES = ("base", "midtrain")


class SelectionError(ValueError):
    pass


def objective(row: dict, names: list[str]) -> float:
    """The mean of the objective's metrics for one scoreboard row."""
    missing = [n for n in names if n not in row["metrics"]]
    if missing:
        raise SelectionError(f"select.objective: {missing[0]!r} was not measured for {row['label']}; "
                             f"allowed: {', '.join(sorted(row['metrics']))}")
    return sum(row["metrics"][n] for n in names) / len(names)


def response_tokens(metrics: dict) -> float:
    """Mean answer length (IFEval's, in the first reasoning mode measured)."""
    return next((v for k, v in sorted(metrics.items()) if k.startswith("ifeval.mean_response_tokens")), 0.0)


def kl(row: dict) -> float:
    """KL to the SFT model: 0 for sft itself; unknown counts as the worst."""
    return 0.0 if row["label"] == "sft" else row["metrics"].get("kl.seq_mean", math.inf)


def ranked(board: list[dict], names: list[str]) -> list[dict]:
    """Candidates, best first: objective, then lower KL to SFT, then shorter answers."""
    candidates = [r for r in board if r["label"] not in NOT_CANDIDATES]
    if not candidates:
        raise SelectionError("select_best: no trained checkpoint was evaluated")
    return sorted(candidates, key=lambda r: (-objective(r, names), kl(r), response_tokens(r["metrics"])))


def choose(board: list[dict], cfg: SelectConfig) -> tuple[dict, dict, bool]:
    """(best candidate, the sft row, gate passed)."""
    order = ranked(board, cfg.objective)
    sft = next((r for r in board if r["label"] == "sft"), None)
    if sft is None:
        raise SelectionError("select_best: the SFT checkpoint was not evaluated; the release gate compares against it")
    best = order[0]
    passed = objective(best, cfg.objective) - objective(sft, cfg.objective) >= cfg.gate_margin - 1e-12
    return best, sft, passed


def candidates_table(board: list[dict], cfg: SelectConfig, selected: str) -> str:
    """Markdown: every candidate, best first, with what the choice looked at."""
    sft_value = objective(next(r for r in board if r["label"] == "sft"), cfg.objective)
    metric_cols = cfg.objective if len(cfg.objective) > 1 else []
    head = ["rank", "checkpoint", "objective", "vs sft", *metric_cols, "KL to sft", "answer tokens"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * 1 + "---|" + "---:|" * (len(head) - 2)]
    for i, row in enumerate(ranked(board, cfg.objective), 1):
        value = objective(row, cfg.objective)
        name = f"**{row['label']}** (selected)" if row["label"] == selected else row["label"]
        kl_text = "–" if math.isinf(kl(row)) else f"{kl(row):.3f}"
        cells = [str(i), name, f"{value:.3f}", f"{value - sft_value:+.3f}", *(f"{row['metrics'][m]:.3f}" for m in metric_cols),
                 kl_text, f"{response_tokens(row['metrics']):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def gate_text(best: dict, sft: dict, passed: bool, cfg: SelectConfig) -> str:
    b, s = objective(best, cfg.objective), objective(sft, cfg.objective)
    rule = f"the selected checkpoint's objective must be at least {cfg.gate_margin:+.3f} above sft's"
    if passed:
        return f"Release gate **passed**: {best['label']} {b:.3f} vs sft {s:.3f} ({b - s:+.3f}; {rule}); publish runs.\n"
    return (f"Release gate **NOT PASSED**: {best['label']} {b:.3f} vs sft {s:.3f} ({b - s:+.3f}; {rule}). "
            "Nothing is published.\n")


def curve_rows(board: list[dict]) -> list[dict]:
    """Scoreboard rows with the training metrics from each model card folded into their metrics."""
    return [{**r, "metrics": {**r.get("train", {}), **r["metrics"]}} for r in board]


def run(ctx: StageContext) -> StageResult:
    cfg = SelectConfig.model_validate(ctx.config["select"])
    board = read_records(ctx.inputs["scoreboard"])
    best, sft, passed = choose(board, cfg)
    write_model_ref(ctx.outputs["model"], ModelRef(**best["model"]))

    series = chunk_curves.chunk_series(curve_rows(board))
    values = {r["label"]: objective(r, cfg.objective) for r in board if r["label"] not in NOT_CANDIDATES}
    png = chunk_curves.plot_png(series, values)
    ctx.outputs["curves_png"].write_bytes(png)
    title = f"Preference chunks: {ctx.config['recipe']}"
    ctx.outputs["curves"].write_text(chunk_curves.curves_html(series, png, title, objective=values))

    objective_text = " + ".join(f"`{m}`" for m in cfg.objective)
    ctx.outputs["report"].write_text(
        f"## Release\n\n{gate_text(best, sft, passed, cfg)}\n"
        f"Selected **{best['label']}** (`{best['model']['uri']}`) by the objective: mean of {objective_text}; "
        "ties: lower KL to sft, then shorter answers.\n\n"
        f"## Candidates\n\n{candidates_table(board, cfg, best['label'])}\n"
        f"## Results\n\n{results_table(board, selected=best['label'])}\n"
        f"## Preference chunks\n\n{chunk_curves.curves_markdown(series, objective=values)}\n"
    )
    ctx.outputs["vibe"].write_text(vibe.page(board, f"Vibe test: {ctx.config['recipe']}, every evaluated checkpoint"))
    write_records(ctx.outputs["results"], board, {"selected": best["label"], "gate_passed": passed, "objective": cfg.objective})
    return StageResult(
        metrics={"selected.objective": objective(best, cfg.objective), "sft.objective": objective(sft, cfg.objective),
                 "gate_passed": float(passed), **{"selected." + k: v for k, v in best["metrics"].items()}},
        metadata={"model": {**best["model"], "label": best["label"]}},
        params={"passed": passed, "selected": best["label"]},
    )
