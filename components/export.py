"""KFP component: after the gate, what a pushed version carries besides its SavedModel."""

from kfp import dsl

from components.component import component
from components.image import BITTUNE_IMAGE


@component(
    BITTUNE_IMAGE,
    "For a blessed model: TF Serving warm-up requests from test images, and each export of "
    "export_formats run beside the SavedModel on the evaluated split, kept only at or above "
    "its agreement threshold (a model the gate did not bless gets nothing).",
    {
        "trained_model": "The training step's model (SavedModel).",
        "evaluation": "The evaluation step's output (metrics.json: the verdict and split).",
        "dataset": "The dataset's manifest.",
        "holdout_shards": "Every worker's validation and test shards (warm-up, parity).",
        "train_shards": "Every worker's training shards (int8 calibration images).",
        "extras": "The files to push beside the SavedModel, and each export's parity.",
        "metrics": "Each export's top-1 agreement, max |Δprob| and accuracy.",
    },
    returns="The exports kept, comma-separated.",
)
def export_model(
    trained_model: dsl.Input[dsl.Model],
    evaluation: dsl.Input[dsl.Artifact],
    dataset: dsl.Input[dsl.Dataset],
    holdout_shards: dsl.Input[list[dsl.Dataset]],
    train_shards: dsl.Input[list[dsl.Dataset]],
    export_formats: str,
    export_agreement_float: float,
    export_agreement_int8: float,
    extras: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
) -> str:
    from components.bit import stages

    return stages.export_model(locals())
