"""make bench's collector: samples pooled per row (median, spread, goal met),
the table and the missed-goal notes. No timing here: the figures are made up."""

import importlib.util
import json
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
_spec = importlib.util.spec_from_file_location("run_all", ROOT / "bench" / "run_all.py")
run_all = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_all)
import _report  # noqa: E402


def _rows(tmp_path, monkeypatch, samples):
    path = tmp_path / "rows.jsonl"
    monkeypatch.setenv(_report.BENCH_JSON_ENV, str(path))
    for kwargs in samples:
        _report.report(**kwargs)
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_samples_pool_into_median_and_spread(tmp_path, monkeypatch):
    speed = {"name": "speed", "compared": "A vs B", "unit": "tok/s", "goal": (">=", 3.0), "limits": "padding caps it"}
    rows = _rows(tmp_path, monkeypatch, [{**speed, "a": a, "b": 100.0} for a in (150.0, 180.0, 170.0)])
    (row,) = run_all.pooled(rows)
    assert (row["n"], row["ratio"], row["lo"], row["hi"], row["a"], row["met"]) == (3, 1.7, 1.5, 1.8, 170.0, False)
    doc = run_all.document([row], [], {"x": 60.0}, quick=False)
    assert "| speed | A vs B | 170 tok/s | 100 tok/s | **1.70** (1.50–1.80) | 3 | ≥ 3 | **no** |" in doc
    assert "- **speed** (1.70 vs goal 3): padding caps it" in doc


def test_a_bound_goal_and_a_value_that_is_not_a_ratio(tmp_path, monkeypatch):
    rows = _rows(tmp_path, monkeypatch, [
        {"name": "overhead", "compared": "wall vs stages", "a": 105.0, "b": 100.0, "unit": "s", "goal": ("<=", 1.10)},
        {"name": "padding", "compared": "value: A", "a": 0.0, "b": 0.4, "unit": "%", "ratio": 0.0, "ratio_unit": "%", "goal": ("<=", 0.05)},
        {"name": "info", "compared": "x", "a": 2.0, "b": 1.0, "unit": "s"},
    ])
    by_name = {r["name"]: r for r in run_all.pooled(rows)}
    assert by_name["overhead"]["met"] is True and by_name["padding"]["met"] is True and by_name["info"]["met"] is None
    table = run_all.table(list(by_name.values()))
    assert "| padding | value: A | 0.0% | 40.0% | **0.0%** (one sample) | 1 | ≤ 5% | yes |" in table
    assert "| info | x | 2 s | 1 s | **2.00** (one sample) | 1 | info | – |" in table


def test_without_the_collector_a_script_only_prints(tmp_path, monkeypatch):
    monkeypatch.delenv(_report.BENCH_JSON_ENV, raising=False)
    _report.report("x", "y", 1.0, 1.0, unit="s")  # no file, no error
    assert list(tmp_path.iterdir()) == []
