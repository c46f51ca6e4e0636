from kfp import dsl
from kfp.dsl import Dataset, Model, Output

from posttrain.components._images import DEFAULTS


@dsl.component(base_image=DEFAULTS["cpu"], install_kfp_package=False)
def pin_base(config: str, base_model: Output[Model], scoreboard: Output[Dataset]):
    """Pin the base model reference and start the run's scoreboard (pin_base)."""
    from posttrain.components._runtime import run_stage

    run_stage("pin_base", config, {}, {"base_model": base_model, "scoreboard": scoreboard})
