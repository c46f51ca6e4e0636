"""Data at scale: recipe sources opened as memory-mapped Arrow (`sources`),
row checks (`rows`), the batched validation and token-counting pass
(`scan`), the token mixture (`mixture`), Dataset artifacts as Arrow shards
(`artifacts`) and tokenise-and-pack-once (`tokenize`).

Only indices, counters and one batch of rows at a time live in Python; a
step's peak memory is bounded by its batch size, not by the dataset.
May import: posttrain.store, posttrain.templates, posttrain.recipe (no
stages, training or KFP code)."""

import hashlib
from pathlib import Path


def code_digest(*modules: str) -> str:
    """Hash of these modules of posttrain.data: part of a cache key, so cached
    results of code that has since changed are not reused."""
    h = hashlib.sha256()
    for name in modules:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()
