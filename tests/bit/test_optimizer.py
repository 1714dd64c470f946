"""The HyperRule schedule as a Keras schedule and the fused momentum update, against plain
references (the rule itself, tf-keras SGD)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from components.bit import hyperrule, models
from components.bit import optimizer as bit_optimizer

tf = models.tf


@pytest.mark.parametrize("examples", [100, 50_000, 900_000])
@pytest.mark.parametrize("batch", [512, 128])
def test_schedule_is_the_rule_at_every_boundary(examples, batch):
    rule = hyperrule.derive(examples, 300 * 300, overrides={"batch_size": batch})
    schedule = bit_optimizer.BitSchedule(rule.base_lr, rule.warmup_steps, rule.decay_steps)
    steps = {0, 1, rule.warmup_steps - 1, rule.warmup_steps, rule.total_steps - 1, rule.total_steps}
    for boundary in rule.decay_steps:
        steps |= {boundary - 1, boundary, boundary + 1}
    for step in sorted(steps):
        assert float(schedule(step)) == pytest.approx(rule.learning_rate(step), rel=1e-6), step


# --- the schedule ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("warmup", "decays"), [(100, [100, 200, 300]), (0, [0, 5]), (10, [10, 10, 20]), (3, [5])]
)
def test_the_keras_schedule_is_the_rule_at_every_step(warmup, decays):
    """Also where a decay step is the warm-up's end (validate() accepts it)."""
    schedule = bit_optimizer.BitSchedule(0.003, warmup, decays)
    for step in range(max(decays) + 3):
        want = hyperrule.learning_rate(step, 0.003, warmup, decays)
        assert float(schedule(step)) == pytest.approx(want, rel=1e-6), step


# --- the fused momentum update ---------------------------------------------------------------


def _train(optimizer_factory, steps=12, restore_at=None, loss_scale=False, folder=None):
    """A small model trained ``steps`` steps with a changing learning rate; its weights. With
    ``restore_at``, the optimizer and model are checkpointed there, rebuilt and restored."""
    rng = np.random.default_rng(0)
    data = rng.normal(0.0, 1.0, (steps, 8, 5)).astype(np.float32)
    targets = rng.normal(0.0, 1.0, (steps, 8, 3)).astype(np.float32)

    def build():
        tf.keras.utils.set_random_seed(1)
        model = tf.keras.Sequential([tf.keras.layers.Dense(4, activation="tanh"),
                                     tf.keras.layers.Dense(3)])  # fmt: skip
        model.build((None, 5))
        optimizer = optimizer_factory(bit_optimizer.BitSchedule(0.1, 3, [6, 9]))
        if loss_scale:
            optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
        return model, optimizer

    def make_step(model, optimizer):
        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(x) - y))
                if loss_scale:
                    loss = optimizer.get_scaled_loss(loss)
            grads = tape.gradient(loss, model.trainable_variables)
            if loss_scale:
                grads = optimizer.get_unscaled_gradients(grads)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))

        return step

    model, optimizer = build()
    step = make_step(model, optimizer)
    for i in range(steps):
        if i == restore_at:
            path = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(folder / "c"))
            model, optimizer = build()
            tf.train.Checkpoint(model=model, optimizer=optimizer).restore(path).assert_consumed()
            step = make_step(model, optimizer)
        step(data[i], targets[i])
    return [v.numpy() for v in model.trainable_variables]


def _sgd(schedule):
    return tf.keras.optimizers.SGD(schedule, momentum=0.9)


def _fused(schedule):
    return bit_optimizer.MomentumSGD(schedule, momentum=0.9)


@pytest.mark.parametrize("loss_scale", [False, True])
def test_momentum_sgd_matches_keras_sgd_over_a_changing_rate(loss_scale):
    fused, keras = _train(_fused, loss_scale=loss_scale), _train(_sgd, loss_scale=loss_scale)
    for got, want in zip(fused, keras, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_momentum_sgd_resumes_from_a_checkpoint_as_if_never_stopped(tmp_path):
    uninterrupted = _train(_fused)
    for got, want in zip(_train(_fused, restore_at=7, folder=tmp_path), uninterrupted, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_the_private_sgd_internals_momentum_sgd_reads_are_there():
    """MomentumSGD finds a variable's velocity through tf-keras's private ``_index_dict`` and
    ``_var_key``: a tf-keras upgrade that changes them fails here, and training refuses to run
    (it does not silently train without momentum)."""
    variable = tf.Variable(tf.zeros([3]))
    optimizer = bit_optimizer.MomentumSGD(0.1, momentum=0.9)
    optimizer.build([variable])
    assert isinstance(optimizer._index_dict, dict), "tf-keras SGD lost _index_dict"
    key = optimizer._var_key(variable)
    assert optimizer.momentums[optimizer._index_dict[key]].shape == variable.shape

    class Changed(bit_optimizer.MomentumSGD):
        _var_key = None  # what an upgrade that renamed it would leave

    with pytest.raises(bit_optimizer.OptimizerError, match="install tf-keras 2.21"):
        Changed(0.1, momentum=0.9).build([tf.Variable(tf.zeros([3]))])


MIRRORED = """
import json, os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
sys.path.insert(0, sys.argv[1])
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tests.training_helpers import mirrored_weights
print("WEIGHTS", json.dumps({kind: mirrored_weights(kind) for kind in ("fused", "keras")}))
"""


def test_momentum_sgd_matches_keras_sgd_under_mirrored_strategy():
    """Two replicas (two logical CPUs, configured before TensorFlow starts: a process of its
    own)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", MIRRORED, root], capture_output=True,
                          text=True, timeout=300, env=env, cwd=root)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("WEIGHTS "))
    weights = json.loads(line.removeprefix("WEIGHTS "))
    assert len(weights["fused"]) == 4
    for got, want in zip(weights["fused"], weights["keras"], strict=True):
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-6, atol=1e-7)
