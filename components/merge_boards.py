from typing import List  # noqa: UP035 - KFP reads Input[List[...]] (typing.List) as a collected artifact list

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from posttrain.components._images import DEFAULTS


@dsl.component(base_image=DEFAULTS["cpu"], install_kfp_package=False)
def merge_boards(config: str, boards: Input[List[Dataset]], scoreboard: Output[Dataset]):  # noqa: UP006
    """One scoreboard from the sweep branches' scoreboards (shared rows once)."""
    from posttrain.components._runtime import run_stage

    run_stage("merge_boards", config, {f"board-{i}": b for i, b in enumerate(boards)}, {"scoreboard": scoreboard})
