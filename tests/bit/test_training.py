"""Fine-tuning: schedule, input pipeline, MixUp, gradient accumulation, export, bad input."""

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
from tests.conftest import prepare_dataset
from tests.training_helpers import SMALL, TINY_RULE

tf = models.tf


@pytest.fixture(scope="module")
def digits_data(digits_folder, tmp_path_factory):
    """Digits analysed with a tiny schedule and preprocessed: (analysis dir, dataset dir)."""
    root = prepare_dataset(digits_folder, tmp_path_factory.mktemp("train-data"), TINY_RULE)
    return root / "analysis", root / "data"


def config_for(digits_data, output, model, **kwargs):
    _, data = digits_data
    kwargs = {"eval_every": 3, "checkpoint_every": 3, "log_every": 1, **kwargs}
    return TrainConfig(str(data), model, str(output), **kwargs)


@pytest.mark.parametrize("examples", [100, 50_000, 900_000])
@pytest.mark.parametrize("batch", [512, 128])
def test_schedule_is_the_rule_at_every_boundary(examples, batch):
    rule = hyperrule.derive(examples, 300 * 300, overrides={"batch_size": batch})
    schedule = training.BitSchedule(rule.base_lr, rule.warmup_steps, rule.decay_steps)
    steps = {0, 1, rule.warmup_steps - 1, rule.warmup_steps, rule.total_steps - 1, rule.total_steps}
    for boundary in rule.decay_steps:
        steps |= {boundary - 1, boundary, boundary + 1}
    for step in sorted(steps):
        assert float(schedule(step)) == pytest.approx(rule.learning_rate(step), rel=1e-6), step


def _stream(digits_data, skip=0, **changes):
    _, data = digits_data
    manifest = ds.read_manifest(str(data))
    rule = dataclasses.replace(manifest.rule, **changes.pop("rule", {}))
    config = TrainConfig(str(data), "", "", **changes)
    paths = manifest.shard_paths("train", [str(data)])
    return training.train_dataset(paths, rule, 10, config, manifest.examples("train"), skip)


def _first(dataset, batches=2):
    """(images, labels) of the first micro-batches (images uint8 unless MixUp mixed them)."""
    out = []
    for features, labels in dataset.take(batches):
        out.append((training.model_inputs(features).numpy() if "lam" in features
                    else features["images"].numpy(), labels.numpy()))  # fmt: skip
    return out


def test_input_pipeline_is_deterministic_and_resumable(digits_data):
    first = _first(_stream(digits_data, seed=3), 4)
    again = _first(_stream(digits_data, seed=3), 4)
    other = _first(_stream(digits_data, seed=4), 1)
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(first[0][0], other[0][0])
    resumed = _stream(digits_data, skip=16, seed=3)  # one optimizer batch of 16 later
    for (x1, _), (x2, _) in zip(first[2:], _first(resumed, 2), strict=True):
        np.testing.assert_array_equal(x1, x2)
    x, y = first[0]
    assert x.shape == (8, 28, 28, 3) and x.dtype == np.uint8  # made [0, 1] floats in the step
    assert y.shape == (8, 10) and np.all(y.sum(axis=1) == 1)


def test_flip_is_random_and_switchable(digits_data):
    def flips(**changes):
        base = _first(_stream(digits_data, seed=5, random_crop=False, random_flip=False), 8)
        test = _first(_stream(digits_data, seed=5, random_crop=False, **changes), 8)
        flipped = same = 0
        for (a, _), (b, _) in zip(base, test, strict=True):
            for i in range(len(a)):
                if np.array_equal(a[i], b[i]):
                    same += 1
                else:
                    np.testing.assert_allclose(b[i], a[i][:, ::-1])
                    flipped += 1
        return flipped, same

    flipped, same = flips(random_flip=True)
    assert flipped > 10 and same > 10  # about half, and not every image (a known bug)
    assert flips(random_flip=False) == (0, 64)


def test_crop_varies_and_no_crop_resizes(digits_data):
    cropped = _first(_stream(digits_data, seed=1, random_flip=False), 1)[0][0]
    whole = _first(_stream(digits_data, seed=1, random_flip=False, random_crop=False), 1)[0][0]
    assert cropped.shape == whole.shape == (8, 28, 28, 3)
    assert not np.allclose(cropped, whole)


def test_fused_jpeg_crop_matches_crop_after_resize():
    ys, xs = np.mgrid[0:90, 0:120]
    pixels = np.stack([ys * 2.5, xs * 2, (ys + xs) * 1.2], axis=-1).clip(0, 255).astype(np.uint8)
    encoded = tf.io.encode_jpeg(pixels, quality=100)

    def crop(fmt, key):
        example = {"image/encoded": encoded, "image/format": tf.constant(fmt)}
        crop = training._fused_random_crop(example, 64, 48, tf.constant(key, tf.int64))
        return tf.cast(crop, tf.float32)

    fused, generic, elsewhere = crop("jpeg", [0, 7]), crop("png", [0, 7]), crop("png", [0, 8])
    assert fused.shape == generic.shape == (48, 48, 3)
    same_window = float(tf.reduce_mean(tf.abs(fused - generic)))
    other_window = float(tf.reduce_mean(tf.abs(elsewhere - generic)))
    assert same_window < 3 < other_window  # the fused path decodes the same window


def test_mixup_pairs_across_the_optimizer_batch_with_one_lambda_per_step(digits_data):
    # batch 16 = 2 micro-batches of 8: example i is mixed with example 15 - i of the same step
    plain = _first(_stream(digits_data, seed=2, rule={"mixup_alpha": 0.0}), 4)
    # one pass over each stream: a second pass over the same dataset object reshuffles
    mixed = list(_stream(digits_data, seed=2, rule={"mixup_alpha": 0.4}).take(4))
    lambdas = []
    for step in range(2):
        (a, ya), (b, yb) = plain[2 * step], plain[2 * step + 1]
        images = np.concatenate([a, b]) / 255.0
        labels = np.concatenate([ya, yb])
        pairs = mixed[2 * step : 2 * step + 2]
        features = [f for f, _ in pairs]
        mixed_labels = np.concatenate([y.numpy() for _, y in pairs])
        lam = float(features[0]["lam"][0])
        assert all(np.all(f["lam"].numpy() == lam) for f in features)  # one lambda per step
        got = np.concatenate([training.model_inputs(f).numpy() for f in features])
        np.testing.assert_allclose(got, lam * images + (1 - lam) * images[::-1], atol=1e-5)
        np.testing.assert_allclose(mixed_labels, lam * labels + (1 - lam) * labels[::-1], atol=1e-6)
        lambdas.append(lam)
    assert lambdas[0] != lambdas[1]
    off = _first(_stream(digits_data, seed=2, mixup=False, rule={"mixup_alpha": 0.4}), 1)
    np.testing.assert_array_equal(off[0][0], plain[0][0])


def test_micro_batch_of_one_still_mixes(digits_data):
    rule = {"mixup_alpha": 0.4, "micro_batch_size": 1, "accumulation_steps": 16}
    features, labels = next(iter(_stream(digits_data, seed=2, rule=rule)))
    assert features["images"].shape[0] == 1 and "partners" in features
    assert not np.array_equal(features["images"].numpy(), features["partners"].numpy())
    assert np.count_nonzero(labels.numpy()) in (1, 2) and 0 < labels.numpy().max() <= 1


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
        stream = _stream(digits_data, seed=6, rule=rule)
        rule = dataclasses.replace(ds.read_manifest(str(digits_data[1])).rule, **rule)
        weights.append(_updated_weights(small_npz, rule, stream))
    for large, accumulated in zip(*weights, strict=True):
        np.testing.assert_allclose(accumulated, large, rtol=1e-4, atol=1e-6)


def test_train_export_and_predict(digits_data, small_npz, tmp_path, digits_folder):
    summary = training.train(config_for(digits_data, tmp_path / "run", small_npz))
    assert summary["finished"] and summary["steps"] == 6
    again = training.train(config_for(digits_data, tmp_path / "run", small_npz))
    assert again["already_finished"] and again["steps"] == 6  # not trained twice
    assert [h["step"] for h in summary["validation"]] == [3, 6]
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
        ({"strategy": "horovod"}, "strategy must be one of auto, default"),
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
    assert first["steps"] == 3 and not first["finished"]
    names = gcs.names(bucket, "runs/digits/")
    assert "runs/digits/checkpoints/checkpoint" in names
    assert any(n.startswith("runs/digits/checkpoints/ckpt-3") for n in names)
    import shutil
    import tempfile

    shutil.rmtree(os.path.join(tempfile.gettempdir(), "bittune-train"))  # a new machine
    second = training.train(config_for(digits_data, output, small_npz))
    assert second["finished"] and second["steps"] == 6
    assert [h["step"] for h in second["validation"]] == [6]  # resumed at 3, not restarted
    assert "runs/digits/saved_model/saved_model.pb" in gcs.names(bucket, "runs/digits/")


def test_an_accelerator_asked_for_but_missing_fails_at_once(monkeypatch):
    """The device list is faked: what a GPU node without a visible driver, or a TPU VM whose
    TPU cannot be reached, looks like to TensorFlow."""
    monkeypatch.setattr(training, "visible_devices", lambda: {"GPU": 0, "TPU": 0})
    with pytest.raises(BittuneError, match="asked for a GPU, but TensorFlow finds none"):
        training.make_strategy("auto", accelerator="gpu")
    with pytest.raises(BittuneError, match="--strategy mirrored needs GPUs"):
        training.make_strategy("mirrored")

    def no_tpu():
        raise tf.errors.NotFoundError(None, None, "no TPU platform")

    monkeypatch.setattr(training, "_tpu_strategy", no_tpu)
    with pytest.raises(BittuneError, match="asked for a TPU, but none was found"):
        training.make_strategy("auto", accelerator="tpu")
    with pytest.raises(BittuneError, match="asked for a TPU"):
        training.make_strategy("tpu")
    monkeypatch.setattr(training, "visible_devices", lambda: {"GPU": 1, "TPU": 0})
    assert training.strategy_name(training.make_strategy("auto", accelerator="gpu")) == "default"
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("CLUSTER_SPEC", raising=False)
    with pytest.raises(BittuneError, match="training_replicas=3 needs a multi-worker cluster"):
        training.make_strategy("auto", replicas=3)


def test_vertex_cluster_spec_becomes_tf_config(monkeypatch):
    spec = {
        "cluster": {"workerpool0": ["chief:2222"], "workerpool1": ["w0:2222", "w1:2222"]},
        "task": {"type": "workerpool1", "index": 1, "trial": ""},
        "environment": "cloud",
    }
    monkeypatch.setenv("CLUSTER_SPEC", json.dumps(spec))
    # set (empty), not deleted: monkeypatch then removes the TF_CONFIG the call writes, which
    # would otherwise make every later training process a worker replica
    monkeypatch.setenv("TF_CONFIG", "")
    training.vertex_tf_config()
    config = json.loads(os.environ["TF_CONFIG"])
    assert config == {
        "cluster": {"chief": ["chief:2222"], "worker": ["w0:2222", "w1:2222"]},
        "task": {"type": "worker", "index": 1},
    }
