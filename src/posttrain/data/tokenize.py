"""Tokenise and pack once, as TRL's SFTTrainer would (trl 1.16,
`SFTTrainer._prepare_dataset`), so that no training rank tokenises:

- conversations: `apply_chat_template(tokenize=True, return_dict=True,
  return_assistant_tokens_mask=assistant_only_loss)` with each row's template
  arguments; labels are the ids where the assistant mask is set, else -100;
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

from datasets import Features, Sequence, Value

from posttrain.data.rows import stored_conversation
from posttrain.templates import row_template_kwargs

BATCH_ROWS = 512
TOKENIZED = Features({"input_ids": Sequence(Value("int32")), "labels": Sequence(Value("int32"))})


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


def _conversations(batch, *, tokenizer, assistant_only_loss):
    rows = [stored_conversation(dict(zip(batch, values, strict=True))) for values in zip(*batch.values(), strict=True)]
    ids: list = [None] * len(rows)
    labels: list = [None] * len(rows)
    by_kwargs: dict[str, list[int]] = {}
    for j, row in enumerate(rows):
        by_kwargs.setdefault(json.dumps(row_template_kwargs(row), sort_keys=True), []).append(j)
    for key, members in by_kwargs.items():
        enc = tokenizer.apply_chat_template([rows[j]["messages"] for j in members], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=assistant_only_loss, **json.loads(key))
        for n, j in enumerate(members):
            ids[j] = enc["input_ids"][n]
            if assistant_only_loss:
                mask = enc["assistant_masks"][n]
                if 1 not in mask:
                    raise TokenizeError(f"row {rows[j]['id']}: assistant_only_loss is set but the chat template marks no assistant "
                                        "token of it (no {% generation %} block rendered)")
                labels[j] = [t if m else -100 for t, m in zip(ids[j], mask, strict=True)]
            else:
                labels[j] = ids[j]
    return {"input_ids": ids, "labels": labels}


def _texts(batch, *, tokenizer):
    eos = tokenizer.eos_token
    texts = [t if t.endswith(eos) else t + eos for t in batch["text"]]
    ids = tokenizer(texts)["input_ids"]
    return {"input_ids": ids, "labels": ids}


def _truncate(batch, *, max_length):
    return {"input_ids": [x[:max_length] for x in batch["input_ids"]], "labels": [x[:max_length] for x in batch["labels"]]}


def tokenize_and_pack(dataset, tokenizer, *, conversational: bool, assistant_only_loss: bool, max_length: int, packing: bool,
                      packing_strategy: str, num_proc: int = 1, fingerprint: str):
    """The training rows of a prepared SFT or mid-training Dataset, tokenised
    and (with packing) packed: TRL's prepared dataset for the same rows."""
    from trl import pack_dataset

    from posttrain.data.scan import cache_dir, same_environ, workers

    folder = cache_dir("tokenize")
    folder.mkdir(parents=True, exist_ok=True)

    def cached(step: str) -> dict:
        return {"new_fingerprint": f"{fingerprint}-{step}", "cache_file_name": str(folder / f"{fingerprint}-{step}.arrow")}

    fn, kwargs = (_conversations, {"tokenizer": tokenizer, "assistant_only_loss": assistant_only_loss}) if conversational else (
        _texts, {"tokenizer": tokenizer})
    with same_environ():
        ds = dataset.map(fn, batched=True, batch_size=BATCH_ROWS, remove_columns=dataset.column_names, features=TOKENIZED,
                         fn_kwargs=kwargs, num_proc=workers(num_proc, len(dataset)), desc="Tokenizing", **cached("tok"))
    if packing:
        return pack_dataset(ds, max_length, packing_strategy, {"desc": f"Packing ({packing_strategy})", **cached(f"pack-{packing_strategy}")})
    ds = ds.map(_truncate, batched=True, fn_kwargs={"max_length": max_length}, features=TOKENIZED, desc="Truncating", **cached("cut"))
    return ds.filter(lambda labels: any(x != -100 for x in labels), input_columns="labels", desc="Dropping fully masked rows",
                     **cached("kept"))
