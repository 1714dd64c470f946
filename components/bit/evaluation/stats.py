"""Paired comparison of two models on the same examples, and the uncertainty of one accuracy.

Two models scored on the same examples differ only where they disagree: ``better`` examples
this model gets right and the other wrong, ``worse`` the reverse. From those counts:

* the accuracy difference's confidence interval, a paired bootstrap over examples (seeded;
  resampling the examples is a multinomial draw over the three kinds of example -- better,
  worse, alike -- so ten thousand resamples cost no more than ten thousand draws);
* McNemar's exact test: under "no difference" each disagreement is a fair coin, so the
  two-sided p-value is the binomial test of ``better`` out of ``better + worse`` at 1/2
  (``scipy.stats.binomtest``; the same figure as statsmodels' ``mcnemar(exact=True)``);
* per class, the change of recall with the adjusted Wald interval of Bonett and Price (2012,
  "Adjusted Wald confidence interval for a difference of binomial proportions based on paired
  data", J. Educ. Behav. Stat. 37(4)): one pseudo-example added to each kind of disagreement,
  so a small class with no disagreement still gets an honest width instead of a point;
* one model's accuracy: the Clopper-Pearson interval (``binomtest(...).proportion_ci``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

RESAMPLES = 10_000
MOST_NEEDED = 10_000_000  # "more than" this many examples: the data cannot tell


@dataclasses.dataclass(frozen=True)
class Paired:
    """Two models on the same examples: whether each got each example right, and its class."""

    mine: np.ndarray  # bool per example: this model is right
    theirs: np.ndarray  # bool per example: the other model is right
    labels: np.ndarray  # the class index of each example
    classes: Sequence[str]  # class names, by index
    where: str  # what the examples are, for sentences ("this test split")

    def __post_init__(self) -> None:
        if not (len(self.mine) == len(self.theirs) == len(self.labels)):
            raise ValueError("paired results must cover the same examples")


@dataclasses.dataclass(frozen=True)
class Difference:
    """This model's accuracy minus the other's on the same examples, with its interval."""

    examples: int
    accuracy: float
    other_accuracy: float
    difference: float
    low: float
    high: float
    confidence: float
    better: int  # examples only this model gets right
    worse: int  # examples only the other model gets right
    p_value: float  # McNemar's exact test

    def significant(self) -> bool:
        return self.p_value < 1 - self.confidence

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def mcnemar_p(better: int, worse: int) -> float:
    """McNemar's exact two-sided p-value from the two counts of disagreement."""
    if better + worse == 0:
        return 1.0
    return float(stats.binomtest(better, better + worse, 0.5).pvalue)


def bootstrap_interval(
    better: int, worse: int, examples: int, confidence: float, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the paired accuracy difference, resampling examples."""
    if examples == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    shares = np.array([better, worse, examples - better - worse], dtype=np.float64) / examples
    draws = rng.multinomial(examples, shares, size=RESAMPLES)
    differences = (draws[:, 0] - draws[:, 1]) / examples
    tail = (1 - confidence) / 2
    low, high = np.quantile(differences, [tail, 1 - tail])
    return float(low), float(high)


def difference(paired: Paired, confidence: float, seed: int = 0) -> Difference:
    """The paired accuracy difference, its bootstrap interval and McNemar's p-value."""
    mine, theirs = np.asarray(paired.mine, bool), np.asarray(paired.theirs, bool)
    n = len(mine)
    better, worse = int((mine & ~theirs).sum()), int((theirs & ~mine).sum())
    low, high = bootstrap_interval(better, worse, n, confidence, seed)
    return Difference(
        examples=n,
        accuracy=float(mine.mean()) if n else 0.0,
        other_accuracy=float(theirs.mean()) if n else 0.0,
        difference=(better - worse) / n if n else 0.0,
        low=low,
        high=high,
        confidence=confidence,
        better=better,
        worse=worse,
        p_value=mcnemar_p(better, worse),
    )


def adjusted_wald(better: float, worse: float, examples: float, z: float) -> tuple[float, float]:
    """Bonett-Price adjusted Wald interval of a paired difference of proportions."""
    up, down = (better + 1) / (examples + 2), (worse + 1) / (examples + 2)
    change = up - down
    half = z * math.sqrt(max(up + down - change**2, 0.0) / (examples + 2))
    return change - half, change + half


def examples_to_tell(better: int, worse: int, examples: int, margin: float, z: float) -> int:
    """How many examples, disagreeing at the rates seen, an interval needs to fall wholly on
    one side of ``-margin`` (:data:`MOST_NEEDED` when it never would)."""

    def tells(n: int) -> bool:
        scale = n / max(examples, 1)
        low, high = adjusted_wald(better * scale, worse * scale, n, z)
        return low > -margin or high < -margin

    if tells(examples):
        return examples
    n = max(examples, 1)
    while not tells(n):
        if n >= MOST_NEEDED:
            return MOST_NEEDED
        n *= 2
    low = n // 2
    while n - low > 1:  # the smallest n that tells, between low (does not) and n (does)
        middle = (low + n) // 2
        low, n = (low, middle) if tells(middle) else (middle, n)
    return n


def class_changes(paired: Paired, confidence: float, margin: float) -> list[dict[str, Any]]:
    """Each class's recall change with its interval at ``confidence`` shared by all classes
    compared (Bonferroni), and whether it dropped by more than ``margin`` (``regressed``),
    did not (``kept``), or the class is too small to tell (``too few``, with the number of
    examples that would)."""
    labels, mine, theirs = np.asarray(paired.labels), paired.mine, paired.theirs
    size = len(paired.classes)
    n = np.bincount(labels, minlength=size)
    better = np.bincount(labels[mine & ~theirs], minlength=size)
    worse = np.bincount(labels[theirs & ~mine], minlength=size)
    right, other = (
        np.bincount(labels[mine], minlength=size),
        np.bincount(labels[theirs], minlength=size),
    )
    present = np.flatnonzero(n)
    z = float(stats.norm.ppf(1 - (1 - confidence) / 2 / max(len(present), 1)))
    rows = []
    for c in present.tolist():
        low, high = adjusted_wald(int(better[c]), int(worse[c]), int(n[c]), z)
        status = "regressed" if high < -margin else "kept" if low > -margin else "too few"
        needed = None
        if status == "too few":
            needed = examples_to_tell(int(better[c]), int(worse[c]), int(n[c]), margin, z)
        rows.append(
            {
                "class": paired.classes[c],
                "examples": int(n[c]),
                "recall": int(right[c]) / int(n[c]),
                "other_recall": int(other[c]) / int(n[c]),
                "change": int(better[c] - worse[c]) / int(n[c]),
                "low": low,
                "high": high,
                "status": status,
                "needed": needed,
            }
        )
    return rows


def accuracy_interval(correct: int, examples: int, confidence: float) -> tuple[float, float]:
    """Clopper-Pearson interval of an accuracy."""
    if examples == 0:
        return 0.0, 1.0
    ci = stats.binomtest(correct, examples).proportion_ci(confidence, method="exact")
    return float(ci.low), float(ci.high)


def percent(value: float) -> str:
    """A confidence level in words: 0.95 -> '95%'."""
    return f"{value * 100:g}%"
