"""KFP component: push a blessed model to the next version under the serving location."""

from kfp import dsl

from components.component import component
from components.image import BITTUNE_IMAGE


@component(
    BITTUNE_IMAGE,
    "Copy a blessed model to a newly claimed version under the serving location, with a "
    "model card (data, HyperRule, metrics, gate, lineage).",
    {
        "trained_model": "The training step's model.",
        "evaluation": "The evaluation step's output (metrics.json).",
        "dataset": "The dataset's manifest.",
        "pipeline_run": "The pipeline run, for the card.",
        "pushed": "The version, when serving_root is empty.",
        "extras": "The export step's files (warm-up requests, exports) and their parity.",
    },
    returns="The URI of the pushed version.",
)
def push_model(
    trained_model: dsl.Input[dsl.Model],
    evaluation: dsl.Input[dsl.Artifact],
    dataset: dsl.Input[dsl.Dataset],
    extras: dsl.Input[dsl.Artifact],
    serving_root: str,
    model: str,
    pipeline_run: str,
    pushed: dsl.Output[dsl.Model],
) -> str:
    from components.bit import stages

    return stages.push_model(locals())
