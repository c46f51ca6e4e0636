from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from posttrain.components._images import DEFAULTS


@dsl.component(base_image=DEFAULTS["train"], install_kfp_package=False)
def midtrain(config: str, tokenized: Input[Dataset], policy: Input[Model], model: Output[Model], metrics: Output[Metrics]):
    """Train the policy with TRL's SFTTrainer (midtrain)."""
    from posttrain.components._runtime import run_stage

    run_stage("midtrain", config, {"tokenized": tokenized, "policy": policy}, {"model": model, "metrics": metrics})
