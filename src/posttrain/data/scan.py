"""The one pass over a source: every row checked, its reasoning mode and
turns read, encoded as the training stage will render it (token ids and
assistant mask, kept in the output for the tokenize stage) and its tokens
counted from that, and written in its group's schema; a batched `datasets.map` with `num_proc`
workers, each holding one batch of rows at a time.

The pass adds columns for what prepare_data aggregates: `_problem` (why the
row is unusable, or null), `_rid` (the row id as JSON, for error examples),
`_mode`, `_turns`, `_context` and `_response` (tokens). Results are cached
in the datasets cache under a fingerprint of the source, the settings and
this code, so a rerun after a crash reuses the finished work."""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import Features, Value

from posttrain.data import code_digest, mixture
from posttrain.data.pages import Released, release
from posttrain.data.rows import (
    MIDTRAIN_FEATURES,
    OVER_MAX_LENGTH,
    PROMPT_FEATURES,
    SFT_FEATURES,
    is_text,
    midtrain_row_problem,
    prompt_out,
    prompt_row_problem,
    reasoning_mode,
    row_id,
    sft_out,
    sft_row_problem,
    stored_conversation,
)
from posttrain.data.sources import Opened, batch_rows
from posttrain.data.tokenize import conversation_tokens, encode_conversations, encode_texts
from posttrain.templates import own_template_kwargs, row_template_kwargs

# Rows per map batch: the fast tokenizer batches well at this size and a
# batch of 64k-token conversations stays within a few hundred MB.
BATCH_ROWS = 512
# Example row ids named per reason, in errors and in the report.
EXAMPLES = 5
STAT_FEATURES = {"_problem": Value("string"), "_rid": Value("string"), "_mode": Value("string"), "_turns": Value("int32"),
                 "_context": Value("int64"), "_response": Value("int64")}
OUT_FEATURES = {"sft": SFT_FEATURES, "midtrain": MIDTRAIN_FEATURES, "prompts": PROMPT_FEATURES}


def available_cpus() -> int:
    """CPUs this process may use: the container's CPU quota (cgroup v2
    cpu.max) when it has one, else the CPUs it is allowed to run on."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return cpus


@dataclass
class Dropped:
    """Rows of one source that were dropped, by reason, with example ids."""

    loaded: int
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def most_common(self) -> list[tuple[str, int]]:
        # Ties keep the order in which reasons were first seen (as collections.Counter).
        return sorted(self.counts.items(), key=lambda kv: -kv[1])


def _scan_batch(table, indices, *, group, name, json_lines, lines, where, tokenizer, template, max_length):
    batch = table.to_pydict()
    release(table)  # the batch's pages of the mapped source, read now
    rows = batch_rows(batch, json_lines, lines[indices] if lines is not None else None, where)
    check = {"sft": sft_row_problem, "midtrain": midtrain_row_problem, "prompts": prompt_row_problem}[group]
    problems = [check(r) for r in rows]
    out = {k: [None] * len(rows) for k in OUT_FEATURES[group]}
    stats = {"_problem": problems, "_rid": [json.dumps(row_id(r, name, i), default=str) for r, i in zip(rows, indices, strict=True)],
             "_mode": [None] * len(rows), "_turns": [0] * len(rows), "_context": [0] * len(rows), "_response": [0] * len(rows)}
    usable = [j for j, p in enumerate(problems) if p is None]
    for j in usable:
        row = rows[j]
        if group == "prompts":
            for k, v in prompt_out(row, row.get("key"), name).items():
                out[k][j] = v
            continue
        mode = reasoning_mode(row)
        stats["_turns"][j] = sum(m["role"] == "assistant" for m in row["messages"]) if group == "sft" or not is_text(row) else 0
        if group == "sft":
            stats["_mode"][j] = mode or "no_think"
            for k, v in sft_out(row, row_id(row, name, indices[j]), name, mode).items():
                out[k][j] = v
        else:
            stats["_mode"][j] = mode or "-"
            out["id"][j], out["source"][j] = str(row_id(row, name, indices[j])), name
            if is_text(row):
                out["text"][j] = row["text"]
            else:
                kwargs = row_template_kwargs({"chat_template_kwargs": own_template_kwargs(row)})
                out["text"][j] = tokenizer.apply_chat_template(row["messages"], tokenize=False, chat_template=template, **kwargs)
    if group == "sft" and usable:
        # Encoded and counted as the training stage renders the written row: its messages, its mode flag, then its own kwargs.
        stored = [stored_conversation({k: out[k][j] for k in SFT_FEATURES if k in out}) for j in usable]
        convs, kwargs = [r["messages"] for r in stored], [row_template_kwargs(r) for r in stored]
        ids, masks = encode_conversations(tokenizer, convs, kwargs)
        tokens = conversation_tokens(tokenizer, convs, kwargs, ids, masks)
        for j, row_ids, mask in zip(usable, ids, masks, strict=True):
            out["input_ids"][j], out["assistant_masks"][j] = row_ids, mask
    elif group == "midtrain" and usable:
        # Mid-training trains on every token: all of a row counts as response (without the eos and other special tokens).
        ids = encode_texts(tokenizer, [out["text"][j] for j in usable])
        added = len(tokenizer("")["input_ids"])
        eos = tokenizer.eos_token
        tokens = [mixture.RowTokens(0, len(row_ids) - added - (not out["text"][j].endswith(eos))) for j, row_ids in zip(usable, ids, strict=True)]
        for j, row_ids in zip(usable, ids, strict=True):
            out["input_ids"][j] = row_ids
    else:
        tokens = [mixture.RowTokens(0, 0)] * len(usable)
    for j, t in zip(usable, tokens, strict=True):
        stats["_context"][j], stats["_response"][j] = t.context, t.response
        if max_length is not None and t.total > max_length:
            problems[j] = OVER_MAX_LENGTH
    return {**out, **stats}


def workers(num_proc: int, rows: int) -> int | None:
    """`num_proc` for a map over `rows` rows: None (this process) when there is
    less than a batch for each worker."""
    return None if num_proc <= 1 or rows < 2 * BATCH_ROWS else num_proc


@contextmanager
def same_environ():
    """A `map` with workers leaves `os.environ` a deep copy of itself (datasets
    5.2 turns the tokenizer's threads off that way, arrow_dataset.py), so code
    holding the original object stops seeing changes. Put the original back,
    with what the copy holds."""
    original = os.environ
    try:
        yield
    finally:
        if os.environ is not original:
            current = dict(os.environ)
            os.environ = original  # noqa: B003 - restoring the object datasets replaced
            for key in set(original) - set(current):
                del original[key]
            original.update(current)


def cache_dir(step: str) -> Path:
    """Where a step's map results go: under the datasets cache (the cache PVC
    on a cluster), never beside its input (a read-only artifact or a user's folder)."""
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "posttrain" / step


def scan(opened: Opened, source: dict, group: str, *, tokenizer=None, template: str | None = None, max_length: int | None = None,
         num_proc: int = 1, tokenizer_digest: str = ""):
    """The source's rows checked, counted and in the group's schema (one
    output row per input row; unusable rows have `_problem` set)."""
    ds = opened.dataset
    where = source.get("path") or source.get("hub")
    # The dataset's fingerprint covers its files and the rows selected from them (max_examples, blank lines).
    parts = [ds._fingerprint, group, source["name"], template, max_length, tokenizer_digest,
             code_digest("scan.py", "rows.py", "mixture.py", "sources.py", "tokenize.py", "pages.py")]
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]
    features = Features({**OUT_FEATURES[group], **STAT_FEATURES})
    if len(ds) == 0:  # map returns a dataset without columns for no rows
        from posttrain.data.artifacts import empty

        return empty(features)
    folder = cache_dir("scan")
    folder.mkdir(parents=True, exist_ok=True)
    # Batches of a source with an indices mapping (blank lines left out, a selection) are copies:
    # the watcher releases the mapped pages they were taken from (in this process; workers'
    # zero-copy batches are released by _scan_batch).
    with same_environ(), Released(ds):
        return ds.with_format("arrow").map(
            _scan_batch, batched=True, batch_size=BATCH_ROWS, with_indices=True, remove_columns=ds.column_names, features=features,
            num_proc=workers(num_proc, len(ds)), new_fingerprint=key,
            desc=f"data.{group} {source['name']}: checking and counting tokens",
            fn_kwargs=dict(group=group, name=source["name"], json_lines=opened.json_lines, lines=opened.lines, where=where,
                           tokenizer=tokenizer, template=template, max_length=max_length),
            cache_file_name=str(folder / f"scan-{key}.arrow"),
        ).with_format(None)


@dataclass
class Columns:
    """What prepare_data keeps in memory of a scanned source: numpy arrays
    over its rows and the drop counters; never the rows themselves."""

    dropped: Dropped
    kept: np.ndarray  # row indices of the usable rows
    modes: np.ndarray  # per usable row
    turns: np.ndarray
    context: np.ndarray
    response: np.ndarray
    longest_over: int = 0

    @property
    def totals(self) -> np.ndarray:
        return self.context + self.response


def _shared_strings(column, names: dict) -> np.ndarray:
    """An object array of the column's values, every equal value the same
    Python string (8 bytes a row, not a new string per row)."""
    encoded = column.combine_chunks().dictionary_encode() if hasattr(column, "combine_chunks") else column.dictionary_encode()
    values = [names.setdefault(v, v) for v in encoded.dictionary.to_pylist()]
    lookup = np.array(values + [None], dtype=object)
    codes = encoded.indices.fill_null(len(values)).to_numpy(zero_copy_only=False)
    return lookup[codes]


def read_columns(scanned) -> Columns:
    """One pass over the stats columns, in Arrow batches."""
    dropped = Dropped(loaded=len(scanned))
    kept, modes, turns, context, response, names = [], [], [], [], [], {}
    longest, start = 0, 0
    stats = scanned.select_columns(list(STAT_FEATURES)).with_format("arrow")
    for batch in stats.iter(batch_size=8192):
        problem = batch["_problem"].to_pylist()
        ok = np.array([p is None for p in problem], dtype=bool)
        ctx = batch["_context"].to_numpy(zero_copy_only=False)
        rsp = batch["_response"].to_numpy(zero_copy_only=False)
        for j in np.flatnonzero(~ok):
            why = problem[j]
            dropped.counts[why] = dropped.counts.get(why, 0) + 1
            examples = dropped.examples.setdefault(why, [])
            if len(examples) < EXAMPLES:
                examples.append(json.loads(batch["_rid"][int(j)].as_py()))
            if why == OVER_MAX_LENGTH:
                longest = max(longest, int(ctx[j] + rsp[j]))
        kept.append(np.flatnonzero(ok) + start)
        modes.append(_shared_strings(batch["_mode"], names)[ok])
        turns.append(batch["_turns"].to_numpy(zero_copy_only=False)[ok])
        context.append(ctx[ok])
        response.append(rsp[ok])
        start += len(problem)

    def cat(parts, dtype):
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    return Columns(dropped, cat(kept, np.int64), cat(modes, object), cat(turns, np.int64), cat(context, np.int64),
                   cat(response, np.int64), longest)
