from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from posttrain.components._images import DEFAULTS


@dsl.component(base_image=DEFAULTS["generate"], install_kfp_package=False)
def evaluate(
    config: str,
    model: Input[Model],
    board: Input[Dataset],
    scoreboard: Output[Dataset],
    samples: Output[Dataset],
    metrics: Output[Metrics],
    variant: str = "",
):
    """Evaluate one checkpoint; append its row to the scoreboard."""
    from posttrain.components._runtime import run_stage

    outputs = {"scoreboard": scoreboard, "samples": samples, "metrics": metrics}
    run_stage("evaluate", config, {"model": model, "board": board}, outputs, variant)
