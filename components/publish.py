from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from posttrain.components._images import DEFAULTS


@dsl.component(base_image=DEFAULTS["cpu"], install_kfp_package=False)
def publish(config: str, model: Input[Model], results: Input[Dataset], published: Output[Model]):
    """Copy the selected model to the release location with its model card."""
    from posttrain.components._runtime import run_stage

    run_stage("publish", config, {"model": model, "results": results}, {"published": published})
