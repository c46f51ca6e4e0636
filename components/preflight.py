from kfp import dsl
from kfp.dsl import Dataset, Metrics, Model, Output

from posttrain.components._images import DEFAULTS


@dsl.component(base_image=DEFAULTS["cpu"], install_kfp_package=False)
def preflight(config: str, base_model: Output[Model], scoreboard: Output[Dataset], metrics: Output[Metrics]):
    """Check model, store and data sources; pin the base model; start the scoreboard."""
    from posttrain.components._runtime import run_stage

    run_stage("preflight", config, {}, {"base_model": base_model, "scoreboard": scoreboard, "metrics": metrics})
