from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from posttrain.components._images import DEFAULTS


@dsl.component(base_image=DEFAULTS["generate"], install_kfp_package=False)
def prefgen(
    config: str,
    policy: Input[Model],
    prompts: Input[Dataset],
    pairs: Output[Dataset],
    stats: Output[Markdown],
    samples: Output[HTML],
    metrics: Output[Metrics],
    variant: str = "",
):
    """Generate and grade responses; write one chunk's preference pairs, their statistics and sample pairs."""
    from posttrain.components._runtime import run_stage

    outputs = {"pairs": pairs, "stats": stats, "samples": samples, "metrics": metrics}
    run_stage("prefgen", config, {"policy": policy, "prompts": prompts}, outputs, variant)
