"""publish: copy the selected model to the store's release location with a
model card (recipe, parent, eval table)."""

from __future__ import annotations

import json
import shutil

from posttrain.datasets_io import read_records
from posttrain.models import ModelRef, materialize, read_model_ref, write_model_ref
from posttrain.stages.context import StageContext, StageResult
from posttrain.stages.evaluate import results_table
from posttrain.store import manifest_digest


def model_card(recipe: str, profile: str, ref: ModelRef, board: list[dict], selected: str) -> str:
    return (
        f"# {recipe} ({profile})\n\nTrained by posttrain. Selected checkpoint: **{selected}** "
        f"(`{ref.uri}`).\n\n## Evaluation\n\n{results_table(board, selected)}"
    )


def run(ctx: StageContext) -> StageResult:
    ref = read_model_ref(ctx.inputs["model"])
    results = ctx.inputs["results"]
    board = read_records(results)
    selected = json.loads((results / "dataset.json").read_text())["selected"]
    local = ctx.workdir / "release"
    shutil.copytree(materialize(ref), local, ignore=shutil.ignore_patterns("manifest.json"))
    (local / "README.md").write_text(model_card(ctx.config["recipe"], ctx.config["profile"], ref, board, selected))
    key = f"{ctx.config['recipe']}/published/{ref.sha[:16] or 'model'}"
    uri = ctx.store.put(local, key)
    released = ctx.store.release(local, key, to_main=ctx.config["publish"]["hub_main"])
    published = ModelRef(uri=uri, revision="published", sha=manifest_digest(ctx.store.manifest(key)))
    write_model_ref(ctx.outputs["published"], published)
    meta = {"uri": uri, "sha": published.sha, "selected": selected, **({"released": released} if released else {})}
    return StageResult(metadata={"published": meta})
