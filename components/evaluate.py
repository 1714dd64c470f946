"""KFP components: evaluate the exported model and gate it; push a blessed model for serving."""

from kfp import dsl

from components.image import BITTUNE_IMAGE


@dsl.component(base_image=BITTUNE_IMAGE, install_kfp_package=False)
def evaluate_model(
    dataset: dsl.Input[dsl.Dataset],
    model: dsl.Input[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
    confusion: dsl.Output[dsl.ClassificationMetrics],
    report: dsl.Output[dsl.HTML],
    evaluation: dsl.Output[dsl.Artifact],
    baseline_model: str = "",
    threshold: float = 0.0,
    tolerance: float = 0.0,
) -> bool:
    """Evaluate on the test split (validation if none) and decide whether to bless the model.

    Args:
        dataset: TFRecord dataset (manifest.json).
        model: The training output (saved_model, logs, hyperrule.json).
        baseline_model: A baseline training output or SavedModel to compare against ("" for none).
        threshold: Minimum top-1 accuracy to bless.
        tolerance: How much below the baseline's accuracy is still blessed.

    Returns:
        Whether the model passed the gate (blessed).
    """
    from components.bit.errors import exit_on_error

    exit_on_error()
    import json
    import os
    import shutil

    from components.bit import validation as v

    v.require(v.check_fraction("threshold", threshold), v.check_fraction("tolerance", tolerance))
    from components.bit.evaluation import EvalConfig, evaluate, kfp_confusion_matrix

    os.makedirs(evaluation.path, exist_ok=True)
    result = evaluate(
        EvalConfig(
            dataset.path,
            model.path,
            evaluation.path,
            baseline_model=baseline_model or None,
            threshold=threshold,
            tolerance=tolerance,
        )
    )
    values = result["metrics"]
    for name in ("accuracy", "top5_accuracy", "loss", "macro_f1", "expected_calibration_error"):
        metrics.log_metric(name, values[name])
    metrics.log_metric("examples", values["examples"])
    confusion.log_confusion_matrix(*kfp_confusion_matrix(result))
    shutil.copyfile(os.path.join(evaluation.path, "report.html"), report.path)
    evaluation.metadata.update(blessed=result["blessed"], reason=result["reason"])
    print(json.dumps({"blessed": result["blessed"], "reason": result["reason"]}))
    return result["blessed"]


@dsl.component(base_image=BITTUNE_IMAGE, install_kfp_package=False)
def push_model(
    model: dsl.Input[dsl.Model],
    evaluation: dsl.Input[dsl.Artifact],
    dataset: dsl.Input[dsl.Dataset],
    pushed: dsl.Output[dsl.Model],
    serving_root: str = "",
    model_source: str = "",
    pipeline_run: str = "",
) -> str:
    """Copy a blessed model to the next numbered version under the serving location, with a
    model card (data, HyperRule, metrics, lineage).

    Args:
        model: The training output.
        evaluation: The evaluation step's output (metrics.json).
        dataset: The TFRecord dataset (manifest.json).
        serving_root: Versioned serving folder (gs:// or local); "" keeps it in this artifact.
        model_source: The BiT model fine-tuned, for the card.
        pipeline_run: The pipeline run, for the card.

    Returns:
        The URI of the pushed version.
    """
    from components.bit.errors import exit_on_error

    exit_on_error()
    import json
    import os

    from components.bit.push import model_card, push

    def load(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    card = model_card(
        load(os.path.join(evaluation.path, "metrics.json")),
        load(os.path.join(model.path, "hyperrule.json")),
        load(os.path.join(dataset.path, "manifest.json")),
        {
            "model_source": model_source,
            "pipeline_run": pipeline_run,
            "model": model.uri,
            "dataset": dataset.uri,
            "evaluation": evaluation.uri,
        },
    )
    target = push(model.path, serving_root or pushed.path, card)
    pushed.metadata["version_uri"] = target
    return target
