"""Evaluation metrics against an independent recomputation, the report, the gate and pushing."""

import base64
import json

import numpy as np
import pytest
from sklearn import metrics as skm

from components.bit import evaluation, push
from components.bit.errors import BittuneError
from components.bit.evaluation import EvalConfig, Tally
from components.bit.training import TrainConfig, train
from tests.bit.test_training import TINY_RULE
from tests.conftest import prepare_dataset


def tally_of(probabilities, labels, classes, batch=7):
    tally = Tally(classes)
    for start in range(0, len(labels), batch):  # odd batch size: a partial last batch
        tally.add(probabilities[start : start + batch], labels[start : start + batch])
    return tally


@pytest.mark.parametrize("classes", [2, 10, 21843])
def test_metrics_match_an_independent_recomputation(classes):
    rng = np.random.default_rng(classes)
    n = 101
    labels = rng.integers(0, min(classes, 12), n)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), labels] += 2.0  # mostly right
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    names = [f"c{i}" for i in range(classes)]
    got = evaluation.metrics_from(tally_of(probabilities, labels, classes), names)
    predicted = probabilities.argmax(1)
    assert got["examples"] == n
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
    k = min(5, classes)
    top = np.argsort(-probabilities, axis=1)[:, :k]
    assert got["top5_accuracy"] == pytest.approx((top == labels[:, None]).any(1).mean())
    assert got["loss"] == pytest.approx(
        skm.log_loss(labels, probabilities, labels=range(classes)), rel=1e-6
    )
    present = sorted(set(labels) | set(predicted))
    p, r, f, s = skm.precision_recall_fscore_support(
        labels, predicted, labels=present, zero_division=0
    )
    per_class = {c["class"]: c for c in got["per_class"]}
    for i, cls in enumerate(present):
        row = per_class[f"c{cls}"]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (p[i], r[i], f[i], s[i])
        )
    dense = evaluation.confusion_matrix(got, present)
    np.testing.assert_array_equal(dense, skm.confusion_matrix(labels, predicted, labels=present))
    confidence = probabilities.max(1)
    bins = np.minimum((confidence * 15).astype(int), 14)
    ece = (
        sum(
            abs((predicted[bins == b] == labels[bins == b]).sum() - confidence[bins == b].sum())
            for b in range(15)
        )
        / n
    )
    assert got["expected_calibration_error"] == pytest.approx(ece)


def test_gate():
    assert evaluation.gate(0.9, 0.8, None, 0.0)[0]
    blessed, reason = evaluation.gate(0.7, 0.8, None, 0.0)
    assert not blessed and "below the threshold 0.8000" in reason
    assert evaluation.gate(0.89, 0.5, 0.9, 0.02)[0]
    blessed, reason = evaluation.gate(0.85, 0.5, 0.9, 0.02)
    assert not blessed and "worse than the baseline's 0.9000" in reason


@pytest.fixture(scope="module")
def trained(digits_folder, tmp_path_factory):
    root = prepare_dataset(digits_folder, tmp_path_factory.mktemp("eval"), TINY_RULE)
    train(
        TrainConfig(
            str(root / "data"),
            str(root / "analysis" / "hyperrule.json"),
            "bittune-tiny",
            str(root / "run"),
            eval_every=3,
            checkpoint_every=3,
            log_every=1,
        )
    )
    return root


def test_evaluate_counts_every_test_example_and_writes_a_report(trained, tmp_path):
    manifest = json.loads((trained / "data" / "manifest.json").read_text())
    result = evaluation.evaluate(
        EvalConfig(str(trained / "data"), str(trained / "run"), str(tmp_path), batch_size=16)
    )
    assert result["split"] == "test"
    assert result["metrics"]["examples"] == manifest["splits"]["test"]["examples"]
    assert (
        sum(c["support"] for c in result["metrics"]["per_class"]) == result["metrics"]["examples"]
    )
    assert result["blessed"]  # threshold 0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["metrics"]["accuracy"] == result["metrics"]["accuracy"]
    page = (tmp_path / "report.html").read_text()
    assert "http://" not in page and "https://" not in page
    for heading in ("Training", "Confusion matrix", "Per class", "BiT-HyperRule", "Dataset"):
        assert f"<h2>{heading}" in page
    assert page.count("data:image/png;base64,") >= 2
    if result["worst"]:
        assert "Most confident mistakes" in page
        assert base64.b64decode(result["worst"][0]["image"])


def test_gate_with_threshold_and_baseline(trained, tmp_path):
    strict = evaluation.evaluate(
        EvalConfig(str(trained / "data"), str(trained / "run"), threshold=0.999)
    )
    assert not strict["blessed"] and "below the threshold" in strict["reason"]
    same = evaluation.evaluate(
        EvalConfig(str(trained / "data"), str(trained / "run"), baseline_model=str(trained / "run"))
    )
    assert same["blessed"] and same["baseline_accuracy"] == same["metrics"]["accuracy"]


def test_push_versions_and_card(trained, tmp_path, gcs):
    result = evaluation.evaluate(EvalConfig(str(trained / "data"), str(trained / "run")))
    manifest = json.loads((trained / "data" / "manifest.json").read_text())
    rule = json.loads((trained / "run" / "hyperrule.json").read_text())
    card = push.model_card(result, rule, manifest, {"model_source": "bittune-tiny"})
    first = push.push(str(trained / "run"), str(tmp_path / "serving"), card)
    second = push.push(str(trained / "run"), str(tmp_path / "serving"), card)
    assert first.endswith("/1") and second.endswith("/2")
    assert (tmp_path / "serving" / "2" / "saved_model.pb").exists()
    saved = json.loads((tmp_path / "serving" / "1" / "model_card.json").read_text())
    assert saved["metrics"]["accuracy"] == result["metrics"]["accuracy"]
    assert saved["hyperrule"]["crop"] == 28
    bucket = gcs.new_bucket()
    assert push.push(str(trained / "run"), f"gs://{bucket}/models/digits", card).endswith("/1")
    assert f"models/digits/1/{push.CARD_JSON}" in gcs.names(bucket)
    card["gate"]["blessed"] = False
    with pytest.raises(BittuneError, match="did not bless"):
        push.push(str(trained / "run"), str(tmp_path / "serving"), card)


def test_evaluate_bad_input(trained, tmp_path):
    with pytest.raises(BittuneError, match="no exported model"):
        evaluation.evaluate(EvalConfig(str(trained / "data"), str(tmp_path)))
    with pytest.raises(BittuneError, match="no manifest.json"):
        evaluation.evaluate(EvalConfig(str(tmp_path), str(trained / "run")))
