from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from posttrain.components._images import DEFAULTS


@dsl.component(base_image=DEFAULTS["cpu"], install_kfp_package=False)
def tokenize(config: str, data: Input[Dataset], base_model: Input[Model], tokenized: Output[Dataset], metrics: Output[Metrics]):
    """Tokenise, mask and pack a prepared dataset once, into the checkpoint store."""
    from posttrain.components._runtime import run_stage

    run_stage("tokenize", config, {"data": data, "base_model": base_model}, {"tokenized": tokenized, "metrics": metrics})
