"""The BiT-HyperRule's learning-rate schedule and the momentum optimizer training uses.

Momentum: tf-keras SGD's form (the learning rate inside the velocity: ``v = m v - lr g``,
``w += v``), as BiT's TF2 reference code trains; BiT's PyTorch and JAX code apply the learning
rate outside the velocity, which differs on warm-up steps and right after each decay.
"""

from __future__ import annotations

from collections.abc import Sequence

from components.bit import hyperrule
from components.bit.errors import BittuneError
from components.bit.inputs import tf


class OptimizerError(BittuneError):
    """The installed tf-keras cannot run bittune's optimizer."""


class BitSchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    """The HyperRule's learning rate as a Keras schedule: linear warm-up, then
    :func:`hyperrule.decayed_rate` of the decay steps strictly passed -- the rule of
    :func:`hyperrule.learning_rate`, step for step (also when a decay step is the warm-up's
    end)."""

    def __init__(self, base_lr: float, warmup_steps: int, decay_steps: Sequence[int]):
        self.base_lr = float(base_lr)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = [int(s) for s in decay_steps]
        # After k decay steps (strictly passed): the same constants hyperrule.learning_rate gives.
        self._plateaus = [
            hyperrule.decayed_rate(self.base_lr, k) for k in range(len(self.decay_steps) + 1)
        ]

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.base_lr * step / max(self.warmup_steps, 1)
        passed = tf.add_n([tf.cast(step > s, tf.int32) for s in self.decay_steps] or [0])
        plateau = tf.gather(tf.constant(self._plateaus, tf.float32), passed)
        return tf.where(step < self.warmup_steps, warm, plateau)

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps,
        }


class MomentumSGD(tf.keras.optimizers.SGD):
    """tf-keras SGD whose dense momentum update is one fused op (``v = m v - lr g``,
    ``w += v``: ResourceApplyKerasMomentum, as the legacy optimizer uses) instead of six
    element-wise passes over every weight; same variables, so checkpoints are unchanged."""

    def build(self, var_list):
        # The velocity of a variable is found through tf-keras's private index (pinned to
        # tf-keras 2.21 in pyproject.toml): refuse to train if an upgrade changed it.
        changed = OptimizerError(
            "this tf-keras no longer has the SGD internals bittune's fused momentum update "
            "reads (_index_dict, _var_key): install tf-keras 2.21"
        )
        if not callable(getattr(self, "_var_key", None)):
            raise changed
        super().build(var_list)
        found = getattr(self, "_index_dict", None)
        if not isinstance(found, dict) or not all(self._var_key(v) in found for v in var_list):
            raise changed

    def update_step(self, gradient, variable):
        if isinstance(gradient, tf.IndexedSlices) or self.nesterov or not self.momentum:
            return super().update_step(gradient, variable)
        velocity = self.momentums[self._index_dict[self._var_key(variable)]]
        return tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle,
            accum=velocity.handle,
            lr=tf.cast(self.learning_rate, variable.dtype),
            grad=gradient,
            momentum=tf.cast(self.momentum, variable.dtype),
            use_locking=False,
            use_nesterov=False,
        )
