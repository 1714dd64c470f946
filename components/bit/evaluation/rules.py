"""The gate that blesses a model for serving: an ordered list of rules, each a name, what it
needs and a check that returns its outcome (passed, the figures, one sentence).

A rule runs when everything it ``needs`` is there: an :class:`Evidence` field that is not
None (the paired results against the served model exist only when there is one), or a gate
setting that is not off (0 or false: ``blessing_threshold`` 0 means no threshold). The
settings are table parameters (:mod:`components.bit.params`) under the same names; the
evaluation's config is made of them (:class:`GateSettings`).

A new rule is a check function and a :class:`Rule` in :data:`RULES` here, and, when it has a
knob, a field of :class:`GateSettings` plus the parameter's row in the table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from components.bit.evaluation import stats
from components.bit.evaluation.stats import Paired, percent

SHOWN_CLASSES = 3  # classes named in a sentence (all of them are in the figures)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GateSettings:
    """The gate's parameters, named as in the parameter table."""

    blessing_threshold: float = 0.0  # minimum top-1 accuracy (0: only the relative rules)
    threshold_on_lower_bound: bool = False  # the threshold judges accuracy's lower bound
    baseline_tolerance: float = 0.01  # how much worse than the served model is still blessed
    confidence_level: float = 0.95  # of every interval the gate uses
    class_recall_margin: float = 0.05  # largest drop of one class's recall
    calibration_margin: float = 0.05  # how much worse the calibration error may be


PARAMETERS = tuple(field.name for field in dataclasses.fields(GateSettings))


@dataclasses.dataclass(frozen=True)
class Evidence:
    """What the rules judge: this model's metrics (:func:`metrics.metrics_from`) and, when there
    is a model to compare with, its metrics and both models' results on the same examples."""

    metrics: Mapping[str, Any]  # this model's, on the evaluated split
    settings: GateSettings = GateSettings()
    baseline_name: str = "the baseline"
    other_metrics: Mapping[str, Any] | None = None  # the other model's, on the same examples
    paired: Paired | None = None  # both models, example by example, on this data
    served_paired: Paired | None = None  # both models on the served model's own test data
    seed: int = 0  # of the bootstrap

    @property
    def accuracy(self) -> float:
        return self.metrics["accuracy"]

    @property
    def examples(self) -> int:
        return self.metrics["examples"]

    @property
    def correct(self) -> int:
        return round(self.accuracy * self.examples)

    @property
    def majority(self) -> float:
        return self.metrics["majority_rate"]


@dataclasses.dataclass(frozen=True)
class Outcome:
    passed: bool
    figures: dict[str, Any]
    sentence: str


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    needs: tuple[str, ...]  # Evidence fields or GateSettings names that must be set
    check: Callable[[Evidence], Outcome]


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether the model is blessed, the sentence saying why, and each rule's outcome."""

    blessed: bool
    reason: str
    rules: list[dict[str, Any]]


def majority(e: Evidence) -> Outcome:
    """Beat the majority-class rate: a model at chance is never pushed."""
    figures = {"accuracy": e.accuracy, "majority_rate": e.majority}
    if e.majority >= 1.0:  # one class only: nothing to beat, and nothing this rule can judge
        return Outcome(True, figures, "the evaluated split holds one class: no majority rate "
                                      "to beat")  # fmt: skip
    beats = e.accuracy > e.majority
    verb = "beats" if beats else "does not beat"
    return Outcome(beats, figures, f"accuracy {e.accuracy:.4f} {verb} the majority-class rate "
                                   f"{e.majority:.4f}")  # fmt: skip


def threshold(e: Evidence) -> Outcome:
    """Reach ``blessing_threshold``: the accuracy, or its interval's lower bound if asked."""
    s = e.settings
    low, high = stats.accuracy_interval(e.correct, e.examples, s.confidence_level)
    judged = low if s.threshold_on_lower_bound else e.accuracy
    reached = judged >= s.blessing_threshold
    figures = {
        "accuracy": e.accuracy,
        "low": low,
        "high": high,
        "threshold": s.blessing_threshold,
        "confidence": s.confidence_level,
        "on_lower_bound": s.threshold_on_lower_bound,
    }
    interval = f"{percent(s.confidence_level)} CI [{low:.4f}, {high:.4f}]"
    what = f"accuracy {e.accuracy:.4f} ({interval})"
    if s.threshold_on_lower_bound:
        what = f"the lower bound of accuracy's {interval} (accuracy {e.accuracy:.4f})"
    verb = ">= threshold" if reached else "is below the threshold"
    return Outcome(reached, figures, f"{what} {verb} {s.blessing_threshold:.4f}")  # fmt: skip


def _no_worse(e: Evidence, paired: Paired, whose: str) -> Outcome:
    """Non-inferiority on paired examples: the interval's lower bound of the accuracy
    difference must not be below ``-baseline_tolerance``."""
    s, tolerance = e.settings, e.settings.baseline_tolerance
    d = stats.difference(paired, s.confidence_level, e.seed)
    passed = d.low >= -tolerance
    sentence = (
        f"accuracy {d.accuracy:.4f} vs {whose} {d.other_accuracy:.4f} on {paired.where} "
        f"({d.examples:,} examples): difference {d.difference:+.4f}, "
        f"{percent(d.confidence)} CI [{d.low:+.4f}, {d.high:+.4f}], McNemar p = "
        f"{d.p_value:.2g} ({'significant' if d.significant() else 'not significant'}); "
    )
    bound = f"-{tolerance:.4f} (the tolerance)" if tolerance else "0 (tolerance 0)"
    if passed:
        sentence += f"the lower bound is not below {bound}: no worse"
    else:
        sentence += f"the lower bound is below {bound}: not shown to be no worse"
        if d.difference > -tolerance and d.high > d.low:  # more examples would tell
            needed = d.examples * ((d.high - d.low) / 2 / (d.difference + tolerance)) ** 2
            sentence += f"; about {needed:,.0f} examples would tell at this difference"
    figures = {**d.to_dict(), "tolerance": tolerance, "where": paired.where}
    return Outcome(passed, figures, sentence)


def baseline(e: Evidence) -> Outcome:
    return _no_worse(e, e.paired, f"{e.baseline_name}'s")


def served_data(e: Evidence) -> Outcome:
    return _no_worse(e, e.served_paired, "its")


def per_class(e: Evidence) -> Outcome:
    """No class's recall drops by more than ``class_recall_margin`` with confidence; classes
    too small to tell are named with the number of examples that would."""
    s, margin = e.settings, e.settings.class_recall_margin
    rows = stats.class_changes(e.paired, s.confidence_level, margin)
    regressed = [r for r in rows if r["status"] == "regressed"]
    unsure = sorted((r for r in rows if r["status"] == "too few"), key=lambda r: r["examples"])
    figures = {"margin": margin, "confidence": s.confidence_level, "classes": len(rows),
               "regressed": regressed, "too_few": unsure}  # fmt: skip
    if regressed:
        named = ", ".join(f"{r['class']} {r['other_recall']:.2f} -> {r['recall']:.2f} (CI of the "
                          f"change [{r['low']:+.2f}, {r['high']:+.2f}])"
                          for r in regressed[:SHOWN_CLASSES])  # fmt: skip
        return Outcome(False, figures, f"recall dropped by more than {margin:.2f} in "
                                       f"{len(regressed)} class(es): {named}")  # fmt: skip
    sentence = (
        f"no class's recall dropped by more than {margin:.2f} ({len(rows)} classes, "
        f"{percent(s.confidence_level)} confidence for all together)"
    )
    if unsure:
        named = ", ".join(f"{r['class']} ({r['examples']:,} examples, about {r['needed']:,} "
                          "would tell)"
                          for r in unsure[:SHOWN_CLASSES])  # fmt: skip
        sentence += f"; {len(unsure)} class(es) too small to tell: {named}"
    return Outcome(True, figures, sentence)


def calibration(e: Evidence) -> Outcome:
    """The expected calibration error is not worse than the other model's by more than
    ``calibration_margin`` (on the same examples)."""
    key = "expected_calibration_error"
    mine, theirs = e.metrics[key], e.other_metrics[key]
    margin = e.settings.calibration_margin
    passed = mine <= theirs + margin
    verb = "is within" if passed else "is worse by more than"
    figures = {"calibration_error": mine, "other_calibration_error": theirs, "margin": margin}
    return Outcome(passed, figures, f"calibration error {mine:.4f} {verb} {margin:.4f} of "
                                    f"{e.baseline_name}'s {theirs:.4f}")  # fmt: skip


RULES: tuple[Rule, ...] = (
    Rule("majority", (), majority),
    Rule("threshold", ("blessing_threshold",), threshold),
    Rule("baseline", ("paired",), baseline),
    Rule("served data", ("served_paired",), served_data),
    Rule("per class", ("paired",), per_class),
    Rule("calibration", ("other_metrics",), calibration),
)


def _has(e: Evidence, name: str) -> bool:
    """A setting is there when it is on (not 0 or false), evidence when it is not None."""
    if name in PARAMETERS:
        return bool(getattr(e.settings, name))
    return getattr(e, name) is not None


def gate(evidence: Evidence, rules: Sequence[Rule] = RULES) -> Verdict:
    """Bless when every rule that applies passes; the reason is the first failure's sentence
    (naming its rule), or every sentence."""
    done = []
    for rule in rules:
        if all(_has(evidence, name) for name in rule.needs):
            outcome = rule.check(evidence)
            done.append({"rule": rule.name, "passed": outcome.passed,
                         "detail": outcome.sentence, "figures": outcome.figures})  # fmt: skip
    failed = [r for r in done if not r["passed"]]
    if failed:
        return Verdict(False, f"{failed[0]['detail']} (rule: {failed[0]['rule']})", done)
    return Verdict(True, "; ".join(r["detail"] for r in done), done)


def comparisons(rules: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paired comparisons a verdict made (this data, the served model's test data), each
    with a sentence for summaries and model cards."""
    found = []
    for r in rules:
        if r["rule"] in ("baseline", "served data"):
            f = r["figures"]
            found.append({**f, "rule": r["rule"], "passed": r["passed"], "sentence": (
                f"on {f['where']} ({f['examples']:,} examples): accuracy difference "
                f"{f['difference']:+.4f}, {percent(f['confidence'])} CI [{f['low']:+.4f}, "
                f"{f['high']:+.4f}], McNemar p = {f['p_value']:.2g}")})  # fmt: skip
    return found
