"""Drift: each field's statistic against scipy on the samples, and a second analysis that
adds a class and shifts the balance names both, with its statistics, beside the served model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
from scipy.stats import ks_2samp

from components.bit import drift, push
from components.bit.analysis import AnalysisConfig, analyze
from components.bit.preprocess import PreprocessConfig, preprocess

METRICS = ("accuracy", "top5_accuracy", "loss", "macro_f1", "expected_calibration_error")


def _profile(classes, sides, formats=None, flagged=0):
    inputs = sum(classes.values()) + flagged
    return drift.profile(classes, formats or {"PNG": sum(classes.values())}, inputs, flagged,
                         sides)  # fmt: skip


def test_the_same_data_has_not_drifted():
    rng = np.random.default_rng(0)
    served = _profile({"a": 500, "b": 480}, rng.normal(200, 30, 980))
    new = _profile({"a": 510, "b": 470}, rng.normal(200, 30, 980))
    assert drift.compare(served, new)["drifted"] == []
    assert drift.summary(drift.compare(served, new)) == "no drift from the served model's data"


def test_each_field_drifts_on_its_own_statistic():
    rng = np.random.default_rng(1)
    old_sides, new_sides = rng.normal(200, 30, 900), rng.normal(260, 30, 1000)
    served = _profile({"a": 450, "b": 450}, old_sides)
    new = _profile({"a": 700, "b": 200, "c": 100}, new_sides, {"PNG": 500, "JPEG": 500}, 80)
    found = drift.compare(served, new)
    assert found["drifted"] == ["class_balance", "resolution", "formats", "flag_rate"]
    assert found["class_balance"]["new_classes"] == ["c"] and found["class_balance"]["psi"] > 0.25
    d, p_value = found["resolution"]["ks_d"], found["resolution"]["p_value"]
    exact = ks_2samp(old_sides, new_sides)
    assert abs(d - exact.statistic) < 0.03 and p_value < 1e-6
    assert "new c" in drift.summary(found) and "KS D" in drift.summary(found)


def test_psi_and_chi_square_match_their_definitions():
    before, after = {"a": 60, "b": 40}, {"a": 30, "b": 70}
    expected = (0.3 - 0.6) * np.log(0.3 / 0.6) + (0.7 - 0.4) * np.log(0.7 / 0.4)
    assert abs(drift.psi(before, after) - expected) < 1e-3
    statistic, p_value = drift.chi_square(before, after)
    assert abs(statistic - 18.18) < 0.01 and p_value < 1e-4


def _served_model(digits_folder, root):
    """A served model's folder holding the model card push writes (its data profile)."""
    analyze(AnalysisConfig(str(digits_folder), progress=False), str(root / "analysis"))
    manifest = preprocess(PreprocessConfig(str(root / "analysis"), str(root / "data")))
    rule = json.loads((root / "analysis" / "hyperrule.json").read_text())
    evaluation = {"labels": list(manifest.labels), "split": "test", "blessed": True,
                  "reason": "", "metrics": dict.fromkeys(METRICS, 0.9)}  # fmt: skip
    card = push.model_card(evaluation, rule, manifest.to_dict(), {"model_source": "x"})
    (root / "served").mkdir()
    (root / "served" / push.CARD_JSON).write_text(json.dumps(card))
    return root / "served"


def test_new_class_and_shifted_balance_are_named_beside_the_served_model(digits_folder, tmp_path):
    served = _served_model(digits_folder, tmp_path)
    changed = tmp_path / "changed"
    shutil.copytree(digits_folder, changed)
    for path in sorted((changed / "0").glob("*.png"))[20:]:
        path.unlink()  # class 0 mostly gone
    (changed / "new-class").mkdir()
    for path in sorted((changed / "8").glob("*.png")):  # new images, not copies (a copy under
        with Image.open(path) as image:  # another label would be a label conflict)
            image.transpose(Image.Transpose.ROTATE_90).save(changed / "new-class" / path.name)
    result = analyze(AnalysisConfig(str(changed), baseline_model=str(served)),
                     str(tmp_path / "changed-analysis"))  # fmt: skip
    found = result.stats["drift"]
    assert found["served"] == str(served) and "class_balance" in found["drifted"]
    assert found["class_balance"]["new_classes"] == ["new-class"]
    report = (tmp_path / "changed-analysis" / "report.md").read_text()
    assert "Drift from the served model" in report and "PSI" in report
    printed = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "analyze", str(changed), "--output",
         str(tmp_path / "cli"), "--baseline-model", str(served)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "drift from the served model's data: class balance (PSI" in printed
    assert "new new-class" in printed
