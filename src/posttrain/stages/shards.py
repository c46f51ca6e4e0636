"""Work in shards that survive a restart: each finished shard is put in the
checkpoint store (complete once its manifest lands), and a restarted stage
reuses every complete shard and redoes only the rest."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable

from posttrain.datasets_io import read_jsonl
from posttrain.stages.context import StageContext

log = logging.getLogger(__name__)
ROWS = "rows.jsonl"


def run_sharded(ctx: StageContext, name: str, items: list, shard_size: int, work: Callable[[list], list[dict]],
                scope: dict | None = None, prefix: str | None = None) -> list[dict]:
    """`work` on consecutive shards of `items`; results in order. `scope`: the
    part of the stage config the results depend on (default: all of it);
    `prefix`: a store key of the caller's own instead (shared across tasks)."""
    prefix = prefix or ctx.checkpoint_key(name, scope)
    results: list[dict] = []
    for index, start in enumerate(range(0, len(items), shard_size)):
        key = f"{prefix}/shard-{index:05d}"
        if ctx.store.manifest(key) is not None:
            rows = read_jsonl(ctx.store.get(key, ctx.workdir / "shards") / ROWS)
            log.info("%s shard %d: reused from %s", name, index, ctx.store.key_uri(key))
        else:
            rows = work(items[start : start + shard_size])
            local = ctx.workdir / "shard-out"
            shutil.rmtree(local, ignore_errors=True)
            local.mkdir(parents=True)
            (local / ROWS).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            ctx.store.put(local, key)
            log.info("%s shard %d: done (%d rows)", name, index, len(rows))
        results += rows
    return results
