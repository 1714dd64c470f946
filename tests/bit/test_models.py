"""BiT backbones: the Keras ResNet-v2 against an independent NumPy forward pass, .npz and hub
loading, architecture inference and model-source errors."""

import numpy as np
import pytest

from components.bit import model_sources, models
from components.bit.models import ModelError
from tests.training_helpers import SMALL, random_checkpoint

# --- an independent NumPy implementation of the reference architecture ----------------------


def np_conv(x, kernel, stride=1, pad=0):
    mean = kernel.mean(axis=(0, 1, 2), keepdims=True)
    var = kernel.var(axis=(0, 1, 2), keepdims=True)
    kernel = (kernel - mean) / np.sqrt(var + 1e-10)
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel.shape[:2]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
    windows = windows[:, ::stride, ::stride]
    return np.einsum("nhwcij,ijco->nhwo", windows, kernel, optimize=True)


def np_group_norm(x, gamma, beta, groups=32, eps=1e-5):
    n, h, w, c = x.shape
    grouped = x.reshape(n, h, w, groups, c // groups)
    mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
    var = grouped.var(axis=(1, 2, 4), keepdims=True)
    out = ((grouped - mean) / np.sqrt(var + eps)).reshape(n, h, w, c)
    return out * gamma + beta


def np_max_pool(x):
    x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2]
    return windows.max(axis=(-2, -1))


def np_forward(weights, images):
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    x = images.astype(np.float64) * 2 - 1
    x = np_conv(x, weights["resnet/root_block/standardized_conv2d/kernel"], 2, 3)
    x = np_max_pool(x)
    block = 1
    while f"resnet/block{block}/unit01/a/standardized_conv2d/kernel" in weights:
        unit = 1
        while (
            p := f"resnet/block{block}/unit{unit:02d}/"
        ) + "a/standardized_conv2d/kernel" in weights:
            stride = 2 if unit == 1 and block > 1 else 1
            pre = relu(
                np_group_norm(
                    x, weights[p + "a/group_norm/gamma"], weights[p + "a/group_norm/beta"]
                )
            )
            proj = p + "a/proj/standardized_conv2d/kernel"
            shortcut = np_conv(pre, weights[proj], stride) if proj in weights else x
            r = np_conv(pre, weights[p + "a/standardized_conv2d/kernel"])
            r = relu(
                np_group_norm(
                    r, weights[p + "b/group_norm/gamma"], weights[p + "b/group_norm/beta"]
                )
            )
            r = np_conv(r, weights[p + "b/standardized_conv2d/kernel"], stride, 1)
            r = relu(
                np_group_norm(
                    r, weights[p + "c/group_norm/gamma"], weights[p + "c/group_norm/beta"]
                )
            )
            x = shortcut + np_conv(r, weights[p + "c/standardized_conv2d/kernel"])
            unit += 1
        block += 1
    x = relu(
        np_group_norm(x, weights["resnet/group_norm/gamma"], weights["resnet/group_norm/beta"])
    )
    return x.mean(axis=(1, 2))


# ---------------------------------------------------------------------------------------------


def test_npz_backbone_matches_numpy_reference():
    weights = random_checkpoint(SMALL, head_classes=21843)
    backbone = models.backbone_from_npz(weights)
    images = np.random.default_rng(1).uniform(0, 1, (2, 37, 45, 3)).astype(np.float32)
    got = backbone(images).numpy()
    want = np_forward(weights, images)
    assert got.shape == (2, SMALL.feature_dim) == want.shape
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize(
    ("units", "filters", "name", "features"),
    [
        ((3, 4, 6, 3), 64, "R50x1", 2048),
        ((3, 4, 23, 3), 192, "R101x3", 6144),
        ((3, 8, 36, 3), 128, "R152x2", 4096),
        ((3, 8, 36, 3), 256, "R152x4", 8192),
    ],
)
def test_architecture_is_inferred_from_keys(units, filters, name, features):
    keys = {"resnet/root_block/standardized_conv2d/kernel": np.zeros((7, 7, 3, filters))}
    for block, count in enumerate(units, start=1):
        for unit in range(1, count + 1):
            keys[f"resnet/block{block}/unit{unit:02d}/a/standardized_conv2d/kernel"] = np.zeros(1)
    arch = models.architecture_of(keys)
    assert (arch.units, arch.name, arch.feature_dim) == (units, name, features)


def test_bit_s_and_bit_m_heads_are_dropped(tmp_path):
    for classes in (1000, 21843):
        path = tmp_path / f"ckpt-{classes}.npz"
        np.savez(path, **random_checkpoint(SMALL, head_classes=classes))
        backbone = models.load_backbone(str(path))
        assert backbone.output_shape == (None, SMALL.feature_dim)


def test_checkpoint_round_trip_and_gcs(gcs, tmp_path):
    weights = random_checkpoint(SMALL, seed=3)
    backbone = models.backbone_from_npz(weights)
    bucket = gcs.new_bucket()
    models.save_npz(f"gs://{bucket}/ckpt.npz", backbone)
    again = models.load_backbone(f"gs://{bucket}/ckpt.npz")
    images = np.random.default_rng(2).uniform(0, 1, (1, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(again(images).numpy(), backbone(images).numpy(), rtol=1e-6)


def test_shipped_tiny_checkpoint_is_small_and_loads():
    import os

    path = model_sources.tiny_checkpoint_path()
    assert os.path.getsize(path) <= 5 * 2**20
    weights = {k: v.astype(np.float64) for k, v in models.read_npz(path).items()}  # stored f16
    assert "resnet/head/conv2d/kernel" in weights  # pretrained with a head, like BiT-S/M
    backbone = models.load_backbone("bittune-tiny")
    images = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    features = backbone(images).numpy()
    np.testing.assert_allclose(features, np_forward(weights, images), rtol=2e-4, atol=2e-4)


def test_hub_savedmodel_source_gives_the_same_features(tmp_path):
    tf = models.tf
    backbone = models.backbone_from_npz(random_checkpoint(SMALL, seed=5))
    folder = tmp_path / "hub-model"
    tf.saved_model.save(backbone, str(folder))
    via_hub = models.load_backbone(str(folder))
    images = np.random.default_rng(4).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(via_hub(images).numpy(), backbone(images).numpy(), atol=1e-4)
    assert via_hub.trainable_weights  # fine-tunable


@pytest.mark.parametrize("family", ["S", "M"])
def test_exact_names_go_to_their_own_source(family):
    for arch in ("50x1", "50x3", "101x1", "101x3", "152x4"):
        npz, hub = f"BiT-{family}-R{arch}", f"bit-{family.lower()}-r{arch}"
        url = f"https://storage.googleapis.com/bit_models/{npz}.npz"
        assert model_sources.resolve(npz) == ("npz", url)
        assert model_sources.resolve(npz + ".npz") == ("npz", url)
        assert model_sources.resolve(hub) == (
            "hub",
            f"https://tfhub.dev/google/bit/{family.lower()}-r{arch}/1",
        )
        for spelt in (npz.upper(), npz.lower().replace("bit-", "Bit-"), hub.upper()):
            with pytest.raises(ModelError, match=f"did you mean {npz} \\(.npz\\) or {hub}"):
                model_sources.resolve(spelt)
    only_npz = f"BiT-{family}-R152x2"  # published as .npz only
    assert model_sources.resolve(only_npz)[0] == "npz"
    with pytest.raises(ModelError, match=f"did you mean {only_npz} \\(.npz\\)\\?"):
        model_sources.resolve(only_npz.lower())
    assert model_sources.resolve("bittune-tiny")[0] == "npz"
    assert len(model_sources.HUB_MODELS) == 10 and len(model_sources.NPZ_MODELS) == 12


def test_an_unreachable_source_names_the_url_tried():
    url = "http://127.0.0.1:9/bit_models/BiT-M-R50x1.npz"  # nothing listens on port 9
    with pytest.raises(ModelError, match=f"cannot read checkpoint {url}"):
        models.load_backbone(url)
    with pytest.raises(ModelError, match="cannot load TF Hub model http://127.0.0.1:9/hub"):
        models.hub_backbone("http://127.0.0.1:9/hub")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("bit-m-r50x9", "unknown model 'bit-m-r50x9'; valid names: bittune-tiny, BiT-S-R50x1"),
        ("/no/such/model.npz", "cannot read checkpoint /no/such/model.npz"),
        ("/no/such/folder", "is neither a known name"),
        ("", "no model given"),
    ],
)
def test_bad_model_sources(source, message):
    with pytest.raises(ModelError, match=message.replace("(", r"\(")):
        models.load_backbone(source)


def test_not_a_bit_checkpoint(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.zeros(3))
    with pytest.raises(ModelError, match="not a BiT checkpoint"):
        models.load_backbone(str(tmp_path / "x.npz"))
    weights = random_checkpoint(SMALL)
    del weights["resnet/block2/unit02/b/group_norm/gamma"]
    np.savez(tmp_path / "y.npz", **weights)
    with pytest.raises(ModelError, match="lacks 1 weight"):
        models.load_backbone(str(tmp_path / "y.npz"))


def test_classifier_head_starts_at_zero():
    backbone = models.backbone_from_npz(random_checkpoint(SMALL))
    classifier = models.build_classifier(backbone, 7)
    logits = classifier(np.zeros((3, 32, 32, 3), np.float32)).numpy()
    assert logits.shape == (3, 7) and not logits.any()


# --- mixed precision --------------------------------------------------------------------------


@pytest.fixture
def policy():
    """Set a global mixed-precision policy for one test, float32 again afterwards."""
    tf = models.tf
    yield tf.keras.mixed_precision.set_global_policy
    tf.keras.mixed_precision.set_global_policy("float32")


def test_group_norm_statistics_are_float32_under_bfloat16(policy):
    tf = models.tf
    rng = np.random.default_rng(3)
    x = rng.normal(30.0, 1.0, (2, 8, 8, 64)).astype(np.float32)  # mean far from zero
    x = tf.cast(tf.cast(x, tf.bfloat16), tf.float32).numpy()  # what a bf16 layer receives
    gamma, beta = rng.uniform(0.5, 1.5, 64), rng.normal(0, 0.1, 64)
    expected = np_group_norm(x.astype(np.float64), gamma, beta)
    policy("mixed_bfloat16")
    layer = models.GroupNorm()
    out = layer(tf.cast(x, tf.bfloat16))
    layer.set_weights([gamma, beta])
    out = layer(tf.cast(x, tf.bfloat16))
    assert out.dtype == tf.bfloat16
    error = np.abs(out.numpy().astype(np.float64) - expected)
    # Only the output's bf16 rounding (under 0.4%); bf16 statistics would be off by far more.
    assert np.all(error <= 0.004 * np.abs(expected) + 1e-3)


def test_bfloat16_features_match_float32(policy):
    images = np.random.default_rng(8).uniform(0, 1, (4, 64, 64, 3)).astype(np.float32)
    weights = random_checkpoint(SMALL, seed=9)
    reference = models.backbone_from_npz(weights)(images).numpy()
    policy("mixed_bfloat16")
    features = models.backbone_from_npz(weights)(images).numpy()
    relative = np.linalg.norm(features - reference) / np.linalg.norm(reference)
    assert features.dtype == np.float32 and relative < 0.07  # measured: see BENCHMARKS.md


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_savedmodel_backbone_trains_under_mixed_precision(precision, policy, tmp_path):
    tf = models.tf
    folder = tmp_path / "backbone"
    tf.saved_model.save(models.load_backbone("bittune-tiny"), str(folder))  # a hub-style model
    policy(precision)
    classifier = models.build_classifier(models.load_backbone(str(folder)), 3)
    images = np.random.default_rng(1).uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    labels = tf.one_hot([0, 1, 2, 0], 3)
    with tf.GradientTape() as tape:
        logits = classifier(images, training=True)
        loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels, logits))
    grads = tape.gradient(loss, classifier.trainable_variables)
    assert logits.dtype == tf.float32 and np.isfinite(float(loss))
    assert all(g is not None for g in grads) and len(grads) > 2  # the backbone learns too
