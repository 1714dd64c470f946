"""Drift: how a dataset differs from the one a served model was trained on.

A **profile** is a compact summary of an analysis (class counts, formats, flag rate, 101
quantiles of the image side sqrt(height x width)); the model card of every pushed version
carries its data's profile. ``compare(served, new)`` names a statistic per field:

- class balance: population stability index (PSI) of the class shares and Pearson's
  chi-square test of homogeneity of the counts; classes that are new or vanished;
- resolution: the two-sample Kolmogorov-Smirnov statistic D of the side distributions (from
  their quantiles) with its asymptotic p-value;
- format mix: PSI and chi-square, as for classes;
- flag rate: the two rates and the chi-square test of the 2x2 table.

A field has drifted when its test rejects at ``ALPHA`` *and* its effect is material (PSI of at
least ``MIN_PSI``, D of at least ``MIN_KS``, a flag rate change of at least ``MIN_FLAG_CHANGE``);
a new or vanished class is always drift.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ALPHA = 0.01
MIN_PSI = 0.1  # the usual reading: < 0.1 no shift, 0.1-0.25 moderate, > 0.25 large
MIN_KS = 0.1
MIN_FLAG_CHANGE = 0.01
_EPSILON = 1e-4  # share given to a category absent on one side (PSI is infinite at 0)
QUANTILES = 101


def profile(
    class_counts: Mapping[str, int],
    formats: Mapping[str, int],
    inputs: int,
    flagged: int,
    sides: Sequence[float],
) -> dict[str, Any]:
    """The profile of one analysis (``sides``: sqrt(height x width) of every valid image)."""
    points = np.linspace(0, 100, QUANTILES)
    quantiles = np.percentile(np.asarray(sides, np.float64), points) if len(sides) else []
    return {
        "classes": dict(sorted(class_counts.items())),
        "formats": dict(sorted(formats.items())),
        "inputs": int(inputs),
        "flagged": int(flagged),
        "images": len(sides),
        "side_quantiles": [round(float(q), 3) for q in quantiles],
    }


def psi(before: Mapping[str, int], after: Mapping[str, int]) -> float:
    """Population stability index of two categorical distributions given as counts."""
    names = sorted(set(before) | set(after))
    p = _shares(before, names)
    q = _shares(after, names)
    return float(np.sum((q - p) * np.log(q / p)))


def _shares(counts: Mapping[str, int], names: Sequence[str]) -> np.ndarray:
    values = np.asarray([counts.get(n, 0) for n in names], np.float64)
    shares = values / max(values.sum(), 1)
    shares = np.maximum(shares, _EPSILON)
    return shares / shares.sum()


def chi_square(before: Mapping[str, int], after: Mapping[str, int]) -> tuple[float, float]:
    """Pearson's chi-square test of homogeneity of two count tables: (statistic, p-value)."""
    from scipy.stats import chi2_contingency

    names = [n for n in sorted(set(before) | set(after)) if before.get(n, 0) + after.get(n, 0)]
    if len(names) < 2:
        return 0.0, 1.0
    table = np.asarray([[before.get(n, 0) for n in names], [after.get(n, 0) for n in names]])
    if table.sum(axis=1).min() == 0:
        return 0.0, 1.0
    statistic, p_value, _, _ = chi2_contingency(table, correction=False)
    return float(statistic), float(p_value)


def ks_from_quantiles(
    before: Sequence[float], n_before: int, after: Sequence[float], n_after: int
) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov D of two distributions given by equally spaced
    quantiles, and its asymptotic p-value for the samples' real sizes."""
    from scipy.special import kolmogorov

    if not len(before) or not len(after):
        return 0.0, 1.0
    grid = np.union1d(before, after)
    levels = np.linspace(0, 1, len(before))
    cdf_before = np.interp(grid, before, levels, left=0.0, right=1.0)
    cdf_after = np.interp(grid, after, np.linspace(0, 1, len(after)), left=0.0, right=1.0)
    d = float(np.max(np.abs(cdf_before - cdf_after)))
    effective = math.sqrt(n_before * n_after / (n_before + n_after))
    return d, float(kolmogorov(effective * d))


def compare(served: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Each field's statistics, whether it drifted, and the list of drifted fields."""
    classes_psi = psi(served["classes"], new["classes"])
    classes_chi, classes_p = chi_square(served["classes"], new["classes"])
    new_classes = sorted(set(new["classes"]) - set(served["classes"]))
    vanished = sorted(set(served["classes"]) - set(new["classes"]))
    formats_chi, formats_p = chi_square(served["formats"], new["formats"])
    formats_psi = psi(served["formats"], new["formats"])
    d, ks_p = ks_from_quantiles(
        served["side_quantiles"], served["images"], new["side_quantiles"], new["images"]
    )
    rate_before = served["flagged"] / max(served["inputs"], 1)
    rate_after = new["flagged"] / max(new["inputs"], 1)
    flags = {"valid": served["inputs"] - served["flagged"], "flagged": served["flagged"]}
    flags_new = {"valid": new["inputs"] - new["flagged"], "flagged": new["flagged"]}
    flag_chi, flag_p = chi_square(flags, flags_new)
    fields = {
        "class_balance": {
            "psi": classes_psi, "chi_square": classes_chi, "p_value": classes_p,
            "new_classes": new_classes, "vanished_classes": vanished,
            "drifted": bool(new_classes or vanished
                            or (classes_p < ALPHA and classes_psi >= MIN_PSI)),
        },
        "resolution": {"ks_d": d, "p_value": ks_p, "drifted": ks_p < ALPHA and d >= MIN_KS},
        "formats": {"psi": formats_psi, "chi_square": formats_chi, "p_value": formats_p,
                    "drifted": formats_p < ALPHA and formats_psi >= MIN_PSI},
        "flag_rate": {"served": rate_before, "new": rate_after, "chi_square": flag_chi,
                      "p_value": flag_p, "drifted": flag_p < ALPHA
                      and abs(rate_after - rate_before) >= MIN_FLAG_CHANGE},
    }  # fmt: skip
    return {**fields, "drifted": [name for name, f in fields.items() if f["drifted"]]}


def summary(drift: Mapping[str, Any]) -> str:
    """One line naming what drifted, with its statistic."""
    if not drift["drifted"]:
        return "no drift from the served model's data"
    parts = []
    for name in drift["drifted"]:
        field = drift[name]
        if name == "class_balance":
            extra = "".join(
                f", {what} {', '.join(field[key])}"
                for what, key in (("new", "new_classes"), ("vanished", "vanished_classes"))
                if field[key]
            )
            parts.append(f"class balance (PSI {field['psi']:.3f}, chi-square p "
                         f"{field['p_value']:.2g}{extra})")  # fmt: skip
        elif name == "resolution":
            parts.append(f"resolution (KS D {field['ks_d']:.3f}, p {field['p_value']:.2g})")
        elif name == "formats":
            parts.append(f"format mix (PSI {field['psi']:.3f}, p {field['p_value']:.2g})")
        else:
            parts.append(f"flag rate ({field['served']:.1%} -> {field['new']:.1%}, "
                         f"p {field['p_value']:.2g})")  # fmt: skip
    return "drift from the served model's data: " + "; ".join(parts)
