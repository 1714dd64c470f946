"""The gate's rules and the paired statistics behind them, on predictions of known quality
(no TensorFlow: fast). The intervals and tests are checked against scipy's and statsmodels'
own functions, and the non-inferiority rule's error rates by seeded simulation."""

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from components.bit import evaluation
from components.bit.evaluation import rules, stats
from components.bit.evaluation.rules import Evidence, GateSettings


def paired_of(both, mine_only, theirs_only, neither, classes=1, seed=0):
    """Two models' results on the same examples with exactly these counts, shuffled, in
    ``classes`` classes (labels at random)."""
    mine = np.array([1] * both + [1] * mine_only + [0] * theirs_only + [0] * neither, bool)
    theirs = np.array([1] * both + [0] * mine_only + [1] * theirs_only + [0] * neither, bool)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(mine))
    labels = rng.integers(0, classes, len(mine))
    names = [f"c{i}" for i in range(classes)]
    return stats.Paired(mine[order], theirs[order], labels, names, "this test split")


def figures(accuracy, examples, majority=0.1, calibration_error=0.05):
    return {"accuracy": accuracy, "examples": examples, "majority_rate": majority,
            "expected_calibration_error": calibration_error}  # fmt: skip


def evidence_of(paired, calibration_error=0.05, **settings):
    mine, theirs = paired.mine, paired.theirs
    return Evidence(
        figures(float(mine.mean()), len(mine), calibration_error=calibration_error),
        GateSettings(**settings),
        "v1",
        figures(float(theirs.mean()), len(mine)),
        paired,
    )


def rule(verdict, name):
    return next(r for r in verdict.rules if r["rule"] == name)


def test_a_challenger_equal_within_noise_is_blessed_and_not_significant():
    paired = paired_of(1720, 40, 40, 200)  # 2,000 examples, both 0.88, 80 disagreements
    verdict = evaluation.gate(evidence_of(paired, baseline_tolerance=0.01))
    baseline = rule(verdict, "baseline")
    figures = baseline["figures"]
    assert verdict.blessed and baseline["passed"]
    assert figures["difference"] == 0 and -0.01 <= figures["low"] < 0 < figures["high"]
    assert "not significant" in verdict.reason and "McNemar p = 1" in verdict.reason
    assert f"95% CI [{figures['low']:+.4f}, {figures['high']:+.4f}]" in verdict.reason


def test_a_challenger_3_points_worse_on_2000_examples_is_refused():
    paired = paired_of(1700, 20, 80, 200)  # 0.86 vs 0.89
    verdict = evaluation.gate(evidence_of(paired, baseline_tolerance=0.01))
    figures = rule(verdict, "baseline")["figures"]
    assert not verdict.blessed and verdict.reason.endswith("(rule: baseline)")
    assert figures["difference"] == pytest.approx(-0.03)
    assert figures["low"] < figures["high"] < 0  # the interval excludes 0
    assert figures["p_value"] < 1e-6 and "(significant)" in verdict.reason
    assert f"[{figures['low']:+.4f}, {figures['high']:+.4f}]" in verdict.reason


def draws(n, shares, count, seed):
    """``count`` seeded samples of (better, worse) counts of n paired examples."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, shares, size=count)[:, :2]


def test_non_inferiority_error_rates_by_simulation():
    """On equal models (both 0.90, disagreeing on 4% of 10,000 examples: the interval's
    half-width is about 0.004) tolerance 0.01 refuses at most the nominal 5% of draws; a
    challenger exactly the tolerance worse is blessed at most (1 - 0.95) / 2 of the time, the
    one-sided error the interval's lower bound controls (plus simulation slack)."""
    n, count = 10_000, 200
    refused = sum(
        stats.bootstrap_interval(int(b), int(w), n, 0.95, seed=i)[0] < -0.01
        for i, (b, w) in enumerate(draws(n, [0.02, 0.02, 0.96], count, seed=1))
    )
    assert refused / count <= 0.05
    blessed = sum(
        stats.bootstrap_interval(int(b), int(w), n, 0.95, seed=i)[0] >= -0.01
        for i, (b, w) in enumerate(draws(n, [0.015, 0.025, 0.96], count, seed=2))
    )
    assert blessed / count <= 0.025 + 2 * np.sqrt(0.025 * 0.975 / count)


@pytest.mark.parametrize(("better", "worse"), [(0, 0), (3, 0), (12, 21), (40, 40), (20, 80)])
def test_mcnemar_matches_statsmodels(better, worse):
    table = [[100, better], [worse, 50]]
    expected = mcnemar(table, exact=True).pvalue
    assert stats.mcnemar_p(better, worse) == pytest.approx(expected, rel=1e-9)
    if better + worse:
        binom = scipy_stats.binomtest(better, better + worse, 0.5).pvalue
        assert stats.mcnemar_p(better, worse) == pytest.approx(binom)


def test_bootstrap_interval_matches_scipy_paired_bootstrap():
    paired = paired_of(850, 10, 40, 100)
    mine, theirs = paired.mine.astype(float), paired.theirs.astype(float)
    ours = stats.difference(paired, 0.95, seed=3)
    theirs_ci = scipy_stats.bootstrap(
        (mine, theirs), lambda a, b, axis: a.mean(axis) - b.mean(axis), paired=True,
        vectorized=True, n_resamples=10_000, batch=1_000, method="percentile",
        confidence_level=0.95, rng=np.random.default_rng(4),
    ).confidence_interval  # fmt: skip
    assert ours.low == pytest.approx(theirs_ci.low, abs=0.002)
    assert ours.high == pytest.approx(theirs_ci.high, abs=0.002)
    assert stats.difference(paired, 0.95, seed=3) == ours  # seeded: the same every time


def test_accuracy_interval_is_clopper_pearson():
    low, high = stats.accuracy_interval(170, 200, 0.9)
    assert (low, high) == pytest.approx(proportion_confint(170, 200, 0.1, method="beta"))


def test_threshold_on_the_lower_bound():
    paired = paired_of(170, 0, 0, 30)  # accuracy 0.85 on 200 examples
    e = evidence_of(paired, blessing_threshold=0.83)
    assert rule(evaluation.gate(e), "threshold")["passed"]
    e = evidence_of(paired, blessing_threshold=0.83, threshold_on_lower_bound=True)
    verdict = evaluation.gate(e)
    assert not verdict.blessed and verdict.reason.endswith("(rule: threshold)")
    assert "the lower bound of accuracy's 95% CI" in verdict.reason


def test_per_class_regression_and_too_few_examples():
    # class 0: 400 examples, recall 0.95 -> 0.80; class 1: 6 examples, one lost
    labels = np.array([0] * 400 + [1] * 6)
    mine = np.concatenate([np.arange(400) < 320, np.arange(6) < 5])
    theirs = np.concatenate([np.arange(400) < 380, np.ones(6, bool)])
    paired = stats.Paired(mine, theirs, labels, ["cat", "dog"], "this test split")
    verdict = evaluation.gate(evidence_of(paired, baseline_tolerance=1.0))
    per_class = rule(verdict, "per class")
    assert not per_class["passed"] and "cat 0.95 -> 0.80" in per_class["detail"]
    assert [r["class"] for r in per_class["figures"]["too_few"]] == ["dog"]
    dog = per_class["figures"]["too_few"][0]
    # the number said to tell does, and one example fewer does not
    z = scipy_stats.norm.ppf(1 - 0.05 / 2 / 2)
    for n, tells in ((dog["needed"], True), (dog["needed"] - 1, False)):
        low, high = stats.adjusted_wald(0, n / 6, n, z)
        assert (low > -0.05 or high < -0.05) == tells
    kept = stats.Paired(theirs, theirs, labels, ["cat", "dog"], "this test split")
    outcome = rule(evaluation.gate(evidence_of(kept)), "per class")
    assert outcome["passed"] and "dog (6 examples, about" in outcome["detail"]


def test_calibration_rule():
    paired = paired_of(170, 0, 0, 30)
    verdict = evaluation.gate(evidence_of(paired, calibration_error=0.2))
    assert not verdict.blessed and verdict.reason.endswith("(rule: calibration)")
    assert "is worse by more than 0.0500 of v1's 0.0500" in verdict.reason


def test_rules_run_only_with_what_they_need():
    alone = Evidence(figures(0.9, 100, majority=0.3))
    assert [r["rule"] for r in evaluation.gate(alone).rules] == ["majority"]
    chance = Evidence(figures(0.3, 100, majority=0.3))
    assert evaluation.gate(chance).reason.endswith("(rule: majority)")
    one_class = Evidence(figures(0.5, 10, majority=1.0))
    assert evaluation.gate(one_class).blessed  # one class: the rule cannot judge
    names = [r["rule"] for r in evaluation.gate(evidence_of(paired_of(9, 0, 0, 1))).rules]
    assert names == ["majority", "baseline", "per class", "calibration"]


def test_a_new_rule_is_one_entry():
    """Rules are data: a rule added to the list runs, and its outcome decides like the rest."""
    paired = paired_of(170, 0, 0, 30)
    top5 = rules.Rule("top-5", ("paired",), lambda e: rules.Outcome(False, {}, "top-5 fell"))
    verdict = evaluation.gate(evidence_of(paired), (*rules.RULES, top5))
    assert not verdict.blessed and verdict.reason == "top-5 fell (rule: top-5)"
