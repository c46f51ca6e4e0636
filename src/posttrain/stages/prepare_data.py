"""prepare_data: load the recipe's sources, drop unusable rows (counted by
reason, failing above the recipe threshold), resample the SFT and
mid-training sources to their token budgets (posttrain.mixture), write one
Dataset per use with the resolved source revisions, and the mixture tables."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field

from posttrain import mixture
from posttrain.datasets_io import load_source_resolved, write_dataset
from posttrain.models import materialize, read_model_ref
from posttrain.stages.context import StageContext, StageResult
from posttrain.stages.training import load_tokenizer
from posttrain.templates import load_template, own_template_kwargs, row_template_kwargs

log = logging.getLogger(__name__)
ROLES = {"system", "user", "assistant"}
OVER_MAX_LENGTH = "over max length"
# Example row ids named per reason, in errors and in the report.
EXAMPLES = 5


class DataError(ValueError):
    pass


def sft_row_problem(row: dict) -> str | None:
    """Why a conversation cannot be trained on, or None."""
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        return "no messages"
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
            return "wrong types"
        if m["role"] not in ROLES:
            return "unknown role"
    if messages[-1]["role"] != "assistant":
        return "does not end with an assistant turn"
    if any(m["role"] == "assistant" and not m["content"].strip() for m in messages):
        return "empty assistant turn"
    kwargs = row.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        try:
            if not isinstance(json.loads(kwargs), dict):
                raise ValueError
        except (TypeError, ValueError):
            return "chat_template_kwargs not a mapping"
    return None


def prompt_row_problem(row: dict) -> str | None:
    """A prompt is `prompt` (a string) or `messages` (a conversation ending
    with a user turn). IFEval checks (`instruction_id_list` with `kwargs`) and a
    math `answer` are optional here: the grader decides what it needs."""
    messages = row.get("messages")
    if messages is not None:
        if not isinstance(messages, list) or not messages or any(
            not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str) for m in messages
        ):
            return "messages not a list of {role, content} turns"
        if messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
            return "messages do not end with a non-empty user turn"
    elif not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
        return "no prompt (give `prompt` or `messages`)"
    ids, kwargs = row.get("instruction_id_list"), row.get("kwargs")
    if ids is not None or kwargs is not None:
        if not isinstance(ids, list) or not isinstance(kwargs, list) or len(ids) != len(kwargs) or not ids:
            return "instruction_id_list and kwargs missing or of different lengths"
    return None


def midtrain_row_problem(row: dict) -> str | None:
    """Mid-training rows are plain text or a conversation (rendered to text)."""
    if isinstance(row.get("text"), str) and row["text"].strip():
        return None
    return "neither text nor a valid conversation" if sft_row_problem(row) else None


def row_id(row: dict, source_name: str, i: int):
    return row.get("id", row.get("key", f"{source_name}-{i}"))


@dataclass
class Dropped:
    """Rows of one source that were dropped, by reason, with example ids."""

    loaded: int
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _check(group: str, source: dict, rows: list[dict], problems: list[str | None], max_invalid: float, notes: dict | None = None) -> Dropped:
    """Count the rows with a problem (`problems[i]` is row i's, None when
    usable); fail with counts and example row ids above the threshold.
    `notes` adds a line of detail to a reason in the error."""
    dropped = Dropped(loaded=len(rows))
    for i, (row, why) in enumerate(zip(rows, problems, strict=True)):
        if why is not None:
            dropped.counts[why] += 1
            dropped.examples.setdefault(why, []).append(row_id(row, source["name"], i))
    notes = notes or {}
    if rows and dropped.total / len(rows) > max_invalid:
        detail = "; ".join(
            f"{why}: {n} (e.g. rows {dropped.examples[why][:EXAMPLES]}{'; ' + notes[why] if why in notes else ''})"
            for why, n in dropped.counts.most_common()
        )
        raise DataError(
            f"data.{group} source {source['name']!r}: {dropped.total} of {len(rows)} rows unusable, above "
            f"data.max_invalid_fraction={max_invalid}: {detail}"
        )
    if dropped.total:
        log.warning("data.%s %s: dropped %d rows: %s", group, source["name"], dropped.total, dict(dropped.counts))
    return dropped


PROMPT_FIELDS = ("prompt", "messages", "answer")


def _normalise_prompt(row: dict, key) -> dict:
    out = {"key": row.get("key", key), **{f: row[f] for f in PROMPT_FIELDS if row.get(f) is not None}}
    if row.get("instruction_id_list") is not None:
        kwargs = [json.loads(k) if isinstance(k, str) else (k or {}) for k in row["kwargs"]]
        # Hub datasets store unused kwargs as nulls; the checkers want them absent.
        out["instruction_id_list"] = row["instruction_id_list"]
        out["kwargs"] = [{k: v for k, v in kw.items() if v is not None} for kw in kwargs]
    return out


def reasoning_mode(row: dict) -> str | None:
    """think / no_think as the template will render the row: its
    `enable_thinking` (from the `reasoning` flag, overridden by the row's own
    `chat_template_kwargs`, as smoltalk2 rows carry it); None when neither says."""
    enable = row_template_kwargs(row).get("enable_thinking")
    return None if enable is None else ("think" if enable else "no_think")


@dataclass
class Prepared:
    """One source after validation: the output rows, their tokens, and what
    the report needs."""

    source: dict
    revision: dict
    dropped: Dropped
    rows: list[dict]
    tokens: list[mixture.RowTokens]
    modes: list[str]
    turns: list[int]


def _prepare_conversations(group: str, source: dict, max_invalid: float, max_length: int | None, tokenizer, template: str | None) -> Prepared:
    """SFT rows (group "sft") or mid-training rows rendered to text (group
    "midtrain", with `template`); rows longer than `max_length` tokens once
    rendered are dropped as "over max length". SFT rows are counted with the
    template arguments the sft stage renders them with (`row_template_kwargs`)."""
    rows, revision = load_source_resolved(source)
    name = source["name"]
    problem = sft_row_problem if group == "sft" else midtrain_row_problem
    problems = [problem(r) for r in rows]
    items: dict[int, dict] = {}
    modes: dict[int, str] = {}
    turns: dict[int, int] = {}
    for i, row in enumerate(rows):
        if problems[i] is not None:
            continue
        mode = reasoning_mode(row)
        if group == "sft" or not _is_text(row):
            turns[i] = sum(m["role"] == "assistant" for m in row["messages"])
        else:
            turns[i] = 0
        if group == "sft":
            items[i] = {"id": row_id(row, name, i), "source": name, "reasoning": mode == "think", "messages": row["messages"]}
            if own_template_kwargs(row):
                items[i]["chat_template_kwargs"] = own_template_kwargs(row)
            modes[i] = mode or "no_think"
        else:
            items[i] = {"id": row_id(row, name, i), "source": name, "text": row["text"] if _is_text(row) else None}
            modes[i] = mode or "-"
    usable = list(items)
    if group == "sft":
        tokens = mixture.count_conversation_tokens(
            tokenizer, [items[i]["messages"] for i in usable], [row_template_kwargs(items[i]) for i in usable]
        )
    else:
        for i in usable:
            if items[i]["text"] is None:
                kwargs = row_template_kwargs({"chat_template_kwargs": own_template_kwargs(rows[i])})
                items[i]["text"] = tokenizer.apply_chat_template(rows[i]["messages"], tokenize=False, chat_template=template, **kwargs)
        # Mid-training trains on every token: all of a row counts as response.
        tokens = [mixture.RowTokens(0, n) for n in mixture.count_text_tokens(tokenizer, [items[i]["text"] for i in usable])]
    by_row = dict(zip(usable, tokens, strict=True))
    longest = 0
    for i, t in by_row.items():
        if max_length is not None and t.total > max_length:
            problems[i] = OVER_MAX_LENGTH
            longest = max(longest, t.total)
    field_name = "sft.max_length" if group == "sft" else "midtrain.max_length"
    note = {OVER_MAX_LENGTH: f"longest {longest} tokens > {field_name}={max_length} once rendered with the chat template"}
    dropped = _check(group, source, rows, problems, max_invalid, note)
    kept = [i for i in usable if problems[i] is None]
    return Prepared(source, revision, dropped, [items[i] for i in kept], [by_row[i] for i in kept], [modes[i] for i in kept], [turns[i] for i in kept])


def _is_text(row: dict) -> bool:
    return isinstance(row.get("text"), str) and bool(row["text"].strip())


def _source_info(source: dict) -> dict:
    return {k: source.get(k) for k in ("name", "path", "hub", "subset", "split", "revision", "max_examples", "weight", "tokens")}


def _mix(group: str, prepared: list[Prepared], group_tokens: int | None, seed: int):
    """Resample every source of a group to its token budget; returns the
    output rows, the stats entries, the plans and the per-source metadata."""
    if group_tokens is not None and not any(p.source.get("weight") is not None for p in prepared):
        log.warning("data.%s_tokens=%d is ignored: no data.%s source gives a weight", group, group_tokens, group)
    for p in prepared:
        if not p.rows and (p.source.get("weight") is not None or p.source.get("tokens") is not None):
            raise DataError(f"data.{group} source {p.source['name']!r}: has a token weight or budget but no usable rows to sample from")
    plans = mixture.plan_group(
        [p.source for p in prepared], [[t.total for t in p.tokens] for p in prepared], group_tokens, seed=seed, group=group
    )
    out_rows, stats, sources = [], [], []
    for p, plan in zip(prepared, plans, strict=True):
        taken = []
        for i, k in plan.picks:
            out_rows.append({**p.rows[i], "id": mixture.repeat_id(p.rows[i]["id"], k)})
            taken.append((p.modes[i], p.tokens[i], p.turns[i]))
        stats += mixture.summarise(p.source["name"], taken)
        log.info(
            "data.%s %s: %d rows / %d tokens -> %d rows / %d tokens (budget %s)",
            group, plan.name, plan.rows_before, plan.tokens_before, plan.rows_after, plan.tokens_after, plan.target,
        )
        sources.append({**_source_info(p.source), **p.revision, "rows_loaded": p.dropped.loaded, "rows_dropped": dict(p.dropped.counts), **plan.summary()})
    return out_rows, stats, plans, sources


def _dropped_table(dropped: list[tuple[str, str, Dropped]]) -> str:
    lines = [
        f"| {group} | {name} | {why} | {n} | {100 * n / d.loaded:.2f} | {', '.join(str(x) for x in d.examples[why][:EXAMPLES])} |\n"
        for group, name, d in dropped
        for why, n in d.counts.most_common()
    ]
    if not lines:
        return "No rows dropped.\n"
    return "| data | dataset | reason | rows | % of rows | example ids |\n|---|---|---|---:|---:|---|\n" + "".join(lines)


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    data = cfg["data"]
    max_invalid = data["max_invalid_fraction"]
    tokenizer = load_tokenizer(materialize(read_model_ref(ctx.inputs["base_model"])), cfg["chat_template"])
    midtrain_template = load_template(cfg["midtrain"]["chat_template"])
    max_length = {"sft": cfg["sft"]["max_length"], "midtrain": cfg["midtrain"]["max_length"]}

    metrics, metadata, sections, dropped = {}, {}, [], []
    for group in ("sft", "midtrain"):
        prepared = [
            _prepare_conversations(group, s, max_invalid, max_length[group], tokenizer, midtrain_template if group == "midtrain" else None)
            for s in data[group]
        ]
        dropped += [(group, p.source["name"], p.dropped) for p in prepared]
        out_rows, stats, plans, sources = _mix(group, prepared, data[f"{group}_tokens"], cfg["seed"])
        info = {"sources": sources}
        n = write_dataset(ctx.outputs[group], out_rows, info)
        metadata[group] = {**info, "rows": n}
        metrics[f"data.{group}.rows"] = float(n)
        metrics[f"data.{group}.tokens"] = float(sum(s["tokens"] for s in stats))
        if group == "sft" and n == 0:
            raise DataError("data.sft: no usable rows after validation")
        if n:
            title = "SFT" if group == "sft" else "Mid-training"
            sections.append(f"## {title} data mixture\n\n{mixture.stats_table(stats)}\n{mixture.resampling_table(plans, [p.source for p in prepared])}")

    # Prompts are taken as they are: no token mixture.
    prompt_rows, sources = [], []
    for source in data["prompts"]:
        rows, revision = load_source_resolved(source)
        problems = [prompt_row_problem(r) for r in rows]
        d = _check("prompts", source, rows, problems, max_invalid)
        dropped.append(("prompts", source["name"], d))
        kept = [{**_normalise_prompt(r, len(prompt_rows) + j), "source": source["name"]} for j, r in enumerate(r for r, p in zip(rows, problems, strict=True) if p is None)]
        prompt_rows += kept
        sources.append({**_source_info(source), **revision, "rows_loaded": d.loaded, "rows_dropped": dict(d.counts), "rows_after": len(kept)})
    n = write_dataset(ctx.outputs["prompts"], prompt_rows, {"sources": sources})
    metadata["prompts"] = {"sources": sources, "rows": n}
    metrics["data.prompts.rows"] = float(n)
    if n == 0:
        raise DataError("data.prompts: no usable rows after validation")

    sections.append(f"## Dropped rows\n\n{_dropped_table(dropped)}")
    ctx.outputs["stats"].write_text("\n".join(sections))
    return StageResult(metrics=metrics, metadata=metadata)
