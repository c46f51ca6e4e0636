from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from posttrain.components._images import DEFAULTS


@dsl.component(base_image=DEFAULTS["cpu"], install_kfp_package=False)
def select_best(
    config: str,
    scoreboard: Input[Dataset],
    model: Output[Model],
    report: Output[Markdown],
    results: Output[Dataset],
    metrics: Output[Metrics],
) -> bool:
    """Pick the best evaluated checkpoint; return whether the release gate passed."""
    from posttrain.components._runtime import run_stage

    outputs = {"model": model, "report": report, "results": results, "metrics": metrics}
    return run_stage("select_best", config, {"scoreboard": scoreboard}, outputs).params["passed"]
