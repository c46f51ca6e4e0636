"""Shared by the SFT benchmarks (imported from the script's own folder, so it
also works on a GPU machine without posttrain installed)."""


class CountingCollator:
    """TRL's own collator, recording real (non-pad) and total tokens of each batch, in order."""

    def __init__(self, inner):
        self.inner, self.batches = inner, []

    def __call__(self, examples):
        batch = self.inner(examples)
        total = batch["input_ids"].numel()
        real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else total
        self.batches.append((real, total))
        return batch
