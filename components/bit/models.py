"""BiT backbones behind one input contract: float32 images in [0, 1], NHWC -> pre-logit features.

Sources (see :func:`load_backbone`):

* TF Hub: short names ``bit-s-r50x1`` … ``bit-m-r152x4`` (their tfhub.dev feature-vector
  handles), any hub handle, or a local / ``gs://`` SavedModel folder that takes [0, 1] images.
* The official ``.npz`` checkpoints: short names ``BiT-S-R50x1`` … ``BiT-M-R152x4`` (the public
  ``bit_models`` bucket), or any local, ``gs://`` or ``https://`` ``.npz`` path. They load into
  bittune's own Keras ResNet-v2 (GroupNorm + Weight Standardization); depth and width come from
  the keys; the head (1,000 or 21,843 classes) is dropped. Their weights expect [-1, 1] pixels:
  the model rescales inside, so callers always pass [0, 1].
* ``bittune-tiny``: a small BiT-architecture checkpoint shipped with bittune (same layout),
  pretrained by ``python -m components.bit.pretrain``: the embedded default for demos and tests.

Mixed precision: GroupNorm statistics are always computed in float32 (then applied in the
compute dtype), and TF Hub / SavedModel backbones run in float32 inside a bfloat16 or float16
model, since their signatures take float32 only.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from components.bit import storage
from components.bit.model_sources import NPZ, ModelError, resolve
from components.bit.tf_env import import_tensorflow

tf = import_tensorflow()

GN_GROUPS = 32
GN_EPSILON = 1e-5
WS_EPSILON = 1e-10
DEPTH_UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
_UNIT_KEY = re.compile(r"resnet/block(\d+)/unit(\d+)/")


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A BiT ResNet-v2: bottleneck units per stage and the width multiplier."""

    units: tuple[int, ...]
    width: float

    @property
    def root_filters(self) -> int:
        return int(64 * self.width)

    @property
    def feature_dim(self) -> int:
        return self.root_filters * 2 ** (len(self.units) - 1) * 4

    @property
    def name(self) -> str:
        depth = {units: depth for depth, units in DEPTH_UNITS.items()}.get(self.units)
        label = f"R{depth}" if depth else "R" + "-".join(map(str, self.units))
        return f"{label}x{self.width:g}"


# ---------------------------------------------------------------------------------------------
# Layers


class StandardizedConv2D(tf.keras.layers.Conv2D):
    """A bias-free convolution whose kernel is standardised (Weight Standardization) on use:
    zero mean and unit variance over its height, width and input-channel axes, computed from the
    float32 kernel under any precision policy."""

    def __init__(self, filters: int, kernel_size: int, strides: int = 1, **kwargs):
        kwargs.setdefault("use_bias", False)
        kwargs.setdefault("padding", "valid")
        super().__init__(filters, kernel_size, strides=strides, **kwargs)

    def add_weight(self, *args, **kwargs):
        # Read as stored (float32) under a mixed policy too: the kernel is standardised from the
        # float32 weights and only the result is cast to the compute dtype.
        kwargs.setdefault("experimental_autocast", False)
        return super().add_weight(*args, **kwargs)

    def convolution_op(self, inputs, kernel):
        kernel = standardize_kernel(tf.cast(kernel, tf.float32))
        return super().convolution_op(inputs, tf.cast(kernel, inputs.dtype))


def standardize_kernel(kernel):
    """Weight Standardization of a float32 HWIO kernel. Without a GPU: one training-mode
    FusedBatchNorm over the kernel seen as ``[1, 1, H*W*I, O]`` (statistics per output channel,
    a fused gradient), a third of the composite's time on CPU. With one: the composite, which
    XLA (on by default there) fuses; the fused op's GPU path is not verified."""
    if tf.config.list_physical_devices("GPU"):
        mean, variance = tf.nn.moments(kernel, axes=[0, 1, 2], keepdims=True)
        return (kernel - mean) / tf.sqrt(variance + WS_EPSILON)
    channels = kernel.shape[-1]
    empty = tf.zeros([0])
    standardized = tf.raw_ops.FusedBatchNormV3(
        x=tf.reshape(kernel, [1, 1, -1, channels]),
        scale=tf.ones([channels]),
        offset=tf.zeros([channels]),
        mean=empty,
        variance=empty,
        epsilon=WS_EPSILON,
        exponential_avg_factor=1.0,
        data_format="NHWC",
        is_training=True,
    ).y
    return tf.reshape(standardized, tf.shape(kernel))


class GroupNorm(tf.keras.layers.Layer):
    """Group Normalization over NHWC channels, computed in float32 under any precision policy
    and cast back (bfloat16 statistics lose several percent of feature accuracy): two-pass
    statistics, then one multiply-add of the centred values (:func:`group_norm`)."""

    def __init__(self, groups: int = GN_GROUPS, epsilon: float = GN_EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.groups, self.epsilon = groups, epsilon

    def build(self, input_shape):
        channels = int(input_shape[-1])
        if channels % self.groups:
            raise ValueError(f"{channels} channels do not split into {self.groups} groups")
        # float32 when read, too: not cast to the compute dtype under a mixed policy
        kwargs = {"shape": (channels,), "experimental_autocast": False}
        self.gamma = self.add_weight(name="gamma", initializer="ones", **kwargs)
        self.beta = self.add_weight(name="beta", initializer="zeros", **kwargs)
        super().build(input_shape)

    def call(self, inputs):
        wide = tf.cast(inputs, tf.float32)
        gamma, beta = tf.convert_to_tensor(self.gamma), tf.convert_to_tensor(self.beta)
        return tf.cast(group_norm(wide, gamma, beta, self.groups, self.epsilon), inputs.dtype)

    def get_config(self):
        return {**super().get_config(), "groups": self.groups, "epsilon": self.epsilon}


def group_norm(x, gamma, beta, groups: int, epsilon: float):
    """Group Normalization of float32 NHWC ``x`` with a hand-written gradient. Two-pass
    statistics: the group means first, then the variance of the centred values, which keeps
    float32 precise however far the mean lies from zero (E[x^2] - E[x]^2 loses it: 8e-4 relative
    error at mean/std 100, 0.1 at 1000). The output is one multiply-add of the centred values;
    the backward two per-channel reductions and one multiply-add (autodiff's is twice the ops)."""
    channels = x.shape[-1]
    width = channels // groups

    @tf.custom_gradient
    def norm(x, gamma, beta):
        n = tf.shape(x)[0]
        count = tf.cast(tf.shape(x)[1] * tf.shape(x)[2] * width, tf.float32)

        def grouped(per_channel):  # [N, C] -> [N, G, C/G]
            return tf.reshape(per_channel, [n, groups, width])

        def spread(per_group):  # [N, G, 1 or C/G] -> [N, 1, 1, C]
            return tf.reshape(tf.broadcast_to(per_group, [n, groups, width]), [n, 1, 1, channels])

        mean = tf.reduce_sum(grouped(tf.reduce_sum(x, [1, 2])), -1, keepdims=True) / count
        centred = x - spread(mean)
        square = tf.reduce_sum(
            grouped(tf.reduce_sum(tf.square(centred), [1, 2])), -1, keepdims=True
        )
        rstd = tf.math.rsqrt(square / count + epsilon)
        g = tf.reshape(gamma, [1, groups, width])
        scale = spread(g * rstd)
        y = centred * scale + tf.reshape(beta, [1, 1, 1, channels])

        def grad(dy):
            dy_c = grouped(tf.reduce_sum(dy * centred, [1, 2]))  # per (sample, channel)
            dy_sum = grouped(tf.reduce_sum(dy, [1, 2]))
            d_gamma = tf.reshape(tf.reduce_sum(dy_c * rstd, 0), [channels])
            d_beta = tf.reshape(tf.reduce_sum(dy_sum, 0), [channels])
            a = tf.reduce_sum(dy_c * g, -1, keepdims=True)
            b = tf.reduce_sum(dy_sum * g, -1, keepdims=True)
            # d/dx of (x - mean) * rstd * g: dy*scale - (b + centred * a * rstd^2) * rstd / count
            c_coef = -a * rstd**3 / count
            return (
                dy * scale + (centred * spread(c_coef) + spread(-b * rstd / count)),
                d_gamma,
                d_beta,
            )

        return y, grad

    return norm(x, gamma, beta)


def _group_norm(name: str):
    return GroupNorm(name=name)


def _unit(x, mid: int, out: int, stride: int, project: bool, prefix: str):
    relu = tf.keras.layers.ReLU
    pre = relu()(_group_norm(f"{prefix}_a_gn")(x))
    shortcut = StandardizedConv2D(out, 1, stride, name=f"{prefix}_a_proj")(pre) if project else x
    r = StandardizedConv2D(mid, 1, name=f"{prefix}_a_conv")(pre)
    r = relu()(_group_norm(f"{prefix}_b_gn")(r))
    if stride == 1:  # "same" pads 1 on every side here, as BiT does; not when strided
        r = StandardizedConv2D(mid, 3, padding="same", name=f"{prefix}_b_conv")(r)
    else:
        r = tf.keras.layers.ZeroPadding2D(1)(r)
        r = StandardizedConv2D(mid, 3, stride, name=f"{prefix}_b_conv")(r)
    r = relu()(_group_norm(f"{prefix}_c_gn")(r))
    r = StandardizedConv2D(out, 1, name=f"{prefix}_c_conv")(r)
    return tf.keras.layers.Add()([shortcut, r])


def build_resnet(arch: Architecture, name: str = "bit_backbone") -> tf.keras.Model:
    """bittune's Keras BiT ResNet-v2: [0, 1] images -> ``arch.feature_dim`` features."""
    inputs = tf.keras.Input((None, None, 3), name="images")
    x = tf.keras.layers.Rescaling(2.0, offset=-1.0, name="to_minus_one_one")(inputs)
    x = tf.keras.layers.ZeroPadding2D(3)(x)
    x = StandardizedConv2D(arch.root_filters, 7, 2, name="root_block_conv")(x)
    x = tf.keras.layers.ZeroPadding2D(1)(x)
    x = tf.keras.layers.MaxPooling2D(3, strides=2)(x)
    for block, count in enumerate(arch.units, start=1):
        mid = arch.root_filters * 2 ** (block - 1)
        for unit in range(1, count + 1):
            stride = 2 if unit == 1 and block > 1 else 1
            x = _unit(x, mid, 4 * mid, stride, unit == 1, f"block{block}_unit{unit:02d}")
    x = tf.keras.layers.ReLU()(_group_norm("pre_head_gn")(x))
    x = tf.keras.layers.GlobalAveragePooling2D(name="features")(x)
    x = tf.keras.layers.Activation("linear", dtype="float32", name="features_float32")(x)
    return tf.keras.Model(inputs, x, name=name)


# ---------------------------------------------------------------------------------------------
# The .npz layout

_LAYER_TO_KEY = [
    (re.compile(r"^root_block_conv$"), "resnet/root_block/standardized_conv2d/"),
    (re.compile(r"^pre_head_gn$"), "resnet/group_norm/"),
    (
        re.compile(r"^block(\d+)_unit(\d+)_a_proj$"),
        "resnet/block{0}/unit{1}/a/proj/standardized_conv2d/",
    ),
    (
        re.compile(r"^block(\d+)_unit(\d+)_([abc])_conv$"),
        "resnet/block{0}/unit{1}/{2}/standardized_conv2d/",
    ),
    (re.compile(r"^block(\d+)_unit(\d+)_([abc])_gn$"), "resnet/block{0}/unit{1}/{2}/group_norm/"),
]


def npz_variables(model: tf.keras.Model) -> dict[str, Any]:
    """The model's variables by their key in the official .npz layout."""
    out = {}
    for layer in model.layers:
        for pattern, template in _LAYER_TO_KEY:
            match = pattern.match(layer.name)
            if match:
                prefix = template.format(*match.groups())
                for variable in layer.weights:
                    leaf = variable.name.split("/")[-1].split(":")[0]
                    out[prefix + leaf] = variable
    return out


def architecture_of(weights: Mapping[str, np.ndarray]) -> Architecture:
    """Depth and width from the keys and the root kernel's shape."""
    root = weights.get("resnet/root_block/standardized_conv2d/kernel")
    if root is None or root.ndim != 4 or root.shape[:3] != (7, 7, 3):
        raise ModelError("not a BiT checkpoint: no 7x7x3 root kernel")
    counts: dict[int, set[int]] = {}
    for key in weights:
        match = _UNIT_KEY.match(key)
        if match:
            counts.setdefault(int(match[1]), set()).add(int(match[2]))
    if not counts or sorted(counts) != list(range(1, len(counts) + 1)):
        raise ModelError(f"not a BiT checkpoint: blocks {sorted(counts)} in the keys")
    units = tuple(len(counts[b]) for b in sorted(counts))
    return Architecture(units, root.shape[3] / 64)


def read_npz(source: str) -> dict[str, np.ndarray]:
    """The arrays of a local, gs:// or https:// .npz file (the error names the source tried)."""
    try:
        if source.startswith(("http://", "https://")):
            import urllib.request

            with urllib.request.urlopen(source, timeout=60) as response:
                data = response.read()
        else:
            data = storage.read_bytes(source)
    except (OSError, storage.StorageError) as exc:
        raise ModelError(f"cannot read checkpoint {source}: {exc}") from None
    try:
        with np.load(io.BytesIO(data)) as archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, OSError) as exc:
        raise ModelError(f"{source} is not an .npz checkpoint: {exc}") from None


def backbone_from_npz(weights: Mapping[str, np.ndarray], name: str = "bit_backbone"):
    """Build the architecture the keys describe and load the weights (the head is dropped)."""
    model = build_resnet(architecture_of(weights), name=name)
    variables = npz_variables(model)
    missing = sorted(set(variables) - set(weights))
    if missing:
        raise ModelError(f"checkpoint lacks {len(missing)} weight(s), e.g. {missing[0]}")
    for key, variable in variables.items():
        value = np.asarray(weights[key], dtype=np.float32)
        if tuple(variable.shape) != value.shape:
            raise ModelError(f"{key}: checkpoint shape {value.shape} != model {variable.shape}")
        variable.assign(value)
    return model


def save_npz(path: str, backbone: tf.keras.Model, head_kernel=None, head_bias=None, dtype=None):
    """Write ``backbone`` (and optionally a head) in the official .npz layout."""
    arrays = {
        key: v.numpy().astype(dtype or np.float32) for key, v in npz_variables(backbone).items()
    }
    if head_kernel is not None:
        arrays["resnet/head/conv2d/kernel"] = np.asarray(head_kernel)[None, None].astype(
            dtype or np.float32
        )
        arrays["resnet/head/conv2d/bias"] = np.asarray(head_bias).astype(dtype or np.float32)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    storage.write_bytes(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------------
# Loading any source


def hub_backbone(handle: str, name: str = "bit_backbone") -> tf.keras.Model:
    """A TF Hub (or SavedModel) feature vector taking [0, 1] images, wrapped as a Keras model."""
    import tensorflow_hub as hub

    try:
        # float32 whatever the global policy: the SavedModel's signature takes float32 only.
        layer = hub.KerasLayer(handle, trainable=True, name="hub_features", dtype="float32")
    except Exception as exc:  # hub raises many error types for unreachable handles
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load TF Hub model {handle}: {first}") from None
    inputs = tf.keras.Input((None, None, 3), name="images")
    outputs = tf.keras.layers.Activation("linear", dtype="float32")(layer(inputs))
    return tf.keras.Model(inputs, outputs, name=name)


def load_backbone(source: str, name: str = "bit_backbone") -> tf.keras.Model:
    """Any supported source as a Keras model: [0, 1] float32 NHWC images -> features."""
    kind, location = resolve(source)
    if kind == NPZ:
        return backbone_from_npz(read_npz(location), name=name)
    if location.startswith("gs://") and os.environ.get("STORAGE_EMULATOR_HOST"):
        raise ModelError("SavedModels on gs:// load through TensorFlow, which ignores emulators")
    return hub_backbone(location, name=name)


def build_classifier(backbone: tf.keras.Model, num_classes: int) -> tf.keras.Model:
    """Backbone + a zero-initialised dense head producing float32 logits."""
    inputs = tf.keras.Input((None, None, 3), name="images")
    features = backbone(inputs)
    logits = tf.keras.layers.Dense(
        num_classes,
        kernel_initializer="zeros",
        bias_initializer="zeros",
        dtype="float32",
        name="head",
    )(features)
    return tf.keras.Model(inputs, logits, name="bit_classifier")
