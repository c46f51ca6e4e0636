"""Reading recipe data sources and writing/reading Dataset artifacts (JSONL)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

DATA_FILE = "data.jsonl"
INFO_FILE = "dataset.json"


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{line_no}: not valid JSON: {e}") from None
    return rows


def load_source(source: dict) -> list[dict]:
    """Rows of one recipe data source (local JSONL or Hub dataset)."""
    if source.get("path"):
        rows = read_jsonl(Path(source["path"]))
    else:
        from datasets import load_dataset

        ds = load_dataset(source["hub"], source.get("subset"), split=source["split"], revision=source["revision"])
        rows = list(ds)
    if source.get("max_examples"):
        rows = rows[: source["max_examples"]]
    return rows


def write_dataset(out_dir: Path, rows: Iterable[dict], info: dict) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(out_dir / DATA_FILE, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    (out_dir / INFO_FILE).write_text(json.dumps({**info, "rows": n}, indent=1, sort_keys=True))
    return n


def read_dataset(in_dir: Path) -> list[dict]:
    return read_jsonl(in_dir / DATA_FILE)
