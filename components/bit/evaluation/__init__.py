"""Evaluation of an exported model, its report, and the gate that blesses it for serving.

The exported SavedModel itself is evaluated (the artifact that would be pushed), on the test
split (validation when there is none), streaming: every example counts, the last partial batch
too, and memory does not grow with the number of classes beyond a few vectors of that length.

The gate (:mod:`.rules`, rules as data) blesses a model only when it means something: it must
beat the majority-class rate of the evaluated split (a model at chance is never pushed), reach
``blessing_threshold`` when one is set (optionally the lower bound of accuracy's interval),
and, against the baseline -- the given one, or by default the newest version already under
``serving_root`` -- be no worse than ``baseline_tolerance`` with confidence on the same
examples (a paired comparison, :mod:`.stats`), both on this data and on the data the baseline
was evaluated on (its model card's shards), keep every class's recall and its calibration.
The verdict names the rule that decided, the interval and the p-value.

Modules: :mod:`.metrics` (figures from streaming counts), :mod:`.scoring` (running models over
data), :mod:`.stats` (paired comparison), :mod:`.rules` (the gate), :mod:`.core` (the stage:
config, result, :func:`evaluate`), :mod:`.report` (the HTML report).
"""

from components.bit.evaluation.core import (
    METRICS_FILE,
    REPORT_FILE,
    EvalConfig,
    EvalResult,
    evaluate,
    write_outputs,
)
from components.bit.evaluation.metrics import (
    ECE_BINS,
    MATRIX_CLASSES,
    Tally,
    confusion_matrix,
    frequent_classes,
    metrics_from,
)
from components.bit.evaluation.report import html_report, kfp_confusion_matrix, training_curves
from components.bit.evaluation.rules import RULES, Evidence, GateSettings, Rule, Verdict, gate
from components.bit.evaluation.scoring import (
    WORST_SHOWN,
    EvaluationError,
    Scored,
    count_remapped,
    on_served_data,
    run_model,
    score_remapped,
    thumbnails_at,
)
from components.bit.evaluation.stats import Paired

__all__ = [
    "ECE_BINS", "MATRIX_CLASSES", "METRICS_FILE", "REPORT_FILE", "RULES", "WORST_SHOWN",
    "EvalConfig", "EvalResult", "EvaluationError", "Evidence", "GateSettings", "Paired", "Rule",
    "Scored", "Tally", "Verdict", "confusion_matrix", "count_remapped", "evaluate",
    "frequent_classes", "gate", "html_report", "kfp_confusion_matrix", "metrics_from",
    "on_served_data", "run_model", "score_remapped", "thumbnails_at", "training_curves",
    "write_outputs",
]  # fmt: skip
