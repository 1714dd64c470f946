"""Evaluation of an exported model, its report, and the gate that blesses it for serving.

The exported SavedModel itself is evaluated (the artifact that would be pushed), on the test
split (validation when there is none), streaming: every example counts, the last partial batch
too, and memory does not grow with the number of classes beyond a few vectors of that length.
"""

from __future__ import annotations

import base64
import dataclasses
import heapq
import html
import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from components.bit import storage
from components.bit.errors import BittuneError

ECE_BINS = 15
WORST_SHOWN = 16
MATRIX_CLASSES = 30  # classes shown in the confusion heat map (the most frequent ones)


class EvaluationError(BittuneError):
    """Evaluation cannot run, with the reason."""


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    data_dir: str
    model_dir: str
    output_dir: str | None = None
    split: str | None = None  # None: test, else validation
    baseline_model: str | None = None
    threshold: float = 0.0  # minimum top-1 accuracy to bless
    tolerance: float = 0.0  # how much worse than the baseline is still blessed
    batch_size: int = 64


@dataclasses.dataclass
class Tally:
    """Streaming counts from which every metric is computed."""

    num_classes: int
    examples: int = 0
    correct: int = 0
    top5: int = 0
    loss_sum: float = 0.0
    pairs: dict[tuple[int, int], int] = dataclasses.field(default_factory=dict)
    bin_count: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(ECE_BINS))
    bin_confidence: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(ECE_BINS))
    bin_correct: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(ECE_BINS))

    def add(self, probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Count a batch; return its predicted classes."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        predicted = probabilities.argmax(axis=1)
        k = min(5, self.num_classes)
        top = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
        self.examples += len(labels)
        self.correct += int((predicted == labels).sum())
        self.top5 += int((top == labels[:, None]).any(axis=1).sum())
        true_p = probabilities[np.arange(len(labels)), labels]
        self.loss_sum += float(-np.log(np.clip(true_p, 1e-12, 1.0)).sum())
        for t, p in zip(labels.tolist(), predicted.tolist(), strict=True):
            self.pairs[(t, p)] = self.pairs.get((t, p), 0) + 1
        confidence = probabilities.max(axis=1)
        bins = np.minimum((confidence * ECE_BINS).astype(int), ECE_BINS - 1)
        np.add.at(self.bin_count, bins, 1)
        np.add.at(self.bin_confidence, bins, confidence)
        np.add.at(self.bin_correct, bins, (predicted == labels).astype(float))
        return predicted


def metrics_from(tally: Tally, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, top-5, loss, per-class precision/recall/F1/support, confusion pairs, ECE."""
    n = max(tally.examples, 1)
    classes = len(labels)
    support = np.zeros(classes, np.int64)
    predicted = np.zeros(classes, np.int64)
    hits = np.zeros(classes, np.int64)
    for (t, p), count in tally.pairs.items():
        support[t] += count
        predicted[p] += count
        if t == p:
            hits[t] += count
    precision = np.divide(hits, predicted, out=np.zeros(classes), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros(classes), where=support > 0)
    f1 = np.divide(
        2 * precision * recall,
        precision + recall,
        out=np.zeros(classes),
        where=(precision + recall) > 0,
    )
    ece = float(np.abs(tally.bin_correct - tally.bin_confidence).sum() / n)
    present = support > 0
    return {
        "examples": tally.examples,
        "accuracy": tally.correct / n,
        "top5_accuracy": tally.top5 / n,
        "top5_k": min(5, classes),
        "loss": tally.loss_sum / n,
        "expected_calibration_error": ece,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": [
            {
                "class": labels[i],
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in range(classes)
        ],
        "confusion": [[t, p, c] for (t, p), c in sorted(tally.pairs.items())],
    }


def frequent_classes(metrics: Mapping[str, Any]) -> list[int]:
    """The (at most :data:`MATRIX_CLASSES`) classes with the most examples, in index order:
    the ones a confusion matrix shows so that it stays readable."""
    support = np.array([c["support"] for c in metrics["per_class"]])
    return sorted(np.argsort(-support, kind="stable")[:MATRIX_CLASSES].tolist())


def confusion_matrix(metrics: Mapping[str, Any], classes: Sequence[int]) -> np.ndarray:
    """The dense confusion matrix restricted to ``classes`` (rows: true, columns: predicted)."""
    position = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), np.int64)
    for t, p, count in metrics["confusion"]:
        if t in position and p in position:
            matrix[position[t], position[p]] += count
    return matrix


# ---------------------------------------------------------------------------------------------
# Running a model over a split


def _serving_function(model_dir: str):
    from components.bit.training import EXPORT_DIR, tf

    path = model_dir
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        path = os.path.join(model_dir, EXPORT_DIR)
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise EvaluationError(f"no exported model in {model_dir} (did training finish?)")
    return tf.saved_model.load(path).signatures["serving_default"]


def run_model(model_dir: str, paths: Sequence[str], num_classes: int, batch_size: int = 64):
    """Stream the split's records through the exported model; (tally, worst mistakes)."""
    from components.bit.training import _records

    serve = _serving_function(model_dir)
    tally = Tally(num_classes)
    worst: list[tuple[float, int, bytes, int, int]] = []  # min-heap on wrong confidence
    records = _records(paths).map(lambda ex: (ex["image/encoded"], ex["label"])).batch(batch_size)
    for encoded, labels in records:
        out = serve(image_bytes=encoded)
        probabilities = out["probabilities"].numpy()
        if probabilities.shape[1] != num_classes:
            raise EvaluationError(
                f"the model predicts {probabilities.shape[1]} classes, the data has {num_classes}"
            )
        labels = labels.numpy()
        predicted = tally.add(probabilities, labels)
        for i in np.flatnonzero(predicted != labels):
            item = (
                float(probabilities[i].max()),
                tally.examples + int(i),
                encoded[i].numpy(),
                int(labels[i]),
                int(predicted[i]),
            )
            if len(worst) < WORST_SHOWN:
                heapq.heappush(worst, item)
            else:
                heapq.heappushpop(worst, item)
    return tally, sorted(worst, reverse=True)


def gate(accuracy: float, threshold: float, baseline: float | None, tolerance: float):
    """(blessed, reason): accuracy at least the threshold and, with a baseline on the same data,
    no worse than it by more than the tolerance."""
    if accuracy < threshold:
        return False, f"accuracy {accuracy:.4f} is below the threshold {threshold:.4f}"
    if baseline is not None and accuracy < baseline - tolerance:
        return False, (
            f"accuracy {accuracy:.4f} is worse than the baseline's {baseline:.4f} by more than "
            f"the tolerance {tolerance:.4f}"
        )
    reason = f"accuracy {accuracy:.4f} >= threshold {threshold:.4f}"
    if baseline is not None:
        reason += f" and within {tolerance:.4f} of the baseline's {baseline:.4f}"
    return True, reason


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Evaluate, gate, and (with an output folder) write metrics.json and report.html."""
    from components.bit.preprocess import load_manifest
    from components.bit.training import shard_paths

    manifest = load_manifest(config.data_dir)
    split = config.split or ("test" if manifest["splits"].get("test") else "validation")
    paths = shard_paths(manifest, split)
    if not paths or not manifest["splits"][split]["examples"]:
        raise EvaluationError(f"the dataset has no {split} examples to evaluate on")
    if not 0 <= config.threshold <= 1 or config.tolerance < 0:
        raise EvaluationError("threshold must be in [0, 1] and tolerance >= 0")
    labels = manifest["labels"]
    tally, worst = run_model(config.model_dir, paths, len(labels), config.batch_size)
    metrics = metrics_from(tally, labels)
    if metrics["examples"] != manifest["splits"][split]["examples"]:
        raise EvaluationError(
            f"evaluated {metrics['examples']} examples, the manifest lists "
            f"{manifest['splits'][split]['examples']}"
        )
    baseline = None
    if config.baseline_model:
        base_tally, _ = run_model(config.baseline_model, paths, len(labels), config.batch_size)
        baseline = metrics_from(base_tally, labels)["accuracy"]
    blessed, reason = gate(metrics["accuracy"], config.threshold, baseline, config.tolerance)
    result = {
        "split": split,
        "labels": labels,
        "metrics": metrics,
        "baseline_accuracy": baseline,
        "blessed": blessed,
        "reason": reason,
        "worst": [
            {
                "image": base64.b64encode(data).decode(),
                "true": labels[t],
                "predicted": labels[p],
                "confidence": conf,
            }
            for conf, _, data, t, p in worst
        ],
    }
    if config.output_dir:
        write_outputs(result, config, manifest)
    return result


# ---------------------------------------------------------------------------------------------
# Outputs


def write_outputs(result: dict[str, Any], config: EvalConfig, manifest: Mapping) -> None:
    public = {k: v for k, v in result.items() if k != "worst"}
    storage.write_text(
        storage.join(config.output_dir, "metrics.json"),
        json.dumps(public, indent=1, ensure_ascii=False) + "\n",
    )
    page = html_report(result, config.model_dir, manifest)
    storage.write_text(storage.join(config.output_dir, "report.html"), page)


def training_curves(model_dir: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Scalars from the run's TensorBoard logs: {run: {tag: [(step, value)]}}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for run in ("train", "validation"):
        folder = os.path.join(model_dir, "logs", run)
        if not os.path.isdir(folder):
            continue
        accumulator = EventAccumulator(folder, size_guidance={"tensors": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("tensors", []):
            values = [
                (e.step, float(np.asarray(_tensor_value(e.tensor_proto))))
                for e in accumulator.Tensors(tag)
            ]
            curves.setdefault(run, {})[tag] = values
    return curves


def _tensor_value(proto):
    from tensorboard.util import tensor_util

    return tensor_util.make_ndarray(proto)


def _png(draw, size=(6, 4)) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        draw(fig, ax)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        return base64.b64encode(buffer.getvalue()).decode("ascii")
    finally:
        plt.close(fig)


def html_report(result: Mapping[str, Any], model_dir: str, manifest: Mapping) -> str:
    """A self-contained page: curves, confusion heat map, per-class table, worst mistakes,
    the HyperRule and the dataset summary."""
    esc = html.escape
    metrics, labels = result["metrics"], result["labels"]
    parts = [f"<h1>Evaluation on the {esc(result['split'])} split</h1>"]
    verdict = "BLESSED" if result["blessed"] else "NOT BLESSED"
    parts.append(f"<p class='verdict'><b>{verdict}</b>: {esc(result['reason'])}</p>")
    parts.append(
        "<table>"
        + "".join(
            f"<tr><th>{esc(k)}</th><td>{v:.4f}</td></tr>"
            if isinstance(v, float)
            else f"<tr><th>{esc(k)}</th><td>{v}</td></tr>"
            for k, v in [
                ("examples", metrics["examples"]),
                ("top-1 accuracy", metrics["accuracy"]),
                (f"top-{metrics['top5_k']} accuracy", metrics["top5_accuracy"]),
                ("loss", metrics["loss"]),
                ("macro F1", metrics["macro_f1"]),
                ("expected calibration error", metrics["expected_calibration_error"]),
            ]
        )
        + "</table>"
    )
    curves = training_curves(model_dir)
    if curves:

        def draw_curves(fig, ax):
            for run, tags in curves.items():
                for tag in ("loss", "accuracy"):
                    if tag in tags:
                        steps, values = zip(*tags[tag], strict=True)
                        ax.plot(steps, values, label=f"{run} {tag}")
            ax.set_xlabel("step")
            ax.set_title("Training curves")
            ax.legend()

        parts.append(
            f"<h2>Training</h2><img alt='training curves' src='data:image/png;base64,"
            f"{_png(draw_curves)}'>"
        )
    shown = frequent_classes(metrics)
    matrix = confusion_matrix(metrics, shown)

    def draw_matrix(fig, ax):
        image = ax.imshow(matrix, cmap="Blues")
        names = [labels[i] for i in shown]
        ax.set_xticks(range(len(shown)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(shown)), names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        fig.colorbar(image)

    note = "" if len(shown) == len(labels) else f" ({len(shown)} most frequent classes)"
    parts.append(
        f"<h2>Confusion matrix{note}</h2><img alt='confusion matrix' "
        f"src='data:image/png;base64,{_png(draw_matrix, (7, 6))}'>"
    )
    rows = "".join(
        f"<tr><td>{esc(c['class'])}</td><td>{c['precision']:.3f}</td><td>{c['recall']:.3f}</td>"
        f"<td>{c['f1']:.3f}</td><td>{c['support']}</td></tr>"
        for c in metrics["per_class"]
    )
    parts.append(
        "<h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th>"
        f"<th>F1</th><th>support</th></tr>{rows}</table>"
    )
    if result["worst"]:
        cells = "".join(
            f"<figure><img alt='mistake' src='data:image/{_image_kind(w['image'])};base64,"
            f"{w['image']}'><figcaption>true {esc(w['true'])}<br>predicted "
            f"{esc(w['predicted'])} ({w['confidence']:.2f})</figcaption></figure>"
            for w in result["worst"]
        )
        parts.append(f"<h2>Most confident mistakes</h2><div class='grid'>{cells}</div>")
    rule_path = os.path.join(model_dir, "hyperrule.json")
    if os.path.exists(rule_path):
        from components.bit import hyperrule

        with open(rule_path, encoding="utf-8") as f:
            table = hyperrule.format_table(hyperrule.from_dict(json.load(f)))
        parts.append(f"<h2>BiT-HyperRule</h2><pre>{esc(table)}</pre>")
    dataset = "".join(
        f"<tr><td>{esc(split)}</td><td>{e['examples']}</td><td>{len(e['shards'])}</td></tr>"
        for split, e in manifest["splits"].items()
    )
    parts.append(
        f"<h2>Dataset</h2><p>{len(labels)} classes; "
        f"source {esc(str(manifest['source'].get('uri')))}; "
        f"{manifest['totals']['rejected']} inputs rejected in preprocessing.</p>"
        f"<table><tr><th>split</th><th>examples</th><th>shards</th></tr>{dataset}</table>"
    )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
        ".grid{display:flex;flex-wrap:wrap}figure{margin:4px;text-align:center;font-size:12px}"
        "figure img{width:96px;height:96px;image-rendering:pixelated;object-fit:contain}"
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>bittune evaluation</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def _image_kind(b64: str) -> str:
    return "png" if base64.b64decode(b64[:12]).startswith(b"\x89PNG") else "jpeg"


def kfp_confusion_matrix(result: Mapping[str, Any]) -> tuple[list[str], list[list[int]]]:
    """(class names, matrix) for KFP's ClassificationMetrics, limited to the most frequent
    classes so that the UI stays readable."""
    metrics = result["metrics"]
    shown = frequent_classes(metrics)
    matrix = confusion_matrix(metrics, shown)
    return [result["labels"][i] for i in shown], matrix.tolist()
