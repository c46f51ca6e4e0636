from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from posttrain.components._images import DEFAULTS


@dsl.component(base_image=DEFAULTS["cpu"], install_kfp_package=False)
def prepare_data(
    config: str,
    base_model: Input[Model],
    sft: Output[Dataset],
    midtrain: Output[Dataset],
    prompts: Output[Dataset],
    stats: Output[Markdown],
    metrics: Output[Metrics],
):
    """Load, validate and write the SFT, mid-training and prompt datasets."""
    from posttrain.components._runtime import run_stage

    outputs = {"sft": sft, "midtrain": midtrain, "prompts": prompts, "stats": stats, "metrics": metrics}
    run_stage("prepare_data", config, {"base_model": base_model}, outputs)
