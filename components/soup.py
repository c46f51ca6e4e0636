from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from posttrain.components._images import DEFAULTS


@dsl.component(base_image=DEFAULTS["train"], install_kfp_package=False)
def soup(config: str, scoreboard: Input[Dataset], model: Output[Model], metrics: Output[Metrics]):
    """Average the weights of the best preference checkpoints on the scoreboard."""
    from posttrain.components._runtime import run_stage

    run_stage("soup", config, {"scoreboard": scoreboard}, {"model": model, "metrics": metrics})
