"""midtrain: continued pretraining on reasoning traces (plain text, packed,
loss on every token)."""

from __future__ import annotations

from datasets import Dataset

from posttrain.datasets_io import read_dataset
from posttrain.recipe import MidtrainConfig
from posttrain.stages.context import StageContext, StageResult
from posttrain.stages.sft import train_causal_lm


def run(ctx: StageContext) -> StageResult:
    cfg = MidtrainConfig.model_validate(ctx.config["train"])
    dataset = Dataset.from_list([{"text": r["text"]} for r in read_dataset(ctx.inputs["data"])])
    return train_causal_lm(ctx, cfg, dataset, assistant_only=False)
