from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from posttrain.components._images import DEFAULTS


@dsl.component(base_image=DEFAULTS["train"], install_kfp_package=False)
def sft(config: str, tokenized: Input[Dataset], policy: Input[Model], model: Output[Model], metrics: Output[Metrics]):
    """Train the policy with TRL's SFTTrainer (sft)."""
    from posttrain.components._runtime import run_stage

    run_stage("sft", config, {"tokenized": tokenized, "policy": policy}, {"model": model, "metrics": metrics})
