"""The model numerics bittune writes itself instead of taking from a library: Group
Normalization (statistics and hand-written gradient) and Weight Standardization under mixed
precision, each against a plain reference. The schedule and the fused momentum update are
tested in test_optimizer."""

import numpy as np
import pytest

from components.bit import models

tf = models.tf


def plain_group_norm(x, gamma, beta, groups, epsilon):
    """Group Normalization the textbook way (tf.nn.moments), for autodiff to differentiate."""
    shape = tf.shape(x)
    channels = x.shape[-1]
    grouped = tf.reshape(x, [shape[0], shape[1], shape[2], groups, channels // groups])
    mean, variance = tf.nn.moments(grouped, [1, 2, 4], keepdims=True)
    normalised = tf.reshape((grouped - mean) * tf.math.rsqrt(variance + epsilon), shape)
    return normalised * gamma + beta


@pytest.fixture
def policy():
    yield tf.keras.mixed_precision.set_global_policy
    tf.keras.mixed_precision.set_global_policy("float32")


# --- Group Normalization ---------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [10, 100, 1000])
def test_group_norm_stays_precise_far_from_zero_mean(ratio):
    """|mean| / std per group of 10, 100, 1000: the one-pass E[x^2] - E[x]^2 lost 1.4e-5, 8e-4
    and 1.2e-1 of relative error here; the two-pass statistics stay within 3e-5."""
    rng = np.random.default_rng(ratio)
    x = (ratio + rng.normal(0.0, 1.0, (2, 7, 9, 64))).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, 64).astype(np.float32)
    beta = rng.normal(0.0, 0.1, 64).astype(np.float32)
    out = models.group_norm(tf.constant(x), tf.constant(gamma), tf.constant(beta), 32, 1e-5)
    wide = [tf.constant(v, tf.float64) for v in (x, gamma, beta)]
    expected = plain_group_norm(*wide, 32, 1e-5).numpy()
    error = np.abs(out.numpy() - expected).max() / np.abs(expected).max()
    assert error <= 3e-5, error


@pytest.mark.parametrize(
    ("shape", "groups"),
    [((1, 5, 3, 32), 8), ((3, 7, 9, 64), 32), ((2, 1, 1, 16), 1), ((1, 4, 4, 32), 32)],
)
def test_group_norm_gradient_matches_autodiff_of_the_plain_form(shape, groups):
    """Batch 1, odd spatial sizes, one group and one channel per group; against float64
    autodiff of the textbook implementation."""
    rng = np.random.default_rng(sum(shape) + groups)
    channels = shape[-1]
    x = rng.normal(3.0, 2.0, shape)
    gamma, beta = rng.uniform(0.5, 1.5, channels), rng.normal(0.0, 1.0, channels)
    dy = rng.normal(0.0, 1.0, shape)

    def gradients(function, dtype):
        values = [tf.constant(v, dtype) for v in (x, gamma, beta)]
        with tf.GradientTape() as tape:
            tape.watch(values)
            loss = tf.reduce_sum(function(*values, groups, 1e-5) * tf.constant(dy, dtype))
        return [g.numpy() for g in tape.gradient(loss, values)]

    expected = gradients(plain_group_norm, tf.float64)
    got_all = gradients(models.group_norm, tf.float32)
    for name, got, want in zip(("x", "gamma", "beta"), got_all, expected, strict=True):
        error = np.abs(got - want).max() / np.abs(want).max()
        assert error < 1e-5, (name, error)


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_group_norm_layer_gradients_under_every_policy(precision, policy):
    """The layer computes in float32 and casts back: its gradients are the float32 ones up to
    the compute dtype's rounding of the input and of the incoming gradient."""
    rng = np.random.default_rng(5)
    x = rng.normal(2.0, 1.0, (1, 5, 7, 32)).astype(np.float32)
    dy = rng.normal(0.0, 1.0, x.shape).astype(np.float32)
    policy(precision)
    layer = models.GroupNorm(groups=8)
    compute = tf.as_dtype(layer.compute_dtype)
    inputs = tf.cast(x, compute)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        out = layer(inputs)
        loss = tf.reduce_sum(tf.cast(out, tf.float32) * tf.cast(tf.cast(dy, compute), tf.float32))
    got = tape.gradient(loss, [inputs, *layer.trainable_variables])
    assert out.dtype == compute and got[0].dtype == compute
    assert all(v.dtype == tf.float32 for v in layer.trainable_variables)
    wide = [tf.constant(tf.cast(inputs, tf.float32).numpy(), tf.float64), tf.ones(32, tf.float64),
            tf.zeros(32, tf.float64)]  # fmt: skip
    with tf.GradientTape() as tape:
        tape.watch(wide)
        loss = tf.reduce_sum(plain_group_norm(*wide, 8, 1e-5)
                             * tf.cast(tf.cast(dy, compute), tf.float64))  # fmt: skip
    want = tape.gradient(loss, wide)
    tolerance = {"float32": 1e-5, "mixed_bfloat16": 1e-2, "mixed_float16": 2e-3}[precision]
    for got_one, want_one in zip(got, want, strict=True):
        got_one = tf.cast(got_one, tf.float64).numpy()
        error = np.abs(got_one - want_one.numpy()).max() / np.abs(want_one.numpy()).max()
        assert error < tolerance, (precision, error)


# --- Weight Standardization ------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_weight_standardization_reads_the_float32_kernel(precision, policy):
    """Under a mixed policy the kernel is standardised from its float32 values and only the
    result is rounded, not standardised from an already rounded kernel."""
    rng = np.random.default_rng(2)
    policy(precision)
    conv = models.StandardizedConv2D(16, 3, padding="same")
    images = tf.cast(rng.uniform(0.0, 1.0, (2, 6, 6, 8)), conv.compute_dtype)
    conv(images)
    kernel = rng.normal(0.05, 0.02, (3, 3, 8, 16)).astype(np.float32)  # mean far from zero
    conv.kernel.assign(kernel)
    assert conv.kernel.dtype == tf.float32
    compute = conv.compute_dtype
    from_float32 = tf.cast(models.standardize_kernel(tf.constant(kernel)), compute)
    from_rounded = tf.cast(models.standardize_kernel(tf.cast(tf.cast(kernel, compute),
                                                            tf.float32)), compute)  # fmt: skip
    assert not np.array_equal(from_float32.numpy(), from_rounded.numpy())
    expected = tf.nn.conv2d(images, from_float32, 1, "SAME")
    np.testing.assert_array_equal(conv(images).numpy(), expected.numpy())
