from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from posttrain.components._images import DEFAULTS


@dsl.component(base_image=DEFAULTS["train"], install_kfp_package=False)
def preference_train(config: str, policy: Input[Model], pairs: Input[Dataset], model: Output[Model], metrics: Output[Metrics]):
    """Train one preference chunk with TRL's DPOTrainer."""
    from posttrain.components._runtime import run_stage

    run_stage("preference_train", config, {"policy": policy, "pairs": pairs}, {"model": model, "metrics": metrics})
