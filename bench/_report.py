"""What a benchmark hands to `make bench` (bench/run_all.py): one JSON line per
row and run, appended to the file named by POSTTRAIN_BENCH_JSON. A script run
by hand (no such variable) only prints its own table.

A row compares two figures measured side by side in one run, A and B, and
their ratio A/B (or, for a count against a bound, the count and the bound).
The collector pools every run's samples of a row and quotes the median and
the spread, so a script reports each repeat as its own sample.
"""

from __future__ import annotations

import json
import os

BENCH_JSON_ENV = "POSTTRAIN_BENCH_JSON"


def report(name: str, compared: str, a: float, b: float, *, unit: str, ratio: float | None = None, ratio_unit: str = "",
           goal: tuple[str, float] | None = None, setup: str = "", limits: str = "") -> None:
    """One sample of row `name`. `ratio` defaults to a / b; a row whose value is
    not A/B (a share, a count) passes it and says so in `compared`. `goal` is
    (">=" or "<=", value) on it; `limits` says what caps the figure, shown when
    the goal is missed."""
    path = os.environ.get(BENCH_JSON_ENV)
    if not path:
        return
    row = {"name": name, "compared": compared, "a": a, "b": b, "unit": unit,
           "ratio": ratio if ratio is not None else a / b, "ratio_unit": ratio_unit, "goal": list(goal) if goal else None, "setup": setup, "limits": limits}
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
