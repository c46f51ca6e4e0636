"""Reference log-probs computed once and kept in the checkpoint store.

With `precompute_ref_log_probs`, TRL's DPOTrainer and KTOTrainer run the frozen
reference over every training row in their __init__, add the results to the
training data as columns, and need no reference forward while training. TRL
caches those columns in a datasets cache file next to the dataset's files:
for the stage, in its scratch workdir (see `shared_dataset`), gone when the
stage ends, so a restarted or rerun chunk would pay the whole reference pass
again. Here the values go to the store under `ref-logps/<key>`.

How (the approach, and why):

- TRL computes; after its __init__, rank 0 reads the columns it added to
  `trainer.train_dataset` (`ref_chosen_logps`/`ref_rejected_logps`; KTO:
  `ref_logps`/`ref_KL_logps`) and stores them as {sequence digest: log-prob},
  the digest being a hash of one sequence's tokens and completion mask as the
  trainer's own collator builds them (truncation included).
- A later run with the same key subclasses the trainer and overrides its
  public per-batch hook `compute_ref_log_probs(model, inputs)`: each sequence
  of the batch is looked up instead of run through the model. All the rest is
  TRL's own code (its loader, the gathering across ranks, the columns it
  adds), so training sees exactly the data a computed run sees. Lookups go by
  content, not position: they do not depend on row order, the precompute
  batch size or how batches are split over ranks.
- Ranks: under `accelerate launch` each rank reads the store itself and only
  rank 0 writes. Should any rank miss a sequence of a batch, every rank
  computes that batch with the model (one small all-gather per batch decides;
  under ZeRO-3 a forward is collective, so ranks must take the same branch).
  A miss is not expected (the key covers what the values depend on); it costs
  time, never correctness, since the reference model is there as always.
  TRL hands its result from rank 0 to the other ranks through a file next to
  the dataset's files, so the stage gives it a dataset saved in the ranks'
  shared workdir (`shared_dataset`): with an in-memory one, TRL 1.16's
  precompute fails on every rank but 0, stored values or not.
- Key (`cache_key`): sha256 of the reference model (uri, revision, sha), the
  rows given to the trainer (chat_template_kwargs included), the chat
  template (name and text), max_length, the loss family (DPO and KTO
  tokenize differently), the TRL version (its tokenization and log-prob
  code), the weights' dtype, and for KTO the device batch size (its KL
  completions are the batch's completions rotated by one).

Not chosen:

- Keeping the dataset's folder in the store, so that a later run's TRL
  finds its own cache file again. The file is named after the
  fingerprint of TRL's tokenized dataset, and that hashes the
  filter closure over the whole DPOConfig: output_dir (a fresh scratch folder
  every run) and every training knob (learning rate, save_steps, ...). Tried
  with the tiny model: two processes on the same saved data and model found
  the same cache file only when output_dir was the same. Reuse would hang on
  incidental settings and on datasets' hashing of closures (which falls back
  to a random hash for anything that does not pickle).
- Overriding TRL's private `_precompute_ref_logps` to hand back stored
  columns: shorter, but private, positional (relies on the row order), and it
  skips TRL's code rather than one model call.
"""

from __future__ import annotations

import hashlib
import json
import logging

import torch

from posttrain.launch import is_main_process
from posttrain.models import ModelRef
from posttrain.templates import load_template

log = logging.getLogger(__name__)

PREFIX = "ref-logps"
FILE = "ref_logps.json"
# Per family, the columns TRL adds, in the order of the tensors compute_ref_log_probs returns.
COLUMNS = {"dpo": ("ref_chosen_logps", "ref_rejected_logps"), "kto": ("ref_logps", "ref_KL_logps")}


def shared_dataset(dataset, folder):
    """`dataset` saved in `folder` (rank 0) and loaded from there by every rank.

    TRL's precompute writes its result on rank 0 into a file next to the
    dataset's own files, and every rank then reads that file. An in-memory
    Dataset has no files: each process picks a random name in its own
    temporary folder, and the other ranks fail to open it (FileNotFoundError
    under `accelerate launch`; seen with two processes on CPU). Saved in the
    launched ranks' shared workdir, the file is where all of them look."""
    from accelerate import PartialState
    from datasets import load_from_disk

    state = PartialState()
    if state.is_main_process:
        dataset.save_to_disk(str(folder))
    state.wait_for_everyone()
    return load_from_disk(str(folder))


def _sha(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def cache_key(reference: ModelRef, rows: list[dict], *, chat_template: str, max_length: int | None, family: str, dtype: str,
              batch_size: int | None = None) -> str:
    """`ref-logps/<sha256>` of what the reference log-probs of `rows` depend on."""
    import trl

    parts = {"reference": [reference.uri, reference.revision, reference.sha], "rows": _sha(rows),
             "chat_template": [chat_template, _sha(load_template(chat_template))], "max_length": max_length, "family": family,
             "trl": trl.__version__, "dtype": dtype, "batch_size": batch_size}
    return f"{PREFIX}/{_sha(parts)}"


def _digests(input_ids, attention_mask, completion_mask) -> list[str]:
    """One digest per row: its real tokens (attention 1) and their completion mask."""
    out = []
    for ids, attention, completion in zip(input_ids.tolist(), attention_mask.tolist(), completion_mask.tolist(), strict=True):
        real = [(t, c) for t, a, c in zip(ids, attention, completion, strict=True) if a]
        out.append(hashlib.sha256(json.dumps(real).encode()).hexdigest()[:32])
    return out


def sequences(family: str, batch: dict) -> list[list[str]]:
    """Digests of a collated batch's sequences, one list per tensor that the
    family's compute_ref_log_probs returns."""
    main = _digests(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    if family == "dpo":  # DataCollatorForPreference: the chosen rows, then the rejected rows
        half = len(main) // 2
        return [main[:half], main[half:]]
    if "KL_input_ids" in batch:  # KTO with its KL term
        return [main, _digests(batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_completion_mask"])]
    return [main]


def table_from(trainer, family: str, batch_size: int = 64) -> dict[str, float]:
    """{digest: log-prob} of the reference log-probs TRL added to the trainer's data."""
    data = trainer.train_dataset
    table: dict[str, float] = {}
    for start in range(0, len(data), batch_size):
        rows = data.select(range(start, min(start + batch_size, len(data))))
        for digests, column in zip(sequences(family, trainer.data_collator(list(rows))), COLUMNS[family]):
            table.update(zip(digests, rows[column], strict=True))
    return table


def reusing(trainer_cls: type, table: dict[str, float], family: str) -> type:
    """`trainer_cls` answering compute_ref_log_probs from `table`; it counts
    the batches it had to compute in `ref_logps_computed_batches`."""

    class Reusing(trainer_cls):
        ref_logps_computed_batches = 0

        def compute_ref_log_probs(self, model, inputs):
            groups = sequences(family, inputs)
            device = self.accelerator.device
            missing = float(any(d not in table for g in groups for d in g))
            # Every rank takes the same branch (a forward is collective under ZeRO-3).
            if self.accelerator.gather(torch.tensor([missing], device=device)).sum() > 0:
                self.ref_logps_computed_batches += 1
                return super().compute_ref_log_probs(model, inputs)
            found = [torch.tensor([table[d] for d in g], dtype=torch.float32, device=device) for g in groups]
            return found[0], (found[1] if len(found) > 1 else None)

    # Named as TRL's class: logs and checks that name the trainer stay the same.
    Reusing.__name__ = Reusing.__qualname__ = trainer_cls.__name__
    return Reusing


class StoredRefLogProbs:
    """The reference log-probs of one chunk under `key` in the stage's store:
    read on every rank at construction, written by rank 0 after a computation."""

    def __init__(self, ctx, key: str, family: str):
        self.ctx, self.key, self.family = ctx, key, family
        self.uri = ctx.store.key_uri(key)
        self.table = self._load()

    def _load(self) -> dict[str, float] | None:
        if self.ctx.store.manifest(self.key) is None:
            return None
        from accelerate import PartialState

        try:
            # One folder per rank: launched ranks share the workdir, and a remote store downloads into it.
            path = self.ctx.store.get(self.key, self.ctx.workdir / f"ref-logps-rank{PartialState().process_index}")
            return json.loads((path / FILE).read_text())["logps"]
        except Exception as e:  # noqa: BLE001 - a cache: computing again is always right
            log.warning("reference log-probs at %s unreadable (%s): computing them", self.uri, e)
            return None

    def trainer_class(self, trainer_cls: type) -> type:
        return trainer_cls if self.table is None else reusing(trainer_cls, self.table, self.family)

    def finish(self, trainer, pairs: int) -> bool:
        """After the trainer's __init__ (which computed or looked up the
        values): log, store what was computed (rank 0), return whether every
        value came from the store."""
        if self.table is not None and trainer.ref_logps_computed_batches == 0:
            log.info("reference log-probs: reused from %s", self.uri)
            return True
        log.info("reference log-probs: computed (%d pairs)", pairs)
        if is_main_process():
            table = table_from(trainer, self.family)
            out = self.ctx.workdir / "ref-logps"
            out.mkdir(parents=True, exist_ok=True)
            (out / FILE).write_text(json.dumps({"key": self.key, "family": self.family, "sequences": len(table), "logps": table}))
            try:
                log.info("reference log-probs stored at %s", self.ctx.store.put(out, self.key))
            except Exception as e:  # noqa: BLE001 - training goes on; a rerun computes them again
                log.warning("could not store the reference log-probs at %s: %s", self.uri, e)
        return False
