"""KFP component: which training image a run needs, from the accelerator it asked for."""

from components.component import component
from components.image import BITTUNE_IMAGE


@component(
    BITTUNE_IMAGE,
    "Decide where training runs: tpu (the TPU image), gpu, or cpu (both in the GPU image).",
    {},
    returns="tpu, gpu or cpu.",
)
def choose_trainer(accelerator_type: str, accelerator_count: int) -> str:
    from components.bit.errors import exit_on_error

    exit_on_error()
    from components.bit import params

    params.require_inputs(locals())
    return params.accelerator_kind(accelerator_type, accelerator_count) or "cpu"
