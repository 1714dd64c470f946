"""Training's input pipeline: shuffled endless stream, random crops and flips, MixUp on the
whole optimizer batch, micro-batches for gradient accumulation.

Determinism: every random choice (shuffle, crop, flip, MixUp's lambda) derives from the seed and
the example's position in the stream, so a run restarted from a checkpoint sees exactly the
batches an uninterrupted run would have seen from that step on.

MixUp works on the whole optimizer batch: one lambda per step, each example paired with its
mirror in the batch of ``batch_size`` examples, before the batch is split into micro-batches;
gradient accumulation therefore gives exactly the update of one large batch, MixUp included.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from components.bit import hyperrule, inputs
from components.bit.inputs import tf


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """How training examples are augmented and served (the table's random_crop, random_flip,
    mixup and seed; ``cache`` None caches decoded images when they fit in ``cache_bytes``)."""

    random_crop: bool = True
    random_flip: bool = True
    mixup: bool = True
    seed: int = 0
    cache: bool | None = None
    cache_bytes: int = 4 * 2**30


def train_dataset(
    paths: Sequence[str],
    rule: hyperrule.HyperRule,
    num_classes: int,
    config: Augmentation,
    num_examples: int,
    skip_examples: int = 0,
):
    """Endless micro-batches of ``rule.micro_batch_size``: ``(features, labels)`` with
    ``features["images"]`` uint8 (made [0, 1] floats on the accelerator) and one-hot (or, with
    MixUp, mixed) labels. With MixUp, ``features`` also holds each example's ``partners`` (its
    mirror in the optimizer batch) and ``lam``, the step's lambda, and the step mixes them.

    Shuffle, crop offsets, flips and MixUp's lambda are stateless functions of the seed and the
    example's index in the stream; ``skip_examples`` resumes the stream where a run stopped.
    """
    cache = config.cache
    if cache is None:
        cache = num_examples * rule.resize * rule.resize * 3 <= config.cache_bytes
    stream = _augmented(paths, rule, config, num_examples, cache, skip_examples)
    batches = stream.batch(rule.batch_size, drop_remainder=True)
    alpha = rule.mixup_alpha if config.mixup else 0.0
    mix = _mixup(alpha, num_classes, config.seed) if alpha > 0 else None

    def step_batch(indices, images, labels):
        """One optimizer batch, split into ``accumulation_steps`` micro-batches."""
        one_hot = tf.one_hot(labels, num_classes)
        features = {"images": images}
        if mix is not None:
            features, one_hot = mix(indices[0], images, one_hot)

        if rule.accumulation_steps == 1:  # the batch is the micro-batch: no copy
            return features, one_hot

        def split(tensor):
            micro = [rule.accumulation_steps, rule.micro_batch_size]
            return tf.reshape(tensor, tf.concat([micro, tf.shape(tensor)[1:]], 0))

        return tf.nest.map_structure(split, features), split(one_hot)

    micro = batches.map(step_batch, tf.data.AUTOTUNE, deterministic=True)
    if rule.accumulation_steps > 1:
        micro = micro.unbatch()
    options = tf.data.Options()
    # Every worker reads the whole stream and keeps its share of each batch: deterministic
    # whatever the number of shard files.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return micro.prefetch(tf.data.AUTOTUNE).with_options(options)


def _augmented(paths, rule, config: Augmentation, num_examples: int, cache: bool, skip: int):
    """(index, augmented uint8 image, label) per example, shuffled, endless, from ``skip``."""
    resize, crop, seed = rule.resize, rule.crop, config.seed
    # Uncached, records stay serialized until the one map that parses, decodes and augments.
    records = inputs.records(paths, parse=False)
    if cache:
        # Decoded once, at the resize size, then served from memory every epoch.
        def decoded(raw):
            example = inputs.parse_example(raw)
            image = inputs.resize(inputs.decode(example["image/encoded"]), resize)
            return {"image": image, "label": example["label"]}

        records = records.map(decoded, tf.data.AUTOTUNE, deterministic=True).cache()
    stream = (
        records.shuffle(min(num_examples, 4096), seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .enumerate()
        .skip(skip)
    )

    def augment(index, example):
        key = tf.stack([tf.cast(seed, tf.int64), index])
        if cache:
            image = example["image"]
            if config.random_crop:
                image = tf.image.stateless_random_crop(image, (crop, crop, 3), seed=key)
            else:
                image = inputs.resize(image, crop)
        else:
            example = inputs.parse_example(example)
            if config.random_crop:
                image = fused_random_crop(example, resize, crop, key)
            else:
                image = inputs.resize(inputs.decode(example["image/encoded"]), crop)
        if config.random_flip:
            image = tf.image.stateless_random_flip_left_right(image, seed=key + 1)
        return index, image, example["label"]

    return stream.map(augment, tf.data.AUTOTUNE, deterministic=True)


def _mixup(alpha: float, num_classes: int, seed: int):
    """MixUp of one optimizer batch: one lambda ~ Beta(alpha, alpha) per step, from the seed
    and the batch's first example index; each example paired with the batch reversed."""
    import tensorflow_probability as tfp

    beta = tfp.distributions.Beta(alpha, alpha)

    def mix(first_index, images, one_hot):
        key = tf.stack([tf.cast(seed + 7, tf.int64), first_index])
        lam = tf.cast(beta.sample(seed=tf.cast(key, tf.int32)), tf.float32)
        count = tf.shape(images)[0]
        features = {
            "images": images,
            "partners": tf.reverse(images, axis=[0]),
            "lam": tf.fill([count], lam),
        }
        return features, lam * one_hot + (1 - lam) * tf.reverse(one_hot, axis=[0])

    return mix


def model_inputs(features):
    """[0, 1] float images from a micro-batch's features, mixed when MixUp is on."""
    images = inputs.to_unit_range(features["images"])
    if "partners" not in features:
        return images
    lam = tf.reshape(features["lam"], [-1, 1, 1, 1])
    return lam * images + (1 - lam) * inputs.to_unit_range(features["partners"])


def fused_random_crop(example, resize: int, crop: int, key):
    """A random ``crop`` x ``crop`` window of the image at ``resize`` x ``resize``. For JPEG
    records only the window is decoded (preprocessing stores large images at exactly
    ``resize`` x ``resize``, so no resizing is left to do); others are decoded whole."""
    offsets = tf.random.stateless_uniform([2], seed=key, maxval=resize - crop + 1, dtype=tf.int32)

    def jpeg():
        shape = tf.image.extract_jpeg_shape(example["image/encoded"])
        height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
        scale_y, scale_x = height / resize, width / resize
        top = tf.cast(tf.cast(offsets[0], tf.float32) * scale_y, tf.int32)
        left = tf.cast(tf.cast(offsets[1], tf.float32) * scale_x, tf.int32)
        window_h = tf.maximum(1, tf.minimum(tf.cast(crop * scale_y, tf.int32), shape[0] - top))
        window_w = tf.maximum(1, tf.minimum(tf.cast(crop * scale_x, tf.int32), shape[1] - left))
        window = tf.stack([top, left, window_h, window_w])
        image = tf.image.decode_and_crop_jpeg(example["image/encoded"], window, 3)
        return inputs.resize(image, crop)

    def generic():
        image = inputs.resize(inputs.decode(example["image/encoded"]), resize)
        return tf.slice(image, [offsets[0], offsets[1], 0], [crop, crop, 3])

    image = tf.cond(tf.equal(example["image/format"], "jpeg"), jpeg, generic)
    image.set_shape([crop, crop, 3])
    return image
