from kfp import dsl
from kfp.dsl import Metrics, Output

from posttrain.components._images import DEFAULTS


@dsl.component(base_image=DEFAULTS["cpu"], install_kfp_package=False)
def preflight(config: str, metrics: Output[Metrics]):
    """Check secrets, store, models, data, images and GPUs before any GPU is requested (preflight)."""
    from posttrain.components._runtime import run_stage

    run_stage("preflight", config, {}, {"metrics": metrics})
