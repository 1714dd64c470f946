"""The evaluation report: one list of sections (:class:`components.bit.report.Section`, the
analysis report's machinery) rendered as a self-contained page. The verdict comes first, then
the gate's rules with their figures and intervals, the comparison with the served model, the
curves, the confusion heat map, per-class figures, the worst mistakes, likely label errors,
the HyperRule and the dataset."""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from components.bit import dataset as ds
from components.bit import hyperrule, label_issues
from components.bit.evaluation.metrics import confusion_matrix, frequent_classes
from components.bit.plots import png_base64
from components.bit.report import Section, sections_html

_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
    "figure{display:inline-block;margin:4px;text-align:center;font-size:12px;max-width:140px}"
    "figure img{max-width:100%}"
)


def rule_of(run: str) -> hyperrule.HyperRule | None:
    path = os.path.join(run, ds.HYPERRULE_FILE)
    return hyperrule.load(path) if os.path.exists(path) else None


def training_curves(log_dir: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Scalars from a run's TensorBoard logs: {run: {tag: [(step, value)]}}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for run in ("train", "validation"):
        folder = os.path.join(log_dir, run)
        if not os.path.isdir(folder):
            continue
        accumulator = EventAccumulator(folder, size_guidance={"tensors": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("tensors", []):
            curves.setdefault(run, {})[tag] = [
                (e.step, float(np.asarray(tensor_util.make_ndarray(e.tensor_proto))))
                for e in accumulator.Tensors(tag)
            ]
    return curves


def _interval(f: Mapping[str, Any]) -> str:
    return f"[{f['low']:+.4f}, {f['high']:+.4f}]" if "low" in f else ""


def _rule_cells(rule: Mapping[str, Any]) -> list[str]:
    """rule, outcome, estimate, interval, p-value, sentence."""
    f = rule.get("figures") or {}
    estimate, interval, p = "", _interval(f), ""
    if "difference" in f:
        estimate, p = f"{f['difference']:+.4f} accuracy", f"{f['p_value']:.2g}"
    elif "threshold" in f:
        estimate, interval = f"{f['accuracy']:.4f} accuracy", f"[{f['low']:.4f}, {f['high']:.4f}]"
    elif "majority_rate" in f:
        estimate = f"{f['accuracy']:.4f} vs {f['majority_rate']:.4f}"
    elif "classes" in f:
        estimate = (f"{f['classes']} classes: {len(f['regressed'])} regressed, "
                    f"{len(f['too_few'])} too few to tell")  # fmt: skip
    elif "calibration_error" in f:
        estimate = f"{f['calibration_error']:.4f} vs {f['other_calibration_error']:.4f}"
    outcome = "passed" if rule["passed"] else "FAILED"
    return [rule["rule"], outcome, estimate, interval, p, rule["detail"]]


def verdict_section(result) -> Section:
    """The verdict sentence first, then every rule that ran with its figures."""
    verdict = "BLESSED" if result.blessed else "NOT BLESSED"
    table = [["rule", "outcome", "estimate", "interval", "McNemar p", "why"]]
    table += [_rule_cells(r) for r in result.rules]
    settings = result.gate_settings
    paragraphs = [f"{verdict}: {result.reason}"]
    if settings:
        paragraphs.append(
            f"Intervals at {settings['confidence_level']:.0%} confidence; tolerance "
            f"{settings['baseline_tolerance']:g}, per-class recall margin "
            f"{settings['class_recall_margin']:g}, calibration margin "
            f"{settings['calibration_margin']:g}."
        )
    return Section(f"Gate ({verdict.lower()})", paragraphs, table=table)


def summary_section(metrics: Mapping[str, Any]) -> Section:
    rows = [
        ("examples", metrics["examples"]),
        ("top-1 accuracy", metrics["accuracy"]),
        (f"top-{metrics['top5_k']} accuracy", metrics["top5_accuracy"]),
        ("loss", metrics["loss"]),
        ("macro F1", metrics["macro_f1"]),
        ("expected calibration error", metrics["expected_calibration_error"]),
        ("majority-class rate", metrics["majority_rate"]),
        ("leaked examples (near-duplicate in training)", metrics["without_leaked"]["leaked"]),
        ("top-1 accuracy without leaked examples", metrics["without_leaked"]["accuracy"]),
    ]
    table = [["metric", "value"]] + [
        [k, f"{v:.4f}" if isinstance(v, float) else f"{v:,}"] for k, v in rows
    ]
    return Section("Metrics", table=table)


def served_section(result) -> Section | None:
    """This model and the served one on the same examples: this data, its own test data."""
    if not result.baseline:
        return None
    served = result.metrics.get("served_data") or {}
    section = Section("Against the served model", [result.baseline])
    table = [["data", "this model", "served model", "difference", "interval", "McNemar p",
              "examples"]]  # fmt: skip
    for c in result.comparisons:
        data = f"this {result.split} split" if c["rule"] == "baseline" else (
            "the served model's test data")  # fmt: skip
        table.append([data, f"{c['accuracy']:.4f}", f"{c['other_accuracy']:.4f}",
                      f"{c['difference']:+.4f}", _interval(c), f"{c['p_value']:.2g}",
                      f"{c['examples']:,}"])  # fmt: skip
    if result.baseline_accuracy is None:
        section.paragraphs.append("The served model predicts other classes: not compared on "
                                  "this data.")  # fmt: skip
    if served.get("skipped"):
        section.paragraphs.append(
            f"{served['skipped']:,} examples of its test data are of "
            "classes this model does not predict: left out for both."
        )
    elif served.get("note"):
        section.paragraphs.append(served["note"] + ".")
    section.table = table if len(table) > 1 else None
    return section


def classes_section(result) -> Section | None:
    """The classes whose recall dropped against the served model, or too small to tell."""
    found = next((r["figures"] for r in result.rules if r["rule"] == "per class"), None)
    if not found or not (found["regressed"] or found["too_few"]):
        return None
    table = [["class", "served recall", "recall", "change", "interval", "status", "examples"]]
    for r in found["regressed"] + found["too_few"]:
        status = r["status"] + (f" (about {r['needed']:,} would tell)" if r["needed"] else "")
        table.append([r["class"], f"{r['other_recall']:.3f}", f"{r['recall']:.3f}",
                      f"{r['change']:+.3f}", f"[{r['low']:+.3f}, {r['high']:+.3f}]", status,
                      f"{r['examples']:,}"])  # fmt: skip
    words = (f"Intervals at {found['confidence']:.0%} for all {found['classes']} classes "
             f"together; margin {found['margin']:g}.")  # fmt: skip
    return Section("Per-class recall against the served model", [words], table=table)


def _curves_section(curves: Mapping[str, Mapping[str, list]]) -> Section | None:
    if not curves:
        return None

    def draw(fig, ax):
        for run, tags in curves.items():
            for tag in ("loss", "accuracy"):
                if tag in tags:
                    steps, values = zip(*tags[tag], strict=True)
                    ax.plot(steps, values, label=f"{run} {tag}")
        ax.set_xlabel("step")
        ax.set_title("Training curves")
        ax.legend()

    return Section("Training", pictures=[("training curves", [png_base64(draw, (6, 4))])])


def _matrix_section(metrics: Mapping[str, Any], labels: Sequence[str]) -> Section:
    shown = frequent_classes(metrics)
    matrix = confusion_matrix(metrics, shown)

    def draw(fig, ax):
        image = ax.imshow(matrix, cmap="Blues")
        names = [labels[i] for i in shown]
        ax.set_xticks(range(len(shown)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(shown)), names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        fig.colorbar(image)

    note = "" if len(shown) == len(labels) else f" ({len(shown)} most frequent classes)"
    picture = ("rows: true class, columns: predicted", [png_base64(draw, (7, 6))])
    return Section(f"Confusion matrix{note}", pictures=[picture])


def _per_class_section(metrics: Mapping[str, Any]) -> Section:
    table = [["class", "precision", "recall", "F1", "support"]] + [
        [c["class"], f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}",
         str(c["support"])]
        for c in metrics["per_class"]
    ]  # fmt: skip
    return Section("Per class", table=table)


def _mistakes_section(worst: Sequence[Mapping[str, Any]]) -> Section | None:
    if not worst:
        return None
    pictures = [(f"true {w['true']}, predicted {w['predicted']} ({w['confidence']:.2f})",
                 [w["image"]]) for w in worst]  # fmt: skip
    return Section("Most confident mistakes", pictures=pictures)


def _issues_section(result) -> Section:
    """The likely label errors: thumbnails, given vs predicted label, and the score."""
    skipped = result.metrics.get("label_issues_skipped")
    if skipped:
        return Section("Likely label errors", [f"Not searched: {skipped}."])
    section = Section(
        f"Likely label errors ({len(result.label_issues):,})",
        [f"Confident learning (cleanlab) on the {result.split} split's out-of-sample "
         "probabilities, lowest probability of the given label first. The full list is "
         f"{label_issues.ISSUES_FILE}: review it and pass it back as --exclude-list to leave "
         "those images out of the next run."],
    )  # fmt: skip
    for i in result.label_issues[: label_issues.SHOWN]:
        thumbnail = result.issue_thumbnails.get(i["index"], "")
        caption = (f"given {i['given']}, predicted {i['predicted']}, p(given) "
                   f"{i['label_quality']:.3f}, {i['uri'].rsplit('/', 1)[-1]}")  # fmt: skip
        section.pictures.append((caption, [thumbnail] if thumbnail else []))
    return section


def _dataset_section(manifest: ds.Manifest) -> Section:
    table = [["split", "examples", "shards"]] + [
        [name, str(split.examples), str(len(split.shards))]
        for name, split in manifest.splits.items()
    ]
    return Section(
        "Dataset",
        [f"{manifest.num_classes} classes; source {manifest.source.get('uri')}; "
         f"{manifest.totals['rejected']} inputs rejected in preprocessing."],
        table=table,
    )  # fmt: skip


def sections(result, curves, rule: hyperrule.HyperRule | None, manifest) -> list[Section]:
    found = [
        verdict_section(result),
        summary_section(result.metrics),
        served_section(result),
        classes_section(result),
        _curves_section(curves),
        _matrix_section(result.metrics, result.labels),
        _per_class_section(result.metrics),
        _mistakes_section(result.worst),
        _issues_section(result),
        Section("BiT-HyperRule", preformatted=hyperrule.format_table(rule)) if rule else None,
        _dataset_section(manifest),
    ]
    return [s for s in found if s is not None]


def html_report(result, curves, rule: hyperrule.HyperRule | None, manifest: ds.Manifest) -> str:
    """A self-contained page: the verdict first, then every section."""
    body = [f"<h1>Evaluation on the {html.escape(result.split)} split</h1>"]
    body += sections_html(sections(result, curves, rule, manifest))
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>bittune evaluation</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n"
    )


def kfp_confusion_matrix(result) -> tuple[list[str], list[list[int]]]:
    """(class names, matrix) for KFP's ClassificationMetrics, limited to the most frequent
    classes so that the UI stays readable."""
    shown = frequent_classes(result.metrics)
    matrix = confusion_matrix(result.metrics, shown)
    return [result.labels[i] for i in shown], matrix.tolist()
