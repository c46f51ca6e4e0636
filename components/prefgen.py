from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from posttrain.components._images import DEFAULTS


@dsl.component(base_image=DEFAULTS["generate"], install_kfp_package=False)
def prefgen(config: str, policy: Input[Model], prompts: Input[Dataset], pairs: Output[Dataset], metrics: Output[Metrics]):
    """Sample the policy, grade the samples, write preference pairs for one chunk."""
    from posttrain.components._runtime import run_stage

    run_stage("prefgen", config, {"policy": policy, "prompts": prompts}, {"pairs": pairs, "metrics": metrics})
