"""What makes a row usable, one row at a time (the batched pass in
posttrain.data.scan calls these on each batch), and the fixed Arrow schema
each kind of row is written with."""

from __future__ import annotations

import json

from datasets import Features, Sequence, Value

from posttrain.templates import own_template_kwargs, row_template_kwargs

ROLES = {"system", "user", "assistant"}
OVER_MAX_LENGTH = "over max length"

# Message fields the chat templates read; every message of an artifact has
# them (None where a row had none), so all batches share one Arrow type.
MESSAGE = {"role": Value("string"), "content": Value("string"), "reasoning_content": Value("string")}
MESSAGES = [MESSAGE]
# chat_template_kwargs are kept as JSON strings: Arrow would unify the dicts of
# all rows into one struct and add the keys a row lacks as nulls.
# Each training row also carries its token ids as prepare_data encoded them
# (and, for conversations, the assistant mask; null under a template without
# generation tags), so that the tokenize stage does not encode them again.
IDS = Sequence(Value("int32"))
SFT_FEATURES = Features({"id": Value("string"), "source": Value("string"), "reasoning": Value("bool"), "messages": MESSAGES,
                         "chat_template_kwargs": Value("string"), "input_ids": IDS, "assistant_masks": Sequence(Value("int8"))})
MIDTRAIN_FEATURES = Features({"id": Value("string"), "source": Value("string"), "text": Value("string"), "input_ids": IDS})
# IFEval kwargs differ per instruction: each is a JSON object string (posttrain.data.rows.prompt_kwargs decodes them).
PROMPT_FEATURES = Features({"key": Value("string"), "source": Value("string"), "prompt": Value("string"), "messages": MESSAGES,
                            "answer": Value("string"), "instruction_id_list": Sequence(Value("string")),
                            "kwargs": Sequence(Value("string"))})


def sft_row_problem(row: dict) -> str | None:
    """Why a conversation cannot be trained on, or None."""
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        return "no messages"
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
            return "wrong types"
        if m.get("reasoning_content") is not None and not isinstance(m["reasoning_content"], str):
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
        if not all(isinstance(i, str) for i in ids):
            return "instruction_id_list not a list of strings"
        try:
            if not all(k is None or isinstance(k, dict) or isinstance(json.loads(k), dict) for k in kwargs):
                raise ValueError
        except (TypeError, ValueError):
            return "kwargs not a list of mappings"
    return None


def midtrain_row_problem(row: dict) -> str | None:
    """Mid-training rows are plain text or a conversation (rendered to text)."""
    if is_text(row):
        return None
    return "neither text nor a valid conversation" if sft_row_problem(row) else None


def is_text(row: dict) -> bool:
    return isinstance(row.get("text"), str) and bool(row["text"].strip())


def row_id(row: dict, source_name: str, i: int):
    return row.get("id", row.get("key", f"{source_name}-{i}"))


def reasoning_mode(row: dict) -> str | None:
    """think / no_think as the template will render the row: its
    `enable_thinking` (from the `reasoning` flag, overridden by the row's own
    `chat_template_kwargs`, as smoltalk2 rows carry it); None when neither says."""
    enable = row_template_kwargs(row).get("enable_thinking")
    return None if enable is None else ("think" if enable else "no_think")


def messages_out(messages: list[dict]) -> list[dict]:
    return [{"role": m["role"], "content": m["content"], "reasoning_content": m.get("reasoning_content")} for m in messages]


def sft_out(row: dict, rid, source: str, mode: str | None) -> dict:
    own = own_template_kwargs(row)
    return {"id": str(rid), "source": source, "reasoning": mode == "think", "messages": messages_out(row["messages"]),
            "chat_template_kwargs": json.dumps(own, ensure_ascii=False) if own else None}


def prompt_out(row: dict, key, source: str) -> dict:
    """A usable prompt row in PROMPT_FEATURES; Hub datasets store unused IFEval
    kwargs as nulls, which the checkers want absent."""
    key = row.get("key", key)
    out = {"key": None if key is None else str(key), "source": source, "prompt": row.get("prompt"),
           "messages": messages_out(row["messages"]) if row.get("messages") is not None else None,
           "answer": None if row.get("answer") is None else str(row["answer"]), "instruction_id_list": None, "kwargs": None}
    if row.get("instruction_id_list") is not None:
        kwargs = [json.loads(k) if isinstance(k, str) else (k or {}) for k in row["kwargs"]]
        out["instruction_id_list"] = row["instruction_id_list"]
        out["kwargs"] = [json.dumps({k: v for k, v in kw.items() if v is not None}, ensure_ascii=False) for kw in kwargs]
    return out


def prompt_row(stored: dict) -> dict:
    """A prompts-artifact row as generators and graders take it: absent fields
    left out, messages without empty fields, IFEval kwargs as dicts."""
    out = {k: v for k, v in stored.items() if v is not None and k not in ("messages", "kwargs")}
    if stored.get("messages") is not None:
        out["messages"] = [{k: v for k, v in m.items() if v is not None} for m in stored["messages"]]
    if stored.get("kwargs") is not None:
        out["kwargs"] = [json.loads(k) for k in stored["kwargs"]]
    return out


def stored_conversation(row: dict) -> dict:
    """An SFT-artifact row as today's code and the templates take it (messages
    without null fields; the row's own template kwargs, if any, as a dict)."""
    out = {"id": row["id"], "source": row["source"], "reasoning": row["reasoning"],
           "messages": [{k: v for k, v in m.items() if v is not None} for m in row["messages"]]}
    if row.get("chat_template_kwargs"):
        out["chat_template_kwargs"] = json.loads(row["chat_template_kwargs"])
    return out
