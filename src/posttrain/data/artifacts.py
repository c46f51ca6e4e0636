"""Dataset artifacts: Arrow shards (`datasets` save_to_disk, at most
SHARD_SIZE each) plus `dataset.json` (rows, tokens, resolved source
revisions, per-source tables, and `digest`, the content hash of the shards).
Readers memory-map the shards (`load_from_disk`): a training rank holds one
batch in memory, not the dataset.

Small artifacts that are read whole (scoreboards, eval samples) stay JSON
lines: posttrain.datasets_io."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

INFO_FILE = "dataset.json"
SHARDS = "shards"
SHARD_SIZE = "500MB"


def shards_digest(folder: Path) -> str:
    """Content hash of a saved dataset's Arrow shards, in order."""
    from posttrain.store import sha256_file

    h = hashlib.sha256()
    for f in sorted(folder.glob("*.arrow")):
        h.update(f.name.encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


def save_shards(dataset, folder: Path, num_proc: int | None = None) -> None:
    """`save_to_disk` into a fresh `folder`; the files are byte-identical for
    the same rows (datasets' state.json carries no run-specific fingerprint
    once `_fingerprint` is replaced by the content digest)."""
    if folder.exists():
        shutil.rmtree(folder)
    if len(dataset) == 0:  # one empty shard: datasets writes none otherwise, and cannot load that back
        dataset.save_to_disk(str(folder), num_shards=1)
    else:
        from datasets.utils.py_utils import convert_file_size_to_int

        from posttrain.data.pages import Released

        # As many shards as the size needs (datasets' own rule), whatever the workers, so the
        # files do not depend on num_proc; the workers then write shards side by side.
        shards = min(len(dataset), int(dataset._estimate_nbytes() / convert_file_size_to_int(SHARD_SIZE)) + 1)
        workers = min(num_proc or 1, shards)
        with Released(dataset):  # datasets' pass over the mapped rows
            dataset.save_to_disk(str(folder), num_shards=shards, num_proc=workers if workers > 1 else None)
    state = folder / "state.json"
    data = json.loads(state.read_text())
    data["_fingerprint"] = shards_digest(folder)[:16]
    state.write_text(json.dumps(data, indent=2, sort_keys=True))


def empty(features):
    """A Dataset with no rows and these columns."""
    from datasets import Dataset

    return Dataset.from_dict({k: [] for k in features}, features=features)


def write_dataset(out_dir: Path, rows, info: dict, features=None, num_proc: int | None = None) -> int:
    """Write a Dataset (or a list of row dicts, for small sets and tests) as
    shards under `out_dir` (`num_proc` writers when there are several
    shards), and `dataset.json`. Returns the row count."""
    from datasets import Dataset

    if isinstance(rows, Dataset):
        dataset = rows
    else:
        rows = list(rows)
        dataset = Dataset.from_list(rows, features=features) if rows or features is None else empty(features)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_shards(dataset, out_dir / SHARDS, num_proc)
    n = len(dataset)
    full = {**info, "rows": n, "digest": shards_digest(out_dir / SHARDS)}
    (out_dir / INFO_FILE).write_text(json.dumps(full, indent=1, sort_keys=True))
    return n


def read_dataset(in_dir: Path):
    """The artifact's rows as a memory-mapped Dataset."""
    from datasets import load_from_disk

    folder = in_dir / SHARDS
    if not folder.is_dir():
        raise FileNotFoundError(f"{in_dir}: not a posttrain Dataset artifact (no {SHARDS}/ folder)")
    return load_from_disk(str(folder))


def read_info(in_dir: Path) -> dict:
    return json.loads((in_dir / INFO_FILE).read_text())
