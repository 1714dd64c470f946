"""Evaluation metrics against an independent recomputation, the report, the gate and pushing."""

import base64
import json
import pathlib

import numpy as np
import pytest
from sklearn import metrics as skm

from components.bit import dataset as ds
from components.bit import evaluation, label_issues, models, push, serving, storage
from components.bit.errors import BittuneError
from components.bit.evaluation import EvalConfig, Tally
from components.bit.training import TrainConfig, train
from tests.conftest import prepare_dataset
from tests.training_helpers import TINY_RULE


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


def test_gate_without_a_served_model():
    def alone(accuracy, threshold):
        settings = evaluation.GateSettings(blessing_threshold=threshold)
        metrics = {"accuracy": accuracy, "examples": 100, "majority_rate": 0.3}
        return evaluation.Evidence(metrics, settings)

    verdict = evaluation.gate(alone(0.9, 0.8))
    assert verdict.blessed and [r["rule"] for r in verdict.rules] == ["majority", "threshold"]
    assert verdict.rules[1]["figures"]["low"] < 0.9 < verdict.rules[1]["figures"]["high"]
    verdict = evaluation.gate(alone(0.7, 0.8))
    assert not verdict.blessed and "below the threshold 0.8000 (rule: threshold)" in verdict.reason
    verdict = evaluation.gate(alone(0.3, 0))  # chance: always the most frequent class
    assert not verdict.blessed and verdict.reason.endswith("(rule: majority)")


@pytest.fixture(scope="module")
def trained(digits_folder, tmp_path_factory):
    root = prepare_dataset(digits_folder, tmp_path_factory.mktemp("eval"), TINY_RULE)
    train(
        TrainConfig(
            str(root / "data"), "bittune-tiny", str(root / "run"),
            eval_every=3, checkpoint_every=3, log_every=1,
        )
    )  # fmt: skip
    return root


def test_evaluate_counts_every_test_example_and_writes_a_report(trained, tmp_path):
    manifest = json.loads((trained / "data" / "manifest.json").read_text())
    result = evaluation.evaluate(
        EvalConfig(str(trained / "data"), str(trained / "run"), str(tmp_path), batch_size=16)
    )
    assert result.split == "test"
    assert result.metrics["examples"] == manifest["splits"]["test"]["examples"]
    assert sum(c["support"] for c in result.metrics["per_class"]) == result.metrics["examples"]
    assert result.blessed == (result.metrics["accuracy"] > result.metrics["majority_rate"])
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["metrics"]["accuracy"] == result.metrics["accuracy"]
    page = (tmp_path / "report.html").read_text()
    assert "http://" not in page and "https://" not in page
    assert "majority-class rate" in page
    assert page.index("BLESSED: ") < page.index("<h2>Metrics")  # the verdict first
    assert "<td>majority</td>" in page  # the rules table
    for heading in ("Training", "Confusion matrix", "Per class", "BiT-HyperRule", "Dataset"):
        assert f"<h2>{heading}" in page
    assert page.count("data:image/png;base64,") >= 2
    if result.worst:
        assert "Most confident mistakes" in page
        assert base64.b64decode(result.worst[0]["image"])


def test_gate_with_threshold_and_baseline(trained, tmp_path):
    data, run = str(trained / "data"), str(trained / "run")
    strict = evaluation.evaluate(EvalConfig(data, run, blessing_threshold=0.999))
    assert not strict.blessed and "below the threshold" in strict.reason
    same = evaluation.evaluate(EvalConfig(data, run, baseline_model=run))
    assert same.baseline_accuracy == same.metrics["accuracy"]
    assert "baseline" in [r["rule"] for r in same.rules]


def test_a_chance_level_model_is_refused_by_default(trained, tmp_path):
    # the untrained classifier: a zero head, the same scores for every class
    untrained = models.build_classifier(models.load_backbone("bittune-tiny"), 10)
    serving.export(untrained, [str(d) for d in range(10)], 28, str(tmp_path / "saved_model"))
    result = evaluation.evaluate(EvalConfig(str(trained / "data"), str(tmp_path)))
    assert not result.blessed and result.reason.endswith("(rule: majority)")


def test_the_served_version_is_the_default_baseline(trained, tmp_path):
    data, run = str(trained / "data"), str(trained / "run")
    first = evaluation.evaluate(EvalConfig(data, run, serving_root=str(tmp_path / "serving")))
    assert first.baseline is None  # nothing served yet
    manifest = json.loads((trained / "data" / "manifest.json").read_text())
    rule = json.loads((trained / "run" / "hyperrule.json").read_text())
    blessed = {**first.to_dict(), "blessed": True}
    push.push(run, str(tmp_path / "serving"), push.model_card(blessed, rule, manifest, {}))
    second = evaluation.evaluate(EvalConfig(data, run, serving_root=str(tmp_path / "serving")))
    assert second.baseline == str(tmp_path / "serving" / "1")
    assert second.baseline_accuracy == second.metrics["accuracy"]
    assert any(r["rule"] == "baseline" and r["passed"] for r in second.rules)
    # the same model: every example agrees, so the paired interval is the point 0
    compared = {c["rule"]: c for c in second.comparisons}
    assert (compared["baseline"]["low"], compared["baseline"]["high"]) == (0, 0)
    assert compared["baseline"]["examples"] == second.metrics["examples"]
    # the card names the data the served version was judged on; the next run scores both there
    card = serving.read_card(second.baseline)
    assert card["data"]["evaluated_shards"] == first.shards and first.shards
    served = second.metrics["served_data"]
    assert served["examples"] == second.metrics["examples"] and served["skipped"] == 0
    assert served["accuracy"] == served["served_accuracy"] == second.metrics["accuracy"]
    assert any(r["rule"] == "served data" and r["passed"] for r in second.rules)


def test_served_data_maps_classes_by_name_and_leaves_out_unknown_ones(trained, tmp_path):
    data, run = str(trained / "data"), str(trained / "run")
    paths = ds.read_manifest(data).shard_paths("test", [data])
    model = serving.load(run)
    identity = np.arange(10)
    correct, scored, skipped = evaluation.count_remapped(model.serve, paths, identity)
    without_3 = np.where(identity == 3, -1, identity)
    correct_3, scored_3, skipped_3 = evaluation.count_remapped(model.serve, paths, without_3)
    assert (skipped, scored_3 + skipped_3) == (0, scored) and skipped_3 > 0
    shifted, _, _ = evaluation.count_remapped(model.serve, paths, (identity + 1) % 10)
    assert shifted < correct  # the labels no longer name what the model predicts
    right, labels, skipped_again = evaluation.score_remapped(model.serve, paths, without_3)
    assert (int(right.sum()), len(right), skipped_again) == (correct_3, scored_3, skipped_3)
    assert 3 not in labels.tolist()


def test_served_data_is_read_from_gcs_and_missing_data_is_a_note(trained, tmp_path, gcs):
    data, run = str(trained / "data"), str(trained / "run")
    evaluated = evaluation.evaluate(EvalConfig(data, run))
    bucket = gcs.new_bucket()
    shards = gcs.upload_tree(trained / "data", f"gs://{bucket}/data")
    card = {"classes": evaluated.labels, "data": {"evaluated_shards": [
        f"{shards}/{p.rsplit('/', 1)[-1]}" for p in evaluated.shards]}}  # fmt: skip
    version = gcs.upload_tree(trained / "run" / "saved_model", f"gs://{bucket}/serving/1")
    storage.write_text(f"{version}/{serving.CARD_JSON}", json.dumps(card))
    model = serving.load(run)
    served, paired = evaluation.on_served_data(model, serving.load(version), version, 64)
    assert served["examples"] == evaluated.metrics["examples"] == len(paired.mine)
    assert served["accuracy"] == pytest.approx(evaluated.metrics["accuracy"])
    assert (paired.mine == paired.theirs).all() and paired.where == f"{version}'s own test data"
    card["data"]["evaluated_shards"] = [f"gs://{bucket}/gone/test-00000.tfrecord"]
    storage.write_text(f"{version}/{serving.CARD_JSON}", json.dumps(card))
    missing, nothing = evaluation.on_served_data(model, serving.load(version), version, 64)
    assert "cannot be read" in missing["note"] and "examples" not in missing and nothing is None
    result = evaluation.evaluate(EvalConfig(data, run, str(tmp_path), baseline_model=version))
    assert not any(r["rule"] == "served data" for r in result.rules)
    page = (tmp_path / "report.html").read_text()
    assert "<h2>Against the served model" in page and "cannot be read" in page
    assert "<th>interval</th>" in page and "[+0.0000, +0.0000]" in page  # paired on this data


def test_push_versions_and_card(trained, tmp_path, gcs):
    result = evaluation.evaluate(EvalConfig(str(trained / "data"), str(trained / "run")))
    result = {**result.to_dict(), "blessed": True}  # pushing is tested here, not the gate
    manifest = json.loads((trained / "data" / "manifest.json").read_text())
    rule = json.loads((trained / "run" / "hyperrule.json").read_text())
    card = push.model_card(result, rule, manifest, {"model_source": "bittune-tiny"})
    first = push.push(str(trained / "run"), str(tmp_path / "serving"), card)
    second = push.push(str(trained / "run"), str(tmp_path / "serving"), card)
    assert first.uri.endswith("/1") and (second.version, second.uri[-2:]) == (2, "/2")
    version_1 = tmp_path / "serving" / "1"
    pushed = {str(p.relative_to(version_1)) for p in version_1.rglob("*") if p.is_file()}
    not_model = {push.CARD_MARKDOWN, push.CARD_JSON, serving.CLAIM_FILE}
    assert not_model <= pushed and first.files == len(pushed - not_model)
    assert (tmp_path / "serving" / "2" / "saved_model.pb").exists()
    markdown = (tmp_path / "serving" / "1" / "model_card.md").read_text()
    assert "| resize | crop |" in markdown and "{'" not in markdown  # a table, not a dict
    saved = json.loads((tmp_path / "serving" / "1" / "model_card.json").read_text())
    assert saved["metrics"]["accuracy"] == result["metrics"]["accuracy"]
    assert saved["hyperrule"]["crop"] == 28
    bucket = gcs.new_bucket()
    assert push.push(str(trained / "run"), f"gs://{bucket}/models/digits", card).version == 1
    assert f"models/digits/1/{push.CARD_JSON}" in gcs.names(bucket)
    card["gate"]["blessed"] = False
    with pytest.raises(BittuneError, match="did not bless"):
        push.push(str(trained / "run"), str(tmp_path / "serving"), card)


def test_evaluate_bad_input(trained, tmp_path):
    with pytest.raises(BittuneError, match="no exported model"):
        evaluation.evaluate(EvalConfig(str(trained / "data"), str(tmp_path)))
    with pytest.raises(BittuneError, match="not a complete dataset: no manifest.json"):
        evaluation.evaluate(EvalConfig(str(tmp_path), str(trained / "run")))


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_concurrent_pushes_claim_distinct_versions(where, tmp_path, gcs):
    import concurrent.futures

    root = str(tmp_path / "serving") if where == "local" else f"gs://{gcs.new_bucket()}/models"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        versions = list(pool.map(lambda _: push.claim_version(root), range(8)))
    assert sorted(versions) == list(range(1, 9))  # each number claimed exactly once


def test_saved_model_pb_is_written_last(trained, tmp_path, monkeypatch):
    from components.bit import storage

    written = []
    real = storage.write_bytes
    monkeypatch.setattr(
        storage, "write_bytes", lambda uri, data: (written.append(uri), real(uri, data))
    )
    card = {"gate": {"blessed": True, "reason": "test"}, "metrics": {}}
    monkeypatch.setattr(push, "card_markdown", lambda card: "card\n")
    push.push(str(trained / "run"), str(tmp_path / "serving"), card)
    assert written[-1].endswith("/1/saved_model.pb")
    assert any("/variables/" in uri for uri in written[:-1])


def test_predict_command_answers_the_good_files_and_fails_for_the_bad(trained, tmp_path, capsys):
    from pipelines import cli

    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    from components.bit.datasets import materialize_digits

    image = str(next(pathlib.Path(materialize_digits()).glob("3/*.png")))
    code = cli.main(["predict", "--run", str(trained / "run"), image, str(bad)])
    out, err = capsys.readouterr()
    assert code == 2 and out.startswith(f"{image}: ") and len(out.splitlines()) == 1
    assert f"{bad}: error: not a recognised image" in err
    assert "bittune: error: 1 of 2 image(s) could not be classified" in err


def test_accuracy_without_the_test_images_that_leaked_from_training(trained, tmp_path):
    data = trained / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    scored = evaluation.run_model(
        serving.load(str(trained / "run")).serve,
        sorted(str(p) for p in data.glob("test-*")),
        len(manifest["labels"]),
    )
    leaked = scored.sha256[::4]  # as if analysis had found these near copies of training images
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "leaked": {"test": leaked}}))
    result = evaluation.evaluate(EvalConfig(str(tmp_path), str(trained / "run"),
                                            shard_dirs=(str(data),)))  # fmt: skip
    kept = np.array([sha not in set(leaked) for sha in scored.sha256])
    correct = scored.probabilities.argmax(axis=1) == scored.labels
    without = result.metrics["without_leaked"]
    assert without["leaked"] == len(leaked) > 0 and without["examples"] == kept.sum()
    assert without["accuracy"] == pytest.approx(correct[kept].mean())
    assert result.metrics["accuracy"] == pytest.approx(correct.mean())


def test_too_many_probabilities_skip_the_label_issue_search_and_say_so(
    trained, tmp_path, monkeypatch
):
    monkeypatch.setattr(label_issues, "MAX_PROBABILITIES", 10)
    result = evaluation.evaluate(EvalConfig(str(trained / "data"), str(trained / "run"),
                                            str(tmp_path)))  # fmt: skip
    assert (
        result.label_issues == [] and "exceed the 10 kept" in result.metrics["label_issues_skipped"]
    )
    assert "Not searched" in (tmp_path / "report.html").read_text()
