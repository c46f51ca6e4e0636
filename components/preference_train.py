from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from posttrain.components._images import DEFAULTS


@dsl.component(base_image=DEFAULTS["train"], install_kfp_package=False)
def preference_train(
    config: str,
    policy: Input[Model],
    reference: Input[Model],
    pairs: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    variant: str = "",
):
    """Train one preference chunk from `policy` against the frozen `reference` (reference-free losses ignore it)."""
    from posttrain.components._runtime import run_stage

    inputs = {"policy": policy, "reference": reference, "pairs": pairs}
    run_stage("preference_train", config, inputs, {"model": model, "metrics": metrics}, variant)
