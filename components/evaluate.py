"""KFP component: evaluate the exported model and gate it."""

from kfp import dsl

from components.component import component
from components.image import BITTUNE_IMAGE


@component(
    BITTUNE_IMAGE,
    "Evaluate on the test split (validation if none) and decide whether to bless the model: "
    "it must beat the majority class, reach the threshold if set, and be no worse than the "
    "serving version with confidence (paired on the same examples), per class too.",
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
    threshold_on_lower_bound: bool,
    baseline_tolerance: float,
    confidence_level: float,
    class_recall_margin: float,
    calibration_margin: float,
    metrics: dsl.Output[dsl.Metrics],
    confusion: dsl.Output[dsl.ClassificationMetrics],
    report: dsl.Output[dsl.HTML],
    evaluation: dsl.Output[dsl.Artifact],
) -> bool:
    from components.bit import stages

    return stages.evaluate_model(locals())
