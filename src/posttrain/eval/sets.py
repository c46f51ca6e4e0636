"""Where each eval suite's rows come from: the recipe's data source, or the
set shipped with posttrain (src/posttrain/eval/data/), so the suites run the
same on a laptop and in a pod."""

from __future__ import annotations

from pathlib import Path

from posttrain.data.sources import read_rows
from posttrain.datasets_io import read_jsonl

SHIPPED = Path(__file__).resolve().parent / "data"
# Suite -> (recipe field with its data source, file shipped with posttrain).
SOURCES = {
    "ifeval": ("ifeval_data", None),
    "math": ("math_data", "math.jsonl"),
    "thinkfollow": ("thinkfollow_data", "thinkfollow_turns.jsonl"),
    "persona": ("persona_data", "personas.jsonl"),
    "vibe": ("vibe_data", "vibe_probes.jsonl"),
}


def entry(suite: str, eval_config: dict) -> dict:
    """A JSON-able reference to a suite's rows: a recipe data source, or {name, shipped: file}."""
    field, shipped = SOURCES[suite]
    source = eval_config.get(field)
    return source if source else {"name": suite, "shipped": shipped}


def load(ref: dict, limit: int | None = None) -> list[dict]:
    rows = read_jsonl(SHIPPED / ref["shipped"]) if ref.get("shipped") else read_rows(ref)
    return rows[:limit] if limit else rows
