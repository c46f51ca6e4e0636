"""merge_boards: the sweep branches' scoreboards as one. Every branch
carries the rows from before the sweep (base, midtrain, sft): kept once."""

from __future__ import annotations

from posttrain.datasets_io import read_records, write_records
from posttrain.stages.context import StageContext, StageResult


def merge(boards: list[list[dict]]) -> list[dict]:
    rows, seen = [], set()
    for board in boards:
        for row in board:
            if row["label"] not in seen:
                seen.add(row["label"])
                rows.append(row)
    return rows


def run(ctx: StageContext) -> StageResult:
    names = sorted(ctx.inputs, key=lambda n: int(n.rsplit("-", 1)[-1]))
    board = merge([read_records(ctx.inputs[n]) for n in names])
    write_records(ctx.outputs["scoreboard"], board, {"labels": [r["label"] for r in board]})
    return StageResult(metrics={"merge.rows": float(len(board))})
