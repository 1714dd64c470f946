"""LiteRT and ONNX exports measured against the SavedModel, refused when they disagree, pushed
in the version with TF Serving warm-up requests; prediction with an export."""

import json
import pathlib

import numpy as np
import pytest

from components.bit import dataset as ds
from components.bit import exports, models, push, serving, serving_extras
from components.bit.errors import BittuneError
from components.bit.inputs import eval_dataset, tf, to_unit_range
from tests.training_helpers import TINY_RULE

CROP = TINY_RULE["crop"]
INT8_THRESHOLD = {"int8": 0.9}


def fitted_model(train_paths, classes: int):
    """bittune-tiny with a least-squares head fitted on the training digits: a real classifier
    (about 80% accurate), built in seconds instead of a training run."""
    model = models.build_classifier(models.load_backbone("bittune-tiny"), classes)
    backbone, head = model.get_layer("bit_backbone"), model.get_layer("head")
    features, labels = [], []
    for images, y in eval_dataset(train_paths, CROP, 128):
        features.append(backbone(to_unit_range(images)).numpy())
        labels.append(y.numpy())
    x, y = np.concatenate(features), np.concatenate(labels)
    x = np.hstack([x, np.ones((len(x), 1))])
    targets = np.eye(classes)[y] * 8.0  # confident logits
    w = np.linalg.solve(x.T @ x + 1e-2 * np.eye(x.shape[1]), x.T @ targets)
    head.set_weights([w[:-1].astype(np.float32), w[-1].astype(np.float32)])
    return model


@pytest.fixture(scope="module")
def prepared(digits_data, tmp_path_factory):
    """A run folder with the fitted model's SavedModel, and every export of it with parity."""
    _, data = digits_data
    manifest = ds.read_manifest(str(data))
    train = manifest.shard_paths("train", [str(data)])
    test = manifest.shard_paths("test", [str(data)])
    run = tmp_path_factory.mktemp("exports") / "run"
    serving.export(fitted_model(train, len(manifest.labels)), manifest.labels, CROP,
                   str(run / serving.EXPORT_DIR))  # fmt: skip
    # int8 keeps 95-97% of this least-squares head's top-1 answers on the 28 px digits (a
    # model fine-tuned end to end keeps more): the test's int8 threshold is set below that
    extras = serving_extras.prepare(str(run), test, train, exports.FORMATS, INT8_THRESHOLD)
    return run, data, test, train, extras


def card(data, extras):
    manifest = json.loads((data / "manifest.json").read_text())
    evaluation = {
        "labels": manifest["labels"],
        "split": "test",
        "blessed": True,
        "reason": "test",
        "metrics": dict.fromkeys(push._CARD_METRICS, 0.5),
    }
    rule = {**dict.fromkeys(push._CARD_HYPERRULE, 1), "variant": "reference"}
    built = push.model_card(evaluation, rule, manifest, {"model_source": "bittune-tiny"})
    return {**built, "exports": extras.card()}


def test_every_export_agrees_and_is_pushed_with_the_warmup_file(prepared, tmp_path):
    run, data, test, _, extras = prepared
    rows = {p.format: p for p in extras.parity}
    assert set(rows) == set(exports.FORMATS) and not extras.notes
    n = ds.read_manifest(str(data)).examples("test")
    for fmt, row in rows.items():
        assert row.pushed and row.examples == n, row
        assert row.agreement >= (0.9 if fmt == "tflite-int8" else 0.995)
        assert row.saved_model_accuracy > 0.5  # a real classifier, not chance
        assert abs(row.accuracy - row.saved_model_accuracy) <= 1 - row.agreement + 1e-9
    assert rows["tflite"].max_abs_diff < 1e-4 and rows["onnx"].max_abs_diff < 1e-4
    assert rows["tflite-int8"].bytes < rows["tflite"].bytes / 2  # weights in 8 bits
    serving_extras.write(extras, str(tmp_path / "extras"))  # the export step's artifact
    kept = serving_extras.read(str(tmp_path / "extras"))  # what push reads
    assert kept.files == extras.files and kept.parity == extras.parity
    pushed = push.push(str(run), str(tmp_path / "serving"), card(data, kept), kept.files)
    version = pathlib.Path(pushed.uri)
    for fmt in exports.FORMATS:
        assert (version / "exports" / exports.FILES[fmt]).stat().st_size == rows[fmt].bytes
    markdown = (version / push.CARD_MARKDOWN).read_text()
    assert "## Exports" in markdown and "| onnx | exports/model.onnx |" in markdown
    saved = json.loads((version / push.CARD_JSON).read_text())
    assert {r["format"]: r["agreement"] for r in saved["exports"]} == {
        f: rows[f].agreement for f in exports.FORMATS
    }


def test_warmup_requests_are_real_test_images_the_model_serves(prepared):
    run, _, test, _, extras = prepared
    logs = serving_extras.read_warmup(extras.files[exports.WARMUP_FILE])
    assert len(logs) == exports.WARMUP_IMAGES
    expected = serving_extras.test_images(test)
    serve = serving.load(str(run)).serve
    for log, image in zip(logs, expected, strict=True):
        request = log.predict_log.request
        assert request.model_spec.signature_name == "serving_default"
        tensor = tf.make_ndarray(request.inputs["image_bytes"])
        assert tensor.shape == (1,) and tensor[0] == image
        out = serve(image_bytes=tf.constant(tensor))  # what TF Serving replays at load
        assert out["probabilities"].shape == (1, 10)


def corrupted(onnx_bytes: bytes) -> bytes:
    """The ONNX file with one weight changed: the head's bias of class 0 raised by 100."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    bias = next(i for i in model.graph.initializer if list(i.dims) == [10] and "head" in i.name)
    values = numpy_helper.to_array(bias).copy()
    values[0] += 100.0
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    return model.SerializeToString()


def test_an_export_that_disagrees_is_refused_in_one_line(prepared, tmp_path, monkeypatch):
    run, data, test, train, extras = prepared
    converted = {f: extras.files[f"exports/{exports.FILES[f]}"] for f in exports.FORMATS}
    converted["onnx"] = corrupted(converted["onnx"])  # the fixture converted each already
    monkeypatch.setattr(exports, "convert", lambda fmt, *args: converted[fmt])
    refused = serving_extras.prepare(str(run), test, train, ["onnx", "tflite"])
    assert len(refused.notes) == 1 and "\n" not in refused.notes[0]
    assert refused.notes[0].startswith("onnx export not pushed: top-1 agreement with the ")
    assert "is below 99.50% (export_agreement_float)" in refused.notes[0]
    pushed = push.push(str(run), str(tmp_path / "serving"), card(data, refused), refused.files)
    folder = pathlib.Path(pushed.uri) / "exports"
    assert sorted(p.name for p in folder.iterdir()) == ["labels.txt", "model_float32.tflite"]
    markdown = (pathlib.Path(pushed.uri) / push.CARD_MARKDOWN).read_text()
    assert "| onnx | exports/model.onnx |" in markdown and "| no: top-1 agreement" in markdown


def test_predict_with_the_onnx_export_gives_the_saved_models_top1(prepared, tmp_path, capsys):
    from components.bit.datasets import materialize_digits
    from pipelines import cli

    run, data, _, _, extras = prepared
    version = tmp_path / "7"
    for rel, content in extras.files.items():
        (version / rel).parent.mkdir(parents=True, exist_ok=True)
        (version / rel).write_bytes(content)
    digits = pathlib.Path(materialize_digits())
    images = [str(next((digits / str(d)).glob("*.png"))) for d in range(10)]
    outputs = {}
    for fmt in ("savedmodel", "onnx"):
        where = str(run if fmt == "savedmodel" else version)
        assert cli.main(["predict", "--run", where, "--format", fmt, *images]) == 0
        outputs[fmt] = capsys.readouterr().out.splitlines()
    top1 = {f: [line.split(": ")[1].split(" ")[0] for line in out] for f, out in outputs.items()}
    assert top1["onnx"] == top1["savedmodel"] and len(top1["onnx"]) == 10
    assert all(len(line.split(", ")) == 5 for line in outputs["onnx"])  # the same top-5 lines
    with pytest.raises(BittuneError, match="no tflite-int8 export in"):
        serving_extras.predict(str(tmp_path), images, "tflite-int8")


def test_export_formats_are_checked():
    assert exports.parse_formats(" onnx,tflite,onnx ") == ("onnx", "tflite")
    assert exports.parse_formats("") == ()
    with pytest.raises(BittuneError, match="unknown format 'coreml'"):
        exports.parse_formats("tflite,coreml")
