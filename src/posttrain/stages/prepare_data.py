"""prepare_data: load the recipe's sources, drop unusable rows (counted by
reason, failing above the recipe threshold), write one Dataset per use and a
statistics table."""

from __future__ import annotations

import json
import logging
from collections import Counter

from posttrain.datasets_io import load_source, write_dataset
from posttrain.models import materialize, read_model_ref
from posttrain.stages.context import StageContext, StageResult
from posttrain.stages.training import load_tokenizer

log = logging.getLogger(__name__)
ROLES = {"system", "user", "assistant"}


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
    return None


def prompt_row_problem(row: dict) -> str | None:
    if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
        return "no prompt"
    ids, kwargs = row.get("instruction_id_list"), row.get("kwargs")
    if not isinstance(ids, list) or not isinstance(kwargs, list) or len(ids) != len(kwargs) or not ids:
        return "instruction_id_list and kwargs missing or of different lengths"
    return None


def midtrain_row_problem(row: dict) -> str | None:
    """Mid-training rows are plain text or a conversation (rendered to text)."""
    if isinstance(row.get("text"), str) and row["text"].strip():
        return None
    return "neither text nor a valid conversation" if sft_row_problem(row) else None


def _check(group: str, source: dict, rows: list[dict], problem, max_invalid: float) -> list[tuple[int, dict]]:
    """Keep usable rows; fail with counts and example row ids above the threshold."""
    reasons: Counter = Counter()
    examples: dict[str, list] = {}
    kept = []
    for i, row in enumerate(rows):
        why = problem(row)
        if why is None:
            kept.append((i, row))
        else:
            reasons[why] += 1
            examples.setdefault(why, []).append(row.get("id", row.get("key", i)))
    dropped = sum(reasons.values())
    if rows and dropped / len(rows) > max_invalid:
        detail = "; ".join(f"{why}: {n} (e.g. rows {examples[why][:5]})" for why, n in reasons.most_common())
        raise DataError(
            f"data.{group} source {source['name']!r}: {dropped} of {len(rows)} rows unusable, above "
            f"data.max_invalid_fraction={max_invalid}: {detail}"
        )
    if dropped:
        log.warning("data.%s %s: dropped %d rows: %s", group, source["name"], dropped, dict(reasons))
    return kept


def _normalise_prompt(row: dict, key) -> dict:
    kwargs = [json.loads(k) if isinstance(k, str) else (k or {}) for k in row["kwargs"]]
    # Hub datasets store unused kwargs as nulls; the checkers want them absent.
    kwargs = [{k: v for k, v in kw.items() if v is not None} for kw in kwargs]
    return {"key": row.get("key", key), "prompt": row["prompt"], "instruction_id_list": row["instruction_id_list"], "kwargs": kwargs}


def _stats_table(stats: list[dict]) -> str:
    total_ex = sum(s["examples"] for s in stats) or 1
    total_tok = sum(s["tokens"] for s in stats) or 1
    head = (
        "| dataset | reasoning mode | # examples | % examples | # tokens (M) | % tokens | mean tokens per example "
        "| mean tokens in context | mean tokens in response | mean turns |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )

    def row(s):
        n = s["examples"] or 1
        return (
            f"| {s['name']} | {s['mode']} | {s['examples']} | {100 * s['examples'] / total_ex:.1f} | "
            f"{s['tokens'] / 1e6:.4f} | {100 * s['tokens'] / total_tok:.1f} | {s['tokens'] / n:.1f} | "
            f"{s['context'] / n:.1f} | {s['response'] / n:.1f} | {s['turns'] / n:.2f} |\n"
        )

    total = {
        "name": "**Total**", "mode": "", "examples": sum(s["examples"] for s in stats),
        **{k: sum(s[k] for s in stats) for k in ("tokens", "context", "response", "turns")},
    }
    return head + "".join(row(s) for s in stats) + row(total)


def _sft_stats(name: str, rows: list[dict], tokenizer) -> list[dict]:
    out = []
    for mode in ("think", "no_think"):
        subset = [r for r in rows if bool(r.get("reasoning")) == (mode == "think")]
        if not subset:
            continue
        s = {"name": name, "mode": mode, "examples": len(subset), "tokens": 0, "context": 0, "response": 0, "turns": 0}
        for r in subset:
            for m in r["messages"]:
                n = len(tokenizer(m["content"], add_special_tokens=False)["input_ids"])
                s["tokens"] += n
                s["response" if m["role"] == "assistant" else "context"] += n
            s["turns"] += sum(m["role"] == "assistant" for m in r["messages"])
        out.append(s)
    return out


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    data = cfg["data"]
    max_invalid = data["max_invalid_fraction"]
    tokenizer = load_tokenizer(materialize(read_model_ref(ctx.inputs["base_model"])), cfg["chat_template"])

    groups = {"sft": sft_row_problem, "midtrain": midtrain_row_problem, "prompts": prompt_row_problem}
    stats, metrics, metadata = [], {}, {}
    for group, problem in groups.items():
        out_rows, sources = [], []
        for source in data[group]:
            rows = load_source(source)
            for i, row in _check(group, source, rows, problem, max_invalid):
                rid = row.get("id", row.get("key", f"{source['name']}-{i}"))
                if group == "sft":
                    out_rows.append({"id": rid, "source": source["name"], "reasoning": bool(row.get("reasoning")), "messages": row["messages"]})
                elif group == "midtrain":
                    text = row.get("text") or tokenizer.apply_chat_template(row["messages"], tokenize=False)
                    out_rows.append({"id": rid, "source": source["name"], "text": text})
                else:
                    out_rows.append({**_normalise_prompt(row, len(out_rows)), "source": source["name"]})
            sources.append({k: source[k] for k in ("name", "path", "hub", "subset", "split", "revision")})
            if group == "sft":
                stats += _sft_stats(source["name"], [r for r in out_rows if r["source"] == source["name"]], tokenizer)
        info = {"sources": sources}
        n = write_dataset(ctx.outputs[group], out_rows, info)
        metadata[group] = {**info, "rows": n}
        metrics[f"data.{group}.rows"] = float(n)
        if group in ("sft", "prompts") and n == 0:
            raise DataError(f"data.{group}: no usable rows after validation")

    table = "## SFT data mixture\n\n" + _stats_table(stats)
    ctx.outputs["stats"].write_text(table)
    return StageResult(metrics=metrics, metadata=metadata)
