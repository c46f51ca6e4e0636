"""Tokenise once, pack once, as TRL's SFTTrainer would (trl 1.16,
`SFTTrainer._prepare_dataset`), so that no training rank tokenises.

prepare_data's scan encodes every row as it checks it and counts its tokens
(`encode_conversations`, `encode_texts`) and keeps the ids in the prepared
artifact; the tokenize stage then only builds labels and packs:

- conversations: `apply_chat_template(tokenize=True, return_dict=True,
  return_assistant_tokens_mask=True)` with each row's template arguments
  (TRL asks for the mask only under assistant_only_loss; the ids are the
  same either way); labels are the ids where the assistant mask is set,
  else -100 (all ids without assistant_only_loss);
- text (mid-training): the eos token appended when missing, then the plain
  tokenizer call; labels are the ids;
- then, with packing, TRL's own `pack_dataset` (BFD or wrapped) over the
  `input_ids`/`labels` columns in row order, in one process (its batches,
  and so its packs, do not depend on the worker count); without packing,
  truncated to max_length and fully masked rows dropped, as TRL does.

The result has TRL's prepared columns (`input_ids`, `labels`, and
`seq_lengths` for BFD); the trainer is built with
`dataset_kwargs={"skip_prepare_dataset": True}`. Ids and labels are stored
as int32 (half of TRL's int64 on disk; the collator makes int64 tensors
either way)."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
from datasets import Features, Sequence, Value

TOKENIZED = Features({"input_ids": Sequence(Value("int32")), "labels": Sequence(Value("int32"))})
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


class TokenizeError(ValueError):
    pass


def tokenizer_digest(tokenizer, with_template: bool = True) -> str:
    """What decides the token ids: vocabulary, special tokens and (by default)
    the chat template."""
    h = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    h.update(json.dumps([tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token, sorted(tokenizer.all_special_tokens)]).encode())
    if with_template:
        h.update((tokenizer.chat_template or "").encode())
    return h.hexdigest()


def has_generation_tags(template: str | None) -> bool:
    """Whether a chat template marks assistant tokens (`{% generation %}`),
    which the assistant mask and assistant_only_loss need."""
    return bool(_GENERATION_TAG.search(template or ""))


def encode_conversations(tokenizer, conversations: list[list[dict]], kwargs: list[dict], chat_template: str | None = None):
    """The token ids of each conversation rendered with the chat template and
    its own `kwargs`, and its assistant mask (None for every row when the
    template has no generation tags). Rows that share their kwargs go
    through the tokenizer as one batch."""
    masked = has_generation_tags(chat_template or tokenizer.chat_template)
    ids: list = [None] * len(conversations)
    masks: list = [None] * len(conversations)
    by_kwargs: dict[str, list[int]] = {}
    for j, kw in enumerate(kwargs):
        by_kwargs.setdefault(json.dumps(kw or {}, sort_keys=True, default=str), []).append(j)
    for key, members in by_kwargs.items():
        enc = tokenizer.apply_chat_template([conversations[j] for j in members], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=masked, chat_template=chat_template, **json.loads(key))
        for n, j in enumerate(members):
            ids[j] = enc["input_ids"][n]
            masks[j] = enc["assistant_masks"][n] if masked else None
    return ids, masks


def conversation_tokens(tokenizer, conversations, kwargs, ids, masks) -> list:
    """Context and response tokens of each encoded conversation: response =
    the tokens in the assistant mask (the assistant-only loss). A template
    without generation tags gives no mask; the response is then approximated
    by the tokens of the assistant contents."""
    from posttrain.data.mixture import RowTokens

    if not conversations or masks[0] is not None:
        return [RowTokens(context=len(i) - sum(m), response=sum(m)) for i, m in zip(ids, masks, strict=True)]
    replies = ["".join(m["content"] for m in c if m["role"] == "assistant") for c in conversations]
    responses = [len(r) for r in tokenizer(replies, add_special_tokens=False)["input_ids"]]
    return [RowTokens(context=max(len(i) - r, 0), response=min(r, len(i))) for i, r in zip(ids, responses, strict=True)]


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Mid-training text as TRL tokenises it: eos appended when missing, then
    the plain tokenizer call (with the tokenizer's own special tokens)."""
    eos = tokenizer.eos_token
    return tokenizer([t if t.endswith(eos) else t + eos for t in texts])["input_ids"]


def _list_values(column, values):
    import pyarrow as pa

    offsets = column.offsets.to_numpy()
    return pa.ListArray.from_arrays(pa.array(offsets - offsets[0], pa.int32()), pa.array(values, pa.int32()))


def _labels(batch, *, assistant_only_loss: bool):
    """`labels` from the stored ids and assistant masks, vectorised over an Arrow batch."""
    from posttrain.data.pages import release

    out = _labelled(batch, assistant_only_loss)
    release(batch)  # read: its pages of the mapped prepared data can go
    return out


def _labelled(batch, assistant_only_loss: bool):
    import pyarrow as pa

    ids = batch["input_ids"].combine_chunks()
    if not assistant_only_loss:
        return pa.table({"input_ids": ids, "labels": ids})
    masks = batch["assistant_masks"].combine_chunks()
    flat = masks.flatten().to_numpy(zero_copy_only=False)
    offsets = masks.offsets.to_numpy()
    marked = np.concatenate([[0], np.cumsum(flat, dtype=np.int64)])[offsets - offsets[0]]
    marked = marked[1:] - marked[:-1]  # assistant tokens per row
    unmarked = np.flatnonzero(masks.is_null().to_numpy(zero_copy_only=False) | (marked == 0))
    if len(unmarked):
        rid = batch["id"][int(unmarked[0])].as_py()
        raise TokenizeError(f"row {rid}: assistant_only_loss is set but the chat template marks no assistant token of it "
                            "(no {% generation %} block rendered)")
    labels = np.where(flat == 1, ids.flatten().to_numpy(zero_copy_only=False), -100)
    return pa.table({"input_ids": ids, "labels": _list_values(ids, labels)})


def _truncate(batch, *, max_length):
    return {"input_ids": [x[:max_length] for x in batch["input_ids"]], "labels": [x[:max_length] for x in batch["labels"]]}


def label_and_pack(dataset, *, assistant_only_loss: bool, max_length: int, packing: bool, packing_strategy: str, fingerprint: str):
    """The training rows of a prepared SFT or mid-training Dataset (its
    stored `input_ids`, and `assistant_masks` for conversations) with their
    labels and (with packing) packed: TRL's prepared dataset for the same rows."""
    from trl import pack_dataset

    from posttrain.data.pages import Released
    from posttrain.data.scan import cache_dir

    folder = cache_dir("tokenize")
    folder.mkdir(parents=True, exist_ok=True)

    def cached(step: str) -> dict:
        return {"new_fingerprint": f"{fingerprint}-{step}", "cache_file_name": str(folder / f"{fingerprint}-{step}.arrow")}

    columns = [c for c in ("id", "input_ids", "assistant_masks") if c in dataset.column_names]
    ds = dataset.select_columns(columns).with_format("arrow").map(
        _labels, batched=True, batch_size=1000, remove_columns=columns, features=TOKENIZED,
        fn_kwargs={"assistant_only_loss": assistant_only_loss}, desc="Labels", **cached("labels")).with_format(None)
    if packing:
        with Released(ds):  # TRL's pass over the mapped labels
            return pack_dataset(ds, max_length, packing_strategy, {"desc": f"Packing ({packing_strategy})", **cached(f"pack-{packing_strategy}")})
    ds = ds.map(_truncate, batched=True, fn_kwargs={"max_length": max_length}, features=TOKENIZED, desc="Truncating", **cached("cut"))
    return ds.filter(lambda labels: any(x != -100 for x in labels), input_columns="labels", desc="Dropping fully masked rows",
                     **cached("kept"))
