"""prepare_data: open the recipe's sources as Arrow, check every row and
count its tokens in one batched pass (`data.num_proc` workers; unusable rows
counted by reason, failing above the recipe threshold), resample the SFT and
mid-training sources to their token budgets on index arrays
(posttrain.data.mixture), and write one Dataset artifact per use as Arrow
shards with the resolved source revisions and the mixture tables. Only
indices and counters of the rows live in this process."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from posttrain.data import mixture
from posttrain.data.artifacts import empty, write_dataset
from posttrain.data.rows import OVER_MAX_LENGTH
from posttrain.data.scan import EXAMPLES, OUT_FEATURES, Columns, Dropped, available_cpus, read_columns, scan
from posttrain.data.sources import open_source
from posttrain.data.tokenize import tokenizer_digest
from posttrain.models import materialize, read_model_ref
from posttrain.stages.context import StageContext, StageResult
from posttrain.stages.training import load_tokenizer
from posttrain.templates import load_template

log = logging.getLogger(__name__)
# What a typed (Parquet, Arrow, Hub) source of each group must have as a column.
REQUIRED = {
    "sft": (("messages",), "a list of {role, content} turns ending with an assistant turn"),
    "midtrain": (("text", "messages"), "plain text, or a conversation rendered with midtrain.chat_template"),
    "prompts": (("prompt", "messages"), "a prompt string, or a conversation ending with a user turn"),
}


class DataError(ValueError):
    pass


def check_dropped(group: str, source: dict, dropped: Dropped, max_invalid: float, notes: dict | None = None) -> None:
    """Fail with counts and example row ids when more than `max_invalid` of a
    source's rows are unusable; `notes` adds a line of detail to a reason."""
    notes = notes or {}
    if dropped.loaded and dropped.total / dropped.loaded > max_invalid:
        detail = "; ".join(
            f"{why}: {n} (e.g. rows {dropped.examples[why][:EXAMPLES]}{'; ' + notes[why] if why in notes else ''})"
            for why, n in dropped.most_common()
        )
        raise DataError(
            f"data.{group} source {source['name']!r}: {dropped.total} of {dropped.loaded} rows unusable, above "
            f"data.max_invalid_fraction={max_invalid}: {detail}"
        )
    if dropped.total:
        log.warning("data.%s %s: dropped %d rows: %s", group, source["name"], dropped.total, dict(dropped.counts))


@dataclass
class Prepared:
    """One source after the scan: its scanned Dataset (every row, with the
    stats columns) and the numpy columns of its usable rows."""

    source: dict
    revision: dict
    scanned: object
    columns: Columns


def _prepare(group: str, source: dict, settings: dict, max_invalid: float) -> Prepared:
    opened = open_source(source, group, REQUIRED[group])
    scanned = scan(opened, source, group, **settings)
    columns = read_columns(scanned)
    field_name = f"{group}.max_length"
    note = {OVER_MAX_LENGTH: f"longest {columns.longest_over} tokens > {field_name}={settings.get('max_length')} once rendered with the chat template"}
    check_dropped(group, source, columns.dropped, max_invalid, note)
    return Prepared(source, opened.revision, scanned, columns)


def _source_info(source: dict) -> dict:
    return {k: source.get(k) for k in ("name", "path", "hub", "subset", "split", "revision", "max_examples", "weight", "tokens")}


def _with_repeat_ids(batch, indices, passes):
    return {"id": [mixture.repeat_id(i, int(k)) for i, k in zip(batch["id"], passes[indices], strict=True)]}


def _mix(group: str, prepared: list[Prepared], group_tokens: int | None, seed: int):
    """Resample every source of a group to its token budget; returns the
    output Dataset, the stats entries, the plans and the per-source metadata."""
    from datasets import concatenate_datasets

    if group_tokens is not None and not any(p.source.get("weight") is not None for p in prepared):
        log.warning("data.%s_tokens=%d is ignored: no data.%s source gives a weight", group, group_tokens, group)
    for p in prepared:
        if not len(p.columns.kept) and (p.source.get("weight") is not None or p.source.get("tokens") is not None):
            raise DataError(f"data.{group} source {p.source['name']!r}: has a token weight or budget but no usable rows to sample from")
    plans = mixture.plan_group([p.source for p in prepared], [p.columns.totals for p in prepared], group_tokens, seed=seed, group=group)
    parts, stats, sources = [], [], []
    for p, plan in zip(prepared, plans, strict=True):
        rows, c = plan.picks.rows, p.columns
        part = p.scanned.select(c.kept[rows]).select_columns(list(OUT_FEATURES[group]))
        if len(plan.picks) and plan.picks.passes.max() > 1:
            part = part.map(_with_repeat_ids, batched=True, with_indices=True, fn_kwargs={"passes": plan.picks.passes},
                            desc=f"data.{group} {plan.name}: ids of repeated rows")
        parts.append(part)
        stats += mixture.summarise(p.source["name"], c.modes[rows], c.context[rows], c.response[rows], c.turns[rows])
        log.info(
            "data.%s %s: %d rows / %d tokens -> %d rows / %d tokens (budget %s)",
            group, plan.name, plan.rows_before, plan.tokens_before, plan.rows_after, plan.tokens_after, plan.target,
        )
        sources.append({**_source_info(p.source), **p.revision, "rows_loaded": c.dropped.loaded, "rows_dropped": dict(c.dropped.counts),
                        **plan.summary()})
    out = concatenate_datasets(parts) if parts else empty(OUT_FEATURES[group])
    return out, stats, plans, sources


def _fill_keys(batch, indices, offset):
    """Prompt rows without a `key` get their position among all kept prompts."""
    return {"key": [k if k is not None else str(offset + i) for k, i in zip(batch["key"], indices, strict=True)]}


def _prompts(sources: list[dict], settings: dict, max_invalid: float):
    """Prompts are taken as they are: no token mixture."""
    from datasets import concatenate_datasets

    parts, infos, dropped, offset = [], [], [], 0
    for source in sources:
        p = _prepare("prompts", source, settings, max_invalid)
        kept = p.scanned.select(p.columns.kept).select_columns(list(OUT_FEATURES["prompts"]))
        kept = kept.map(_fill_keys, batched=True, with_indices=True, fn_kwargs={"offset": offset}, desc=f"prompts {source['name']}: keys")
        offset += len(kept)
        parts.append(kept)
        dropped.append(("prompts", source["name"], p.columns.dropped))
        infos.append({**_source_info(source), **p.revision, "rows_loaded": p.columns.dropped.loaded,
                      "rows_dropped": dict(p.columns.dropped.counts), "rows_after": len(kept)})
    out = concatenate_datasets(parts) if parts else empty(OUT_FEATURES["prompts"])
    return out, infos, dropped


def _dropped_table(dropped: list[tuple[str, str, Dropped]]) -> str:
    lines = [
        f"| {group} | {name} | {why} | {n} | {100 * n / d.loaded:.2f} | {', '.join(str(x) for x in d.examples[why][:EXAMPLES])} |\n"
        for group, name, d in dropped
        for why, n in d.most_common()
    ]
    if not lines:
        return "No rows dropped.\n"
    return "| data | dataset | reason | rows | % of rows | example ids |\n|---|---|---|---:|---:|---|\n" + "".join(lines)


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    data = cfg["data"]
    num_proc = data.get("num_proc") or available_cpus()
    tokenizer = load_tokenizer(materialize(read_model_ref(ctx.inputs["base_model"])), cfg["chat_template"])
    max_invalid = data["max_invalid_fraction"]
    common = {"num_proc": num_proc, "tokenizer_digest": tokenizer_digest(tokenizer)}
    settings = {
        "sft": {**common, "tokenizer": tokenizer, "max_length": cfg["sft"]["max_length"]},
        "midtrain": {**common, "tokenizer": tokenizer, "max_length": cfg["midtrain"]["max_length"],
                     "template": load_template(cfg["midtrain"]["chat_template"])},
    }
    log.info("prepare_data: %d worker processes (data.num_proc)", num_proc)

    metrics, metadata, sections, dropped = {}, {}, [], []
    for group in ("sft", "midtrain"):
        prepared = [_prepare(group, s, settings[group], max_invalid) for s in data[group]]
        dropped += [(group, p.source["name"], p.columns.dropped) for p in prepared]
        out, stats, plans, sources = _mix(group, prepared, data[f"{group}_tokens"], cfg["seed"])
        tokens = sum(s["tokens"] for s in stats)
        info = {"sources": sources, "tokens": tokens, "tokenizer": common["tokenizer_digest"]}
        n = write_dataset(ctx.outputs[group], out, info, num_proc=num_proc)
        metadata[group] = {"sources": sources, "rows": n}
        metrics[f"data.{group}.rows"] = float(n)
        metrics[f"data.{group}.tokens"] = float(tokens)
        if group == "sft" and n == 0:
            raise DataError("data.sft: no usable rows after validation")
        if n:
            title = "SFT" if group == "sft" else "Mid-training"
            sections.append(f"## {title} data mixture\n\n{mixture.stats_table(stats)}\n{mixture.resampling_table(plans, [p.source for p in prepared])}")

    out, sources, prompt_dropped = _prompts(data["prompts"], common, max_invalid)
    dropped += prompt_dropped
    n = write_dataset(ctx.outputs["prompts"], out, {"sources": sources})
    metadata["prompts"] = {"sources": sources, "rows": n}
    metrics["data.prompts.rows"] = float(n)
    if n == 0:
        raise DataError("data.prompts: no usable rows after validation")

    sections.append(f"## Dropped rows\n\n{_dropped_table(dropped)}")
    ctx.outputs["stats"].write_text("\n".join(sections))
    return StageResult(metrics=metrics, metadata=metadata)
