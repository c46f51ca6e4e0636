"""Recipe data sources opened as Arrow datasets, never as Python lists.

- Hub datasets: `datasets.load_dataset` (prepared once into the datasets
  cache, `HF_DATASETS_CACHE` or `$HF_HOME/datasets`, on the cache PVC on a
  cluster), or streamed (`streaming: true`) for the first `max_examples`
  rows of a very large set without downloading all of it.
- Local JSON lines (`.jsonl`, `.json`): read as lines (`load_dataset("text")`,
  cached as Arrow) and parsed row by row in the batched validation pass, so a
  row whose fields have other types than its neighbours' is dropped and
  counted like any unusable row (Arrow's own JSON reader would refuse the
  whole file), and a line that is not JSON is named by file and line.
- Local Parquet files (`load_dataset("parquet")`) and Arrow folders written by
  `save_to_disk` (`load_from_disk`), with their own column types.

`open_source` returns the Dataset, what to call a row of it in errors, and
the revision actually read."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
_SHA = re.compile(r"^[0-9a-f]{40}$")
# The one column of a JSON-lines source: each row is one line of the file.
LINE = "text"
JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
# Rows per batch when scanning a column outside `map`.
SCAN_BATCH = 8192


class SourceError(ValueError):
    """A source that cannot be read: names the source, the file (and line or
    column) and what is allowed."""


@dataclass
class Opened:
    dataset: object  # datasets.Dataset
    json_lines: bool  # rows are lines of JSON to parse (LINE column)
    revision: dict
    # 1-based file line of each row of `dataset` (JSON lines only), for errors.
    lines: np.ndarray | None = None


def local_kind(path: Path) -> str:
    """json / parquet / arrow for a local source path, or SourceError."""
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return "arrow"
        raise SourceError(f"{path}: a folder is read as an Arrow dataset written by save_to_disk, but it has no state.json")
    if path.suffix in JSON_SUFFIXES:
        return "json"
    if path.suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise SourceError(f"{path}: unknown file type {path.suffix!r}; allowed: JSON lines (.jsonl, .json), Parquet (.parquet) "
                      "or a folder written by datasets' save_to_disk")


def content_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names and contents)."""
    from posttrain.store import sha256_file

    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


def open_source(source: dict, group: str, required: tuple[tuple[str, ...], str] | None = None) -> Opened:
    """The source's rows as an Arrow Dataset, cut to `max_examples`.
    `required`: (columns of which a typed source needs one, what they hold),
    checked before the rows are read where the file's schema allows."""
    if source.get("path"):
        opened = _open_local(source, group, required)
    else:
        opened = _open_hub(source)
    if required:
        require_columns(opened.dataset.column_names if not opened.json_lines else None, source, group, *required)
    limit = source.get("max_examples")
    if opened.json_lines:
        # Blank lines are not rows (as in any JSON-lines reader); the rest keep their line numbers.
        lines = nonblank_lines(opened.dataset)
        lines = lines[:limit] if limit else lines
        if len(lines) != len(opened.dataset):
            opened.dataset = opened.dataset.select(lines)
        opened.lines = lines + 1
    elif limit and len(opened.dataset) > limit:
        opened.dataset = opened.dataset.select(range(limit))
    return opened


def nonblank_lines(ds) -> np.ndarray:
    """0-based indices of the rows of a lines dataset that hold more than whitespace
    (one column scan in Arrow batches)."""
    import pyarrow.compute as pc

    from posttrain.data.pages import release

    out, start = [], 0
    for batch in ds.with_format("arrow").iter(batch_size=SCAN_BATCH):
        column = batch[LINE]
        keep = pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0).to_numpy(zero_copy_only=False)
        out.append(np.flatnonzero(keep) + start)
        start += len(column)
        release(batch)  # read: its pages of the mapped lines can go
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _open_local(source: dict, group: str, required) -> Opened:
    from datasets import Dataset, load_dataset, load_from_disk

    path = Path(source["path"])
    if not path.exists():
        raise SourceError(f"data.{group} source {source['name']!r}: {path} not found")
    kind = local_kind(path)
    revision = {"resolved_revision": "sha256:" + content_sha256(path), "revision_resolved": True,
                "revision_from": "sha256 of the " + ("folder's files" if path.is_dir() else "file")}
    try:
        if kind == "json":
            # datasets cannot build a dataset from an empty file: an empty file is no rows.
            ds = load_dataset("text", data_files=str(path), split="train") if path.stat().st_size else Dataset.from_dict({LINE: []})
            return Opened(ds, json_lines=True, revision=revision)
        if kind == "parquet":
            if required:  # the schema alone, before datasets converts the whole file
                import pyarrow.parquet as pq

                require_columns(pq.read_schema(path).names, source, group, *required)
            ds = load_dataset("parquet", data_files=str(path), split="train")
        else:
            ds = load_from_disk(str(path))
            if hasattr(ds, "keys"):  # a DatasetDict: the recipe's split
                ds = ds[source.get("split", "train")]
    except SourceError:
        raise
    except Exception as e:  # noqa: BLE001 - one clear error for a file datasets cannot read
        raise SourceError(f"data.{group} source {source['name']!r}: {path} cannot be read as {kind}: {type(e).__name__}: {e}") from None
    return Opened(ds, json_lines=False, revision=revision)


def _open_hub(source: dict) -> Opened:
    from datasets import Dataset, load_dataset

    args = dict(path=source["hub"], name=source.get("subset"), split=source["split"], revision=source["revision"])
    if source.get("streaming"):
        # A first look: only the first max_examples rows are read (the recipe requires the limit).
        stream = load_dataset(**args, streaming=True).take(source["max_examples"])
        ds = Dataset.from_generator(_rows_of, gen_kwargs={"stream": stream}, features=stream.features)
        revision = {"resolved_revision": source["revision"], "revision_resolved": bool(_SHA.match(source["revision"])),
                    "revision_from": "streamed at the requested revision"}
        return Opened(ds, json_lines=False, revision=revision)
    ds = load_dataset(**args)
    return Opened(ds, json_lines=False, revision=hub_revision(ds, source["hub"], source["revision"]))


def _rows_of(stream):
    yield from stream


def hub_revision(ds, repo: str, requested: str, hub_cache: Path | None = None) -> dict:
    """The commit of a Hub dataset that `datasets` loaded.

    `datasets` prepares a Hub dataset under
    `<datasets cache>/<org>___<name>/<config>/<version>/<commit sha>/`, and
    offline it reads the newest such folder whatever revision was asked for,
    so the folder of the loaded Arrow files is the truth. Next best is
    huggingface_hub's cache (`refs/<revision>` holds the commit a branch or
    tag pointed to when last downloaded); then a requested full sha as is.
    """
    for f in getattr(ds, "cache_files", None) or []:
        folder = Path(f["filename"]).parent.name
        if _SHA.match(folder):
            out = {"resolved_revision": folder, "revision_resolved": True, "revision_from": "datasets cache folder of the loaded rows"}
            if _SHA.match(requested) and requested != folder:
                out["revision_note"] = f"requested {requested} but datasets loaded {folder} (offline it reads the newest cached copy)"
                log.warning("%s: %s", repo, out["revision_note"])
            return out
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    ref = Path(hub_cache or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="dataset") / "refs" / requested
    if ref.is_file() and _SHA.match(ref.read_text().strip()):
        return {"resolved_revision": ref.read_text().strip(), "revision_resolved": True, "revision_from": "huggingface_hub cache refs"}
    if _SHA.match(requested):
        return {"resolved_revision": requested, "revision_resolved": True, "revision_from": "requested commit sha"}
    note = f"could not resolve {requested!r} to a commit (no datasets or huggingface_hub cache entry); recorded the requested revision"
    log.warning("%s: %s", repo, note)
    return {"resolved_revision": requested, "revision_resolved": False, "revision_note": note}


def batch_rows(batch: dict, json_lines: bool, lines=None, where: str = "") -> list[dict]:
    """The rows of one `map` batch as dicts: parsed JSON lines (a line that is
    not JSON, or not an object, is an error naming `where` and its line), or
    the columns zipped."""
    if not json_lines:
        names = list(batch)
        return [dict(zip(names, values, strict=True)) for values in zip(*batch.values(), strict=True)] if names else []
    rows = []
    for j, line in enumerate(batch[LINE]):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SourceError(f"{where}:{lines[j] if lines is not None else '?'}: not valid JSON: {e}") from None
        if not isinstance(row, dict):
            raise SourceError(f"{where}:{lines[j] if lines is not None else '?'}: a row must be a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def require_columns(columns: list[str] | None, source: dict, group: str, any_of: tuple[str, ...], what: str) -> None:
    """A typed source (Parquet, Arrow, Hub) must have one of `any_of` as a
    column (`columns` None: JSON lines, checked row by row instead)."""
    if columns is None:
        return
    columns = list(columns)
    if not any(c in columns for c in any_of):
        where = source.get("path") or f"{source['hub']} {source.get('subset') or ''} {source['split']}".replace("  ", " ")
        need = " or ".join(f"`{c}`" for c in any_of)
        raise SourceError(f"data.{group} source {source['name']!r}: {where} has columns {columns}; a {group} source needs {need} ({what})")


def read_rows(source: dict, group: str = "eval") -> list[dict]:
    """All rows of a small source (eval sets) as dicts, e.g. for graders."""
    opened = open_source(source, group)
    rows: list[dict] = []
    where = source.get("path") or source.get("hub")
    position = 0
    for batch in opened.dataset.iter(batch_size=SCAN_BATCH):
        n = len(next(iter(batch.values()))) if batch else 0
        lines = opened.lines[position : position + n] if opened.lines is not None else None
        rows += batch_rows(batch, opened.json_lines, lines, where)
        position += n
    return rows
