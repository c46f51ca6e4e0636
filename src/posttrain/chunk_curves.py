"""Per-chunk curves of iterative preference training: the training rewards,
the drift from SFT, the answer length and the selection objective after each
chunk, one line per sweep branch, as a PNG, an HTML page and a Markdown table.

The scoreboard labels the chunk checkpoints `chunk-<k>`, or `<variant>/chunk-<k>`
in a sweep; SFT is every branch's chunk 0, so drift and length start from it.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re

CHUNK_LABEL = re.compile(r"^(?:(?P<branch>.+)/)?chunk-(?P<chunk>\d+)$")
LENGTH_PREFIX = "ifeval.mean_response_tokens."
LENGTH = "response tokens"
OBJECTIVE = "objective"
# Table columns and their metric names; the length is whichever IFEval mode comes first.
COLUMNS = [
    ("reward chosen", "train.rewards_chosen"),
    ("reward rejected", "train.rewards_rejected"),
    ("reward margin", "train.reward_margin"),
    ("preference accuracy", "train.reward_accuracy"),
    ("KL to SFT (nats/answer)", "kl.seq_mean"),
    (LENGTH, LENGTH),
]
NO_SWEEP = "policy"  # the display name of the one branch of a run without a sweep

Series = dict[str, list[tuple[int, dict]]]  # branch -> (chunk, metrics) points
Lines = dict[str, list[tuple[int, float | None]]]  # branch -> (chunk, value) points of one panel


def chunk_series(rows: list[dict]) -> Series:
    """Per branch ("" without a sweep), its (chunk, metrics) points in chunk
    order, SFT first as chunk 0. Rows that are not chunks (base, midtrain,
    soup) are left out."""
    branches: dict[str, list[tuple[int, dict]]] = {}
    sft = None
    for row in rows:
        if row["label"] == "sft":
            sft = row["metrics"]
        elif m := CHUNK_LABEL.match(row["label"]):
            branches.setdefault(m["branch"] or "", []).append((int(m["chunk"]), dict(row["metrics"])))
    if sft is not None:
        # SFT is its own reference: its drift is zero by definition when it was not measured.
        start = {"kl.seq_mean": 0.0, **sft}
        if not branches:
            branches[""] = []  # no chunk evaluated yet: the curves still show where they start
        for points in branches.values():
            points.append((0, dict(start)))
    return {b: sorted(points, key=lambda p: p[0]) for b, points in sorted(branches.items())}


def point_label(branch: str, chunk: int) -> str:
    """The scoreboard label of a point (the key of the objective's values)."""
    if chunk == 0:
        return "sft"
    return f"{branch}/chunk-{chunk}" if branch else f"chunk-{chunk}"


def branch_name(branch: str) -> str:
    return branch or NO_SWEEP


def metric(metrics: dict, name: str) -> float | None:
    """A point's value of `name` (LENGTH: the first IFEval mode's), None when missing or NaN."""
    if name == LENGTH:
        value = next((v for k, v in sorted(metrics.items()) if k.startswith(LENGTH_PREFIX)), None)
    else:
        value = metrics.get(name)
    return None if value is None or math.isnan(value) else float(value)


def _cell(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.4g}"


def _table_rows(series: Series, objective: dict[str, float] | None) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the table shared by the HTML and the Markdown, unescaped."""
    header = ["branch", "chunk", *(name for name, _ in COLUMNS)] + ([OBJECTIVE] if objective is not None else [])
    rows = []
    for branch, points in series.items():
        for chunk, metrics in points:
            cells = [_cell(metric(metrics, key)) for _, key in COLUMNS]
            if objective is not None:
                cells.append(_cell(objective.get(point_label(branch, chunk))))
            rows.append([branch_name(branch), str(chunk), *cells])
    return header, rows


def _metric_lines(series: Series, name: str) -> Lines:
    return {b: [(chunk, metric(metrics, name)) for chunk, metrics in points] for b, points in series.items()}


def _objective_lines(series: Series, objective: dict[str, float]) -> Lines:
    return {b: [(chunk, objective.get(point_label(b, chunk))) for chunk, _ in points] for b, points in series.items()}


def _draw(ax, lines: Lines, style: str = "-") -> bool:
    """One line per branch, coloured by the branch's place; False when no branch has a value."""
    drawn = False
    for colour, points in enumerate(lines.values()):
        xy = [(x, y) for x, y in points if y is not None and not math.isnan(y)]
        if xy:
            ax.plot(*zip(*xy), style, marker="o", markersize=3, color=f"C{colour}")
            drawn = True
    return drawn


def plot_png(series: Series, objective: dict[str, float] | None = None) -> bytes:
    """Small multiples (rewards, margin, accuracy, KL to SFT, answer length and,
    when given, the objective by label) against the chunk, one colour per branch."""
    # The object-oriented API with no pyplot: no display, no global figure state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    def rewards(ax) -> bool:
        chosen = _draw(ax, _metric_lines(series, "train.rewards_chosen"))
        rejected = _draw(ax, _metric_lines(series, "train.rewards_rejected"), "--")
        return chosen or rejected

    panels = [
        ("rewards: chosen (solid), rejected (dashed)", rewards),
        ("reward margin", lambda ax: _draw(ax, _metric_lines(series, "train.reward_margin"))),
        ("preference accuracy", lambda ax: _draw(ax, _metric_lines(series, "train.reward_accuracy"))),
        ("KL to SFT (nats per answer)", lambda ax: _draw(ax, _metric_lines(series, "kl.seq_mean"))),
        ("mean response tokens", lambda ax: _draw(ax, _metric_lines(series, LENGTH))),
    ]
    if objective is not None:
        panels.append(("selection objective", lambda ax: _draw(ax, _objective_lines(series, objective))))
    columns = 3
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(4 * columns, 3 * rows + 0.6), layout="constrained")
    FigureCanvasAgg(figure)  # Agg renders the PNG whatever backend matplotlib would pick
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    chunks = [chunk for points in series.values() for chunk, _ in points]
    for ax, (title, draw) in zip(axes, panels):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("chunk", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if chunks:  # the same chunk axis on every panel, whichever chunks it has values for
            ax.set_xlim(min(chunks) - 0.25, max(chunks) + 0.25)
        if not draw(ax):
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="grey")
            ax.set_yticks([])
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=f"C{i}", marker="o", markersize=3) for i in range(len(series))]
    if handles:
        figure.legend(handles, [branch_name(b) for b in series], loc="outside lower center", ncols=min(len(handles), 4), fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def curves_html(series: Series, png: bytes, title: str, *, objective: dict[str, float] | None = None) -> str:
    """A self-contained page: the curves as an embedded image and their table."""
    header, rows = _table_rows(series, objective)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    image = base64.b64encode(png).decode("ascii")
    style = "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em}td{text-align:right}"
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title><style>{style}</style></head>"
            f"<body><h1>{html.escape(title)}</h1><img alt=\"{html.escape(title)}\" src=\"data:image/png;base64,{image}\">"
            f"<p>Chunk 0 is the SFT model; – marks a value not measured.</p><table><tr>{head}</tr>{body}</table></body></html>\n")


def curves_markdown(series: Series, *, objective: dict[str, float] | None = None) -> str:
    """The curves' table in Markdown (chunk 0 is the SFT model)."""
    header, rows = _table_rows(series, objective)
    lines = ["| " + " | ".join(header) + " |", "|---|---:|" + "---:|" * (len(header) - 2)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
