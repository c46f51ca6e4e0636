"""tokenize: the training rows of one prepared Dataset (SFT conversations or
mid-training text), encoded by prepare_data, given their labels and packed
once, on a CPU pod, and kept in the checkpoint store under a content key:
the data's digest, the tokenizer and chat template, max_length, packing, the
loss mask, and the TRL and posttrain code versions (`<recipe>/tokenized/<key>`).
The training stage loads it memory-mapped and hands it to TRL as already
prepared, so no GPU rank tokenises; a rerun or a retry with the same key
finds it in the store.

For SFT the chat template lint (posttrain.template_lint) runs here first, on
the sampled rows: a template that masks the wrong tokens fails on the CPU
pool, before any GPU is requested.

The output artifact is `tokenized.json` (key, uri, rows, tokens, the
tokenizer digest the training stage checks its policy's tokenizer against)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from posttrain.data import code_digest
from posttrain.data.artifacts import INFO_FILE, read_dataset, read_info, save_shards
from posttrain.data.pages import Released
from posttrain.data.rows import stored_conversation
from posttrain.data.tokenize import TokenizeError, label_and_pack, tokenizer_digest
from posttrain.models import read_model_ref
from posttrain.stages.context import StageContext, StageResult
from posttrain.stages.training import load_tokenizer, materialize_shared
from posttrain.template_lint import lint

log = logging.getLogger(__name__)
REF_FILE = "tokenized.json"


def content_key(data_digest: str, tokenizer, settings: dict) -> str:
    import transformers
    import trl

    parts = {"data": data_digest, "tokenizer": tokenizer_digest(tokenizer), "settings": settings, "trl": trl.__version__,
             "transformers": transformers.__version__, "code": code_digest("tokenize.py", "rows.py")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class _Rows:
    """A Dataset's rows in the form the template lint reads, one at a time."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return stored_conversation(self.dataset[i])


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    train = cfg["train"]
    conversational = cfg["kind"] == "sft"
    settings = {"kind": cfg["kind"], "max_length": train["max_length"], "packing": train["packing"],
                "packing_strategy": train["packing_strategy"], "assistant_only_loss": conversational and train.get("assistant_only_loss", True)}
    tokenizer = load_tokenizer(materialize_shared(read_model_ref(ctx.inputs["base_model"])), cfg["chat_template"])
    info = read_info(ctx.inputs["data"])
    if info.get("tokenizer") != tokenizer_digest(tokenizer):
        raise TokenizeError(f"{ctx.inputs['data']}: its token ids were encoded with another tokenizer or chat template than this "
                            f"base model's with chat_template={cfg['chat_template']!r}; run prepare_data and tokenize on the same base model")
    key = f"{cfg['recipe']}/tokenized/{content_key(info['digest'], tokenizer, settings)[:32]}"
    metrics = {"tokenize.reused": 0.0}
    manifest = ctx.store.manifest(key)
    if manifest is None:
        dataset = read_dataset(ctx.inputs["data"])
        if conversational:
            # The rows it would sample from a list, read one at a time; raises TemplateLintError.
            with Released(dataset):  # a random row read maps about a MB of the file around it
                summary = lint(_Rows(dataset), tokenizer, sample=train.get("template_lint_rows"), seed=cfg["seed"])
            log.info("chat template lint passed: %s", summary)
        packed = label_and_pack(dataset, assistant_only_loss=settings["assistant_only_loss"], max_length=settings["max_length"],
                                   packing=settings["packing"], packing_strategy=settings["packing_strategy"],
                                   fingerprint=key.rsplit("/", 1)[1])
        local = ctx.workdir / "tokenized"
        # One writer: the packed rows are contiguous, so writing them is a sequential copy, and one
        # process releases the mapped pages as it goes (a writer process would hold its whole shard).
        save_shards(packed, local)
        stats = _stats(local)
        ctx.store.put(local, key)
        _put_stats(ctx, key, stats)
        log.info("tokenized %d rows into %d training rows: %s", len(dataset), len(packed), ctx.store.key_uri(key))
    else:
        metrics["tokenize.reused"] = 1.0
        log.info("tokenized data for this key already in the store: %s", ctx.store.key_uri(key))
        stats = _stored_stats(ctx, key)
    ref = {"key": key, "uri": ctx.store.key_uri(key), "tokenizer_digest": tokenizer_digest(tokenizer, with_template=False),
           "settings": settings, "source_digest": info["digest"], **stats}
    out = ctx.outputs["tokenized"]
    out.mkdir(parents=True, exist_ok=True)
    (out / REF_FILE).write_text(json.dumps(ref, indent=1, sort_keys=True))
    # The prepared data's description (sources, revisions), for the model card.
    (out / INFO_FILE).write_text(json.dumps(info, indent=1, sort_keys=True))
    metrics.update({"tokenize.rows": float(stats["rows"]), "tokenize.tokens": float(stats["tokens"]),
                    "tokenize.loss_tokens": float(stats["loss_tokens"])})
    return StageResult(metrics=metrics, metadata={"tokenized": {k: ref[k] for k in ("key", "uri", "rows", "tokens")}})


def _put_stats(ctx: StageContext, key: str, stats: dict) -> None:
    """The counts beside the data (`<key>-stats`), so a reuse reads a few bytes, not the data."""
    folder = ctx.workdir / "stats"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stats.json").write_text(json.dumps(stats, sort_keys=True))
    ctx.store.put(folder, key + "-stats")


def _stored_stats(ctx: StageContext, key: str) -> dict:
    if ctx.store.manifest(key + "-stats") is None:  # the data was stored but not its counts (a crash in between)
        stats = _stats(ctx.store.get(key, ctx.workdir / "store"))
        _put_stats(ctx, key, stats)
        return stats
    return json.loads((ctx.store.get(key + "-stats", ctx.workdir / "store") / "stats.json").read_text())


def _stats(folder: Path) -> dict:
    """Rows, tokens and loss tokens of the tokenized data, from Arrow batches."""
    import numpy as np
    import pyarrow.compute as pc
    from datasets import load_from_disk

    from posttrain.data.pages import release

    ds = load_from_disk(str(folder)).with_format("arrow")
    rows = tokens = loss = 0
    for batch in ds.iter(batch_size=64):  # packed rows are up to max_length tokens each
        rows += batch.num_rows
        tokens += int(pc.sum(pc.list_value_length(batch["input_ids"])).as_py() or 0)
        labels = pc.list_flatten(batch["labels"]).to_numpy()
        loss += int(np.count_nonzero(labels != -100))
        release(batch)  # counted: its pages of the mapped data need not stay
    return {"rows": rows, "tokens": tokens, "loss_tokens": loss}


def load_tokenized(ctx: StageContext, tokenizer):
    """The training stage's side: the tokenized Dataset of the `tokenized`
    input, memory-mapped from the store (launched ranks share one download),
    after checking that the policy's tokenizer is the one it was made with."""
    from datasets import load_from_disk
    from filelock import FileLock

    from posttrain.store import fetch

    ref = json.loads((ctx.inputs["tokenized"] / REF_FILE).read_text())
    digest = tokenizer_digest(tokenizer, with_template=False)
    if digest != ref["tokenizer_digest"]:
        raise ValueError(f"the policy's tokenizer differs from the one {ref['uri']} was tokenized with (vocabulary or special tokens): "
                         "its token ids would not mean the same; rerun tokenize with this policy's tokenizer")
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(ctx.workdir / ".tokenized.lock")):
        folder = fetch(ref["uri"], ctx.workdir / "store")
    return load_from_disk(str(folder)), ref


