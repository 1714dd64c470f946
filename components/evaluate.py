"""KFP component: evaluate the exported model and gate it."""

from kfp import dsl

from components.component import component
from components.image import BITTUNE_IMAGE


@component(
    BITTUNE_IMAGE,
    "Evaluate on the test split (validation if none) and decide whether to bless the model: "
    "it must beat the majority class, the threshold if set, and the serving version.",
    {
        "dataset": "The dataset's manifest (gather step).",
        "holdout_shards": "Every worker's validation and test shards.",
        "trained_model": "The training step's model (SavedModel, hyperrule.json).",
        "logs": "The training step's TensorBoard logs (for the report's curves).",
        "metrics": "Accuracy, top-5, loss, macro F1, calibration error.",
        "confusion": "The confusion matrix (most frequent classes).",
        "report": "The evaluation report (HTML).",
        "evaluation": "metrics.json and report.html.",
    },
    returns="Whether the model passed the gate (blessed).",
)
def evaluate_model(
    dataset: dsl.Input[dsl.Dataset],
    holdout_shards: dsl.Input[list[dsl.Dataset]],
    trained_model: dsl.Input[dsl.Model],
    logs: dsl.Input[dsl.Artifact],
    baseline_model: str,
    serving_root: str,
    blessing_threshold: float,
    baseline_tolerance: float,
    metrics: dsl.Output[dsl.Metrics],
    confusion: dsl.Output[dsl.ClassificationMetrics],
    report: dsl.Output[dsl.HTML],
    evaluation: dsl.Output[dsl.Artifact],
) -> bool:
    from components.bit.errors import exit_on_error, report_result

    exit_on_error()
    import os
    import shutil

    from components.bit import params

    params.require_inputs(locals())
    from components.bit.evaluation import EvalConfig, evaluate, kfp_confusion_matrix

    os.makedirs(evaluation.path, exist_ok=True)
    result = evaluate(
        EvalConfig(
            dataset.path,
            trained_model.path,
            evaluation.path,
            shard_dirs=tuple(a.path for a in holdout_shards),
            log_dir=logs.path,
            baseline=baseline_model or None,
            serving_root=serving_root or None,
            threshold=blessing_threshold,
            tolerance=baseline_tolerance,
        )
    )
    values = result["metrics"]
    for name in ("accuracy", "top5_accuracy", "loss", "macro_f1", "expected_calibration_error"):
        metrics.log_metric(name, values[name])
    metrics.log_metric("examples", values["examples"])
    confusion.log_confusion_matrix(*kfp_confusion_matrix(result))
    shutil.copyfile(os.path.join(evaluation.path, "report.html"), report.path)
    evaluation.metadata.update(blessed=result["blessed"], reason=result["reason"])
    verdict = "BLESSED" if result["blessed"] else "NOT BLESSED"
    report_result(f"{result['split']} accuracy {values['accuracy']:.4f}, {verdict}")
    return result["blessed"]
