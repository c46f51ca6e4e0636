"""midtrain: continued pretraining on reasoning traces (plain text, packed,
loss on every token), on the data the tokenize task prepared."""

from __future__ import annotations

from posttrain.recipe import MidtrainConfig
from posttrain.stages.context import StageContext, StageResult
from posttrain.stages.sft import train_causal_lm


def run(ctx: StageContext) -> StageResult:
    return train_causal_lm(ctx, MidtrainConfig.model_validate(ctx.config["train"]))
