"""Reading recipe data sources and writing/reading Dataset artifacts (JSONL)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path

from posttrain.recipe import file_sha256

log = logging.getLogger(__name__)
_SHA = re.compile(r"^[0-9a-f]{40}$")

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
    return load_source_resolved(source)[0]


def load_source_resolved(source: dict) -> tuple[list[dict], dict]:
    """Rows of one recipe data source and the revision actually read:
    `{resolved_revision, revision_resolved, revision_from}` (and
    `revision_note` when it could not be resolved or differs from the request)."""
    if source.get("path"):
        path = Path(source["path"])
        rows = read_jsonl(path)
        resolved = {"resolved_revision": "sha256:" + file_sha256(path), "revision_resolved": True, "revision_from": "sha256 of the file"}
    else:
        from datasets import load_dataset

        ds = load_dataset(source["hub"], source.get("subset"), split=source["split"], revision=source["revision"])
        resolved = hub_revision(ds, source["hub"], source["revision"])
        rows = list(ds)
    if source.get("max_examples"):
        rows = rows[: source["max_examples"]]
    return rows, resolved


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
