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
    },
    returns="The URI of the pushed version.",
)
def push_model(
    trained_model: dsl.Input[dsl.Model],
    evaluation: dsl.Input[dsl.Artifact],
    dataset: dsl.Input[dsl.Dataset],
    serving_root: str,
    model: str,
    pipeline_run: str,
    pushed: dsl.Output[dsl.Model],
) -> str:
    from components.bit.errors import exit_on_error, report_result

    exit_on_error()
    import json
    import os

    from components.bit import params
    from components.bit.push import model_card, push

    params.require_inputs(locals())

    def load(*parts):
        with open(os.path.join(*parts), encoding="utf-8") as f:
            return json.load(f)

    card = model_card(
        load(evaluation.path, "metrics.json"),
        load(trained_model.path, "hyperrule.json"),
        load(dataset.path, "manifest.json"),
        {
            "model_source": model,
            "pipeline_run": pipeline_run,
            "model": trained_model.uri,
            "dataset": dataset.uri,
            "evaluation": evaluation.uri,
        },
    )
    target = push(trained_model.path, serving_root or pushed.path, card)
    if not serving_root:  # kept in this step's artifact: name it by its storage URI
        target = pushed.uri + target[len(pushed.path) :]
    pushed.metadata["version_uri"] = target
    report_result(f"pushed {target}")
    return target
