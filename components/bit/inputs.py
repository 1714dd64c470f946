"""Reading the dataset's TFRecords with tf.data: the parser built from the one record schema
(:data:`components.bit.tfrecords.FEATURES`), decoding, resizing, and the evaluation input
pipeline shared by training's validation and the evaluation stage."""

from __future__ import annotations

from collections.abc import Sequence

from components.bit.tf_env import import_tensorflow
from components.bit.tfrecords import FEATURES

tf = import_tensorflow()

_KINDS = {bytes: tf.string, int: tf.int64}
FEATURE_SPEC = {key: tf.io.FixedLenFeature([], _KINDS[kind]) for key, kind in FEATURES}
# What training and evaluation read of each record.
TRAINING_KEYS = ("image/encoded", "image/format", "label")


def records(paths: Sequence[str], parse: bool = True):
    """The records of ``paths`` in a fixed order, parsed (or still serialized)."""
    files = tf.data.Dataset.from_tensor_slices(list(paths))
    stream = files.interleave(
        lambda path: tf.data.TFRecordDataset(path, buffer_size=8 * 2**20),
        cycle_length=max(1, min(len(paths), 8)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return stream.map(parse_example, tf.data.AUTOTUNE) if parse else stream


def parse_example(serialized):
    """The fields training and evaluation use, from one serialized record."""
    return tf.io.parse_single_example(serialized, {k: FEATURE_SPEC[k] for k in TRAINING_KEYS})


def decode(encoded):
    """JPEG/PNG/GIF/BMP bytes as a uint8 RGB image (grayscale is expanded to 3 channels)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def resize(image, size: int):
    """``image`` (uint8) at ``size`` x ``size``, untouched when already that size."""

    def resized():
        out = tf.image.resize(image, (size, size), method="bilinear")
        return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)

    shape = tf.shape(image)
    same = tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size))
    out = tf.cond(same, lambda: image, resized)
    out.set_shape([size, size, 3])
    return out


def to_unit_range(images):
    """uint8 pixels to float32 in [0, 1] (float batches, e.g. after MixUp, pass through)."""
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) / 255.0
    return images


def eval_dataset(paths: Sequence[str], crop: int, batch_size: int):
    """Evaluation preprocessing: resize straight to the crop size; every example, in order.
    Yields (uint8 images, class indices)."""

    def prepare(example):
        return resize(decode(example["image/encoded"]), crop), example["label"]

    stream = records(paths).map(prepare, tf.data.AUTOTUNE, deterministic=True)
    return stream.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def encoded_dataset(paths: Sequence[str], batch_size: int):
    """(encoded image bytes, class index, source URI, source SHA-256) batches, in order: what
    a serving signature takes, and which source image each example is."""
    keys = ("image/encoded", "label", "source/uri", "source/sha256")
    spec = {key: FEATURE_SPEC[key] for key in keys}

    def parse(serialized):
        example = tf.io.parse_single_example(serialized, spec)
        return tuple(example[key] for key in keys)

    stream = records(paths, parse=False).map(parse, tf.data.AUTOTUNE)
    return stream.batch(batch_size)
