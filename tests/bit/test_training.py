"""Fine-tuning: gradient accumulation (with MixUp), export, resume, bad input."""

import dataclasses
import json
import os
import pathlib

import numpy as np
import pytest

from components.bit import dataset as ds
from components.bit import hyperrule, models, serving, training
from components.bit.errors import BittuneError
from components.bit.training import TrainConfig
from tests import imagegen
from tests.training_helpers import SMALL, train_stream

tf = models.tf


def config_for(digits_data, output, model, **kwargs):
    _, data = digits_data
    kwargs = {"eval_every": 3, "checkpoint_every": 3, "log_every": 1, **kwargs}
    return TrainConfig(str(data), model, str(output), **kwargs)


def _updated_weights(small_npz, rule, batches, steps=2):
    """The trainable weights after ``steps`` optimizer steps of ``rule`` on ``batches``."""
    strategy = tf.distribute.get_strategy()
    model = models.build_classifier(models.load_backbone(small_npz), 10)
    head = np.full((SMALL.feature_dim, 10), 0.01, np.float32)  # not zero: gradients flow
    model.get_layer("head").set_weights([head, np.zeros(10, np.float32)])
    optimizer = tf.keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    accumulators = (
        [tf.Variable(tf.zeros_like(v), trainable=False) for v in model.trainable_variables]
        if rule.accumulation_steps > 1
        else []
    )
    step = training._make_train_step(strategy, model, optimizer, accumulators, rule, xla=False)
    iterator = iter(batches)
    for _ in range(steps):
        step(iterator)
    return [v.numpy() for v in model.trainable_variables]


def test_gradient_accumulation_equals_one_large_batch(small_npz):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (32, 28, 28, 3)).astype(np.float32)
    labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 32)]
    weights = []
    for micro, accumulation in ((32, 1), (8, 4)):
        rule = hyperrule.derive(
            1000, 32 * 32, overrides={"batch_size": 32, "micro_batch_size": micro}
        )
        assert rule.accumulation_steps == accumulation
        batches = tf.data.Dataset.from_tensor_slices(({"images": images}, labels)).batch(micro)
        weights.append(_updated_weights(small_npz, rule, batches.repeat()))
    for large, accumulated in zip(*weights, strict=True):
        np.testing.assert_allclose(accumulated, large, rtol=1e-4, atol=1e-6)


def test_mixup_with_accumulation_equals_one_large_batch_with_mixup(digits_data, small_npz):
    weights = []
    for micro in (16, 4):  # one step of 16, or 4 micro-batches of 4
        rule = {"mixup_alpha": 0.4, "micro_batch_size": micro, "accumulation_steps": 16 // micro}
        stream = train_stream(digits_data, seed=6, rule=rule)
        rule = dataclasses.replace(ds.read_manifest(str(digits_data[1])).rule, **rule)
        weights.append(_updated_weights(small_npz, rule, stream))
    for large, accumulated in zip(*weights, strict=True):
        np.testing.assert_allclose(accumulated, large, rtol=1e-4, atol=1e-6)


def test_train_export_and_predict(digits_data, small_npz, tmp_path, digits_folder):
    summary = training.train(config_for(digits_data, tmp_path / "run", small_npz))
    assert summary.finished and summary.steps == 6
    again = training.train(config_for(digits_data, tmp_path / "run", small_npz))
    assert again.already_finished and again.steps == 6  # not trained twice
    assert [h["step"] for h in summary.validation] == [3, 6]
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {
        "checkpoints",
        "logs",
        "saved_model",
        "labels.json",
        "hyperrule.json",
        "training.json",
    }
    assert list((tmp_path / "run" / "logs" / "train").glob("events.out.tfevents.*"))
    images = [str(digits_folder / "3" / "0003.png"), str(digits_folder / "7" / "0007.png")]
    results = serving.predict(str(tmp_path / "run"), images)
    assert [len(r.top_k) for r in results] == [5, 5]
    assert all(name in [str(d) for d in range(10)] for r in results for name, _ in r.top_k)
    serve = tf.saved_model.load(str(tmp_path / "run" / "saved_model")).signatures["serving_default"]
    out = serve(image_bytes=tf.constant([pathlib.Path(p).read_bytes() for p in images]))
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    bomb = tmp_path / "bomb.png"  # a 100,000 x 100,000 header: refused before any decoding
    bomb.write_bytes(imagegen._bomb_png())
    results = serving.predict(str(tmp_path / "run"), [str(bad), images[0], str(bomb)])
    assert results[0].error.startswith("not a recognised image")
    assert results[1].top_k and results[1].error is None  # the good one still answered
    assert "possible decompression bomb" in results[2].error


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "bit-m-r51x1"}, "unknown model 'bit-m-r51x1'; valid names"),
        ({"model": "/nowhere/model.npz"}, "cannot read checkpoint /nowhere/model.npz"),
        ({"dataset_dir": "/nowhere"}, "/nowhere is not a complete dataset: no manifest.json"),
        ({"training_strategy": "horovod"}, "training_strategy must be one of auto, default"),
        ({"max_steps": 0}, "max_steps must be at least 1"),
        ({"accelerator": "gpu"}, "asked for a GPU, but TensorFlow finds none"),
    ],
)
def test_bad_input_fails_before_training(digits_data, small_npz, tmp_path, change, message):
    with pytest.raises(BittuneError, match=message):
        config = dataclasses.replace(config_for(digits_data, tmp_path / "run", small_npz), **change)
        training.train(config)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_hyperrule_file_missing_fields(digits_data, tmp_path):
    rule = json.loads((digits_data[0] / "hyperrule.json").read_text())
    del rule["crop"]
    (tmp_path / "h.json").write_text(json.dumps(rule))
    with pytest.raises(BittuneError, match="missing field\\(s\\): crop"):
        hyperrule.load(str(tmp_path / "h.json"))


def test_output_of_another_dataset_is_refused(digits_data, small_npz, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "labels.json").write_text(json.dumps({"labels": ["cat", "dog"]}))
    with pytest.raises(BittuneError, match="holds a run on 2 other classes"):
        training.train(config_for(digits_data, tmp_path / "run", small_npz))


def test_gcs_output_checkpoints_and_resumes(digits_data, small_npz, gcs):
    bucket = gcs.new_bucket()
    output = f"gs://{bucket}/runs/digits"
    first = training.train(config_for(digits_data, output, small_npz, max_steps=3))
    assert first.steps == 3 and not first.finished
    names = gcs.names(bucket, "runs/digits/")
    assert "runs/digits/checkpoints/checkpoint" in names
    assert any(n.startswith("runs/digits/checkpoints/ckpt-3") for n in names)
    import shutil
    import tempfile

    shutil.rmtree(os.path.join(tempfile.gettempdir(), "bittune-train"))  # a new machine
    second = training.train(config_for(digits_data, output, small_npz))
    assert second.finished and second.steps == 6
    assert [h["step"] for h in second.validation] == [6]  # resumed at 3, not restarted
    assert "runs/digits/saved_model/saved_model.pb" in gcs.names(bucket, "runs/digits/")
