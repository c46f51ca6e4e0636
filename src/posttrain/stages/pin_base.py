"""pin_base: the base model reference every later stage starts from, and the
run's empty scoreboard. Kept apart from preflight so that preflight can run on
every run (never from KFP's cache) without making every later task's inputs
new, which would defeat the cache."""

from __future__ import annotations

from posttrain.datasets_io import write_records
from posttrain.models import ModelRef, write_model_ref
from posttrain.stages.context import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    ref = ModelRef(uri=ctx.config["base_model"]["uri"], revision=ctx.config["base_model"]["revision"])
    write_model_ref(ctx.outputs["base_model"], ref)
    write_records(ctx.outputs["scoreboard"], [], {"labels": []})
    return StageResult(metadata={"base_model": {"uri": ref.uri, "revision": ref.revision}})
