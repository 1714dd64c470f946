"""Metrics of a model on a split, from streaming counts: accuracy, top-5, loss, per-class
precision/recall/F1, the confusion pairs, expected calibration error and the majority-class rate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ECE_BINS = 15
MATRIX_CLASSES = 30  # classes shown in the confusion heat map (the most frequent ones)


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
    """Accuracy, top-5, loss, per-class precision/recall/F1/support, confusion pairs, ECE, and
    the majority-class rate (the accuracy of always guessing the most frequent class)."""
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
        "majority_rate": float(support.max() / n) if classes else 0.0,
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
