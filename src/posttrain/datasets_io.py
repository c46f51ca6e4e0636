"""Small artifacts read whole, as JSON lines: scoreboards, eval samples,
selection results (`data.jsonl` + `dataset.json`). Datasets that grow with
the data (training rows, prompts, pairs) are Arrow shards: posttrain.data.artifacts."""

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


def write_records(out_dir: Path, rows: Iterable[dict], info: dict) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(out_dir / DATA_FILE, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    (out_dir / INFO_FILE).write_text(json.dumps({**info, "rows": n}, indent=1, sort_keys=True))
    return n


def read_records(in_dir: Path) -> list[dict]:
    return read_jsonl(in_dir / DATA_FILE)
