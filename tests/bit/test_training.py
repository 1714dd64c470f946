"""Fine-tuning: schedule, input pipeline, MixUp, gradient accumulation, export, bad input."""

import dataclasses
import json
import pathlib

import numpy as np
import pytest

from components.bit import hyperrule, models, training
from components.bit.errors import BittuneError
from components.bit.training import TrainConfig, TrainingError
from tests import imagegen
from tests.bit.test_models import SMALL, random_checkpoint
from tests.conftest import prepare_dataset

tf = models.tf
TINY_RULE = {
    "resize": 32,
    "crop": 28,
    "batch_size": 16,
    "micro_batch_size": 8,
    "total_steps": 6,
    "warmup_steps": 2,
    "decay_steps": [3, 4, 5],
}


@pytest.fixture(scope="module")
def digits_data(digits_folder, tmp_path_factory):
    """Digits analysed with a tiny schedule and preprocessed: (analysis dir, dataset dir)."""
    root = prepare_dataset(digits_folder, tmp_path_factory.mktemp("train-data"), TINY_RULE)
    return root / "analysis", root / "data"


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "small.npz"
    np.savez(path, **random_checkpoint(SMALL, seed=11))
    return str(path)


def config_for(digits_data, output, model, **kwargs):
    analysis, data = digits_data
    return TrainConfig(
        str(data),
        str(analysis / "hyperrule.json"),
        model,
        str(output),
        eval_every=3,
        checkpoint_every=3,
        log_every=1,
        **kwargs,
    )


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


def _stream(digits_data, **changes):
    analysis, data = digits_data
    rule = hyperrule.from_dict(json.loads((analysis / "hyperrule.json").read_text()))
    rule = dataclasses.replace(rule, **changes.pop("rule", {}))
    config = TrainConfig(str(data), "", "", "", **changes)
    manifest = json.loads((data / "manifest.json").read_text())
    paths = training.shard_paths(manifest, "train")
    return training.train_dataset(
        paths, rule, 10, config, 8, manifest["splits"]["train"]["examples"]
    )


def _first(dataset, batches=2):
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(batches)]


def test_input_pipeline_is_deterministic_and_resumable(digits_data):
    first = _first(_stream(digits_data, seed=3), 4)
    again = _first(_stream(digits_data, seed=3), 4)
    other = _first(_stream(digits_data, seed=4), 1)
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(first[0][0], other[0][0])
    analysis, data = digits_data
    rule = hyperrule.from_dict(json.loads((analysis / "hyperrule.json").read_text()))
    manifest = json.loads((data / "manifest.json").read_text())
    resumed = training.train_dataset(
        training.shard_paths(manifest, "train"),
        rule,
        10,
        TrainConfig("", "", "", "", seed=3),
        8,
        manifest["splits"]["train"]["examples"],
        skip_examples=16,
    )
    for (x1, _), (x2, _) in zip(first[2:], _first(resumed, 2), strict=True):
        np.testing.assert_array_equal(x1, x2)
    x, y = first[0]
    assert x.shape == (8, 28, 28, 3) and x.dtype == np.uint8  # made [0, 1] floats in the step
    assert y.shape == (8, 10) and np.all(y.sum(axis=1) == 1)


def test_flip_is_random_and_switchable(digits_data):
    def flips(**changes):
        base = _first(_stream(digits_data, seed=5, crop=False, flip=False), 8)
        test = _first(_stream(digits_data, seed=5, crop=False, **changes), 8)
        flipped = same = 0
        for (a, _), (b, _) in zip(base, test, strict=True):
            for i in range(len(a)):
                if np.array_equal(a[i], b[i]):
                    same += 1
                else:
                    np.testing.assert_allclose(b[i], a[i][:, ::-1])
                    flipped += 1
        return flipped, same

    flipped, same = flips(flip=True)
    assert flipped > 10 and same > 10  # about half, and not every image (a known bug)
    assert flips(flip=False) == (0, 64)


def test_crop_varies_and_no_crop_resizes(digits_data):
    cropped = _first(_stream(digits_data, seed=1, flip=False), 1)[0][0]
    whole = _first(_stream(digits_data, seed=1, flip=False, crop=False), 1)[0][0]
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


def test_mixup_mixes_images_and_labels_with_one_lambda(digits_data):
    plain = _first(_stream(digits_data, seed=2, rule={"mixup_alpha": 0.0}), 3)
    mixed = _first(_stream(digits_data, seed=2, rule={"mixup_alpha": 0.4}), 3)
    lambdas = []
    for (x, y), (mx, my) in zip(plain, mixed, strict=True):
        lam = my[0][np.argmax(y[0])] if np.argmax(y[0]) != np.argmax(y[-1]) else None
        if lam is None:
            continue
        x = x / 255.0
        assert mx.dtype == np.float32 and 0 <= mx.min() <= mx.max() <= 1
        np.testing.assert_allclose(mx, lam * x + (1 - lam) * x[::-1], atol=1e-5)
        np.testing.assert_allclose(my, lam * y + (1 - lam) * y[::-1], atol=1e-6)
        lambdas.append(lam)
    assert lambdas and len(set(np.round(lambdas, 6))) == len(lambdas)
    off = _first(_stream(digits_data, seed=2, mixup=False, rule={"mixup_alpha": 0.4}), 1)
    np.testing.assert_array_equal(off[0][0], plain[0][0])


def test_gradient_accumulation_equals_one_large_batch(small_npz):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (32, 28, 28, 3)).astype(np.float32)
    labels = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 32)]
    weights = []
    for micro, accumulation in ((32, 1), (8, 4)):
        rule = hyperrule.derive(
            1000, 32 * 32, overrides={"batch_size": 32, "micro_batch_size": micro}
        )
        assert rule.accumulation_steps == accumulation
        strategy = tf.distribute.get_strategy()
        model = models.build_classifier(models.load_backbone(small_npz), 4)
        head = np.full((SMALL.feature_dim, 4), 0.01, np.float32)  # not zero: gradients flow
        model.get_layer("head").set_weights([head, np.zeros(4, np.float32)])
        optimizer = tf.keras.optimizers.SGD(0.1, momentum=0.9)
        optimizer.build(model.trainable_variables)
        accumulators = (
            [tf.Variable(tf.zeros_like(v), trainable=False) for v in model.trainable_variables]
            if accumulation > 1
            else []
        )
        step = training._make_train_step(strategy, model, optimizer, accumulators, rule, xla=False)
        batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(micro)
        iterator = iter(batches.repeat())
        for _ in range(2):
            step(iterator)
        weights.append([v.numpy() for v in model.trainable_variables])
    for large, accumulated in zip(*weights, strict=True):
        np.testing.assert_allclose(accumulated, large, rtol=1e-4, atol=1e-6)


def test_train_export_and_predict(digits_data, small_npz, tmp_path, digits_folder):
    summary = training.train(config_for(digits_data, tmp_path / "run", small_npz))
    assert summary["finished"] and summary["steps"] == 6
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
    results = training.predict(str(tmp_path / "run"), images)
    assert [len(r["top_k"]) for r in results] == [5, 5]
    assert all(name in [str(d) for d in range(10)] for r in results for name, _ in r["top_k"])
    serve = tf.saved_model.load(str(tmp_path / "run" / "saved_model")).signatures["serving_default"]
    out = serve(image_bytes=tf.constant([pathlib.Path(p).read_bytes() for p in images]))
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(TrainingError, match="bad.png: not a recognised image"):
        training.predict(str(tmp_path / "run"), [str(bad)])
    bomb = tmp_path / "bomb.png"  # a 100,000 x 100,000 header: refused before any decoding
    bomb.write_bytes(imagegen._bomb_png())
    with pytest.raises(TrainingError, match="possible decompression bomb"):
        training.predict(str(tmp_path / "run"), [str(bomb)])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "bit-m-r51x1"}, "unknown model 'bit-m-r51x1'; valid names"),
        ({"model": "/nowhere/model.npz"}, "cannot read checkpoint /nowhere/model.npz"),
        ({"hyperrule_path": "/nowhere/h.json"}, "HyperRule file not found"),
        ({"data_dir": "/nowhere"}, "no manifest.json in /nowhere"),
        ({"strategy": "horovod"}, "unknown strategy 'horovod'"),
        ({"max_steps": 0}, "max_steps must be at least 1"),
    ],
)
def test_bad_input_fails_before_training(digits_data, small_npz, tmp_path, change, message):
    config = dataclasses.replace(config_for(digits_data, tmp_path / "run", small_npz), **change)
    with pytest.raises(BittuneError, match=message):
        training.train(config)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_hyperrule_missing_fields(digits_data, small_npz, tmp_path):
    rule = json.loads((digits_data[0] / "hyperrule.json").read_text())
    del rule["crop"]
    (tmp_path / "h.json").write_text(json.dumps(rule))
    config = dataclasses.replace(
        config_for(digits_data, tmp_path / "run", small_npz),
        hyperrule_path=str(tmp_path / "h.json"),
    )
    with pytest.raises(BittuneError, match="missing field\\(s\\): crop"):
        training.train(config)


def test_output_of_another_dataset_is_refused(digits_data, small_npz, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "labels.json").write_text(json.dumps({"labels": ["cat", "dog"]}))
    with pytest.raises(TrainingError, match="holds a run on 2 other classes"):
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

    shutil.rmtree(training._staging_dir(output))  # a new machine: only gs:// remains
    second = training.train(config_for(digits_data, output, small_npz))
    assert second["finished"] and second["steps"] == 6
    assert [h["step"] for h in second["validation"]] == [6]  # resumed at 3, not restarted
    assert "runs/digits/saved_model/saved_model.pb" in gcs.names(bucket, "runs/digits/")
