from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from posttrain.components._images import DEFAULTS


@dsl.component(base_image=DEFAULTS["cpu"], install_kfp_package=False)
def select_best(
    config: str,
    scoreboard: Input[Dataset],
    model: Output[Model],
    report: Output[Markdown],
    results: Output[Dataset],
    vibe: Output[HTML],
    curves: Output[HTML],
    curves_png: Output[Artifact],
    metrics: Output[Metrics],
) -> bool:
    """Pick the best candidate, write the results and candidates tables, the vibe page and the per-chunk curves; return whether the release gate passed."""
    from posttrain.components._runtime import run_stage

    outputs = {"model": model, "report": report, "results": results, "vibe": vibe, "curves": curves, "curves_png": curves_png, "metrics": metrics}
    return run_stage("select_best", config, {"scoreboard": scoreboard}, outputs).params["passed"]
