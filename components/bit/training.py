"""Fine-tuning BiT with the BiT-HyperRule: input pipeline, MixUp, schedule, distribution,
gradient accumulation, checkpoints with exact resume, TensorBoard logs and SavedModel export.

Determinism: every random choice (shuffle, crop, flip, MixUp's lambda) derives from the seed and
the example's position in the stream, so a run restarted from a checkpoint sees exactly the
batches an uninterrupted run would have seen from that step on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from components.bit import hyperrule, models, storage
from components.bit import images as image_files
from components.bit.errors import BittuneError
from components.bit.models import tf
from components.bit.preprocess import load_manifest
from components.bit.validation import PRECISIONS, STRATEGIES

CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "saved_model"
LOG_DIR = "logs"
_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/format": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}


class TrainingError(BittuneError):
    """Training cannot start or go on, with what to change."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One fine-tuning run: data, HyperRule, model, output, and how to run it."""

    data_dir: str
    hyperrule_path: str
    model: str
    output_dir: str
    crop: bool = True  # random crop (off for counting tasks: resize to the crop size instead)
    flip: bool = True  # random horizontal flip (off for localisation tasks)
    mixup: bool = True  # MixUp when the HyperRule's alpha > 0
    strategy: str = "auto"
    precision: str = "auto"
    xla: bool | None = None  # None: on for GPU/TPU, off on CPU
    checkpoint_every: int = 100
    eval_every: int = 100
    log_every: int = 10
    keep_checkpoints: int = 3
    seed: int = 0
    cache: bool | None = None  # None: cache decoded images when they fit in cache_bytes
    cache_bytes: int = 4 * 2**30
    max_steps: int | None = None  # stop after this step (the schedule is unchanged)
    deterministic: bool = False
    top_k: int = 5


# ---------------------------------------------------------------------------------------------
# Learning rate


class BitSchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    """The HyperRule's learning rate as a Keras schedule: linear warm-up, then the constants
    that :func:`hyperrule.learning_rate` gives after each (strict) decay step."""

    def __init__(self, base_lr: float, warmup_steps: int, decay_steps: Sequence[int]):
        self.base_lr = float(base_lr)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = [int(s) for s in decay_steps]
        boundaries = [self.warmup_steps, *self.decay_steps]
        self._plateaus = [
            hyperrule.learning_rate(b + 1, self.base_lr, self.warmup_steps, self.decay_steps)
            for b in boundaries
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


# ---------------------------------------------------------------------------------------------
# Input pipeline


def shard_paths(manifest: dict[str, Any], split: str) -> list[str]:
    """Readable paths of a split's shards (the writer's path if visible here, else its URI)."""
    entry = manifest["splits"].get(split)
    if not entry:
        return []
    return [s["path"] if os.path.exists(s.get("path", "")) else s["uri"] for s in entry["shards"]]


def _records(paths: Sequence[str], parse: bool = True):
    """The records of ``paths`` in a fixed order, parsed (or still serialized)."""
    files = tf.data.Dataset.from_tensor_slices(list(paths))
    records = files.interleave(
        lambda path: tf.data.TFRecordDataset(path, buffer_size=8 * 2**20),
        cycle_length=max(1, min(len(paths), 8)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return records.map(_parse, tf.data.AUTOTUNE) if parse else records


def _parse(serialized):
    return tf.io.parse_single_example(serialized, _FEATURES)


def _decode(encoded):
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _resize(image, size: int):
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
        return _resize(_decode(example["image/encoded"]), crop), example["label"]

    records = _records(paths).map(prepare, tf.data.AUTOTUNE, deterministic=True)
    return records.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def train_dataset(
    paths: Sequence[str],
    rule: hyperrule.HyperRule,
    num_classes: int,
    config: TrainConfig,
    batch_size: int,
    num_examples: int,
    skip_examples: int = 0,
):
    """Endless augmented batches of (images, one-hot labels) of ``batch_size``: uint8 images
    (made [0, 1] floats on the accelerator), or [0, 1] floats when MixUp blends them.

    Shuffle, crop offsets, flips and MixUp's lambda are stateless functions of the seed and the
    example's index in the stream; ``skip_examples`` resumes the stream where a run stopped.
    """
    resize, crop, seed = rule.resize, rule.crop, config.seed
    cache = config.cache
    if cache is None:
        cache = num_examples * resize * resize * 3 <= config.cache_bytes
    # Uncached, records stay serialized until the one map that parses, decodes and augments.
    records = _records(paths, parse=False)
    if cache:
        # Decoded once, at the resize size, then served from memory every epoch.
        def decoded(raw):
            example = _parse(raw)
            return {
                "image": _resize(_decode(example["image/encoded"]), resize),
                "label": example["label"],
            }

        records = records.map(decoded, tf.data.AUTOTUNE, deterministic=True).cache()
    stream = (
        records.shuffle(min(num_examples, 4096), seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .enumerate()
        .skip(skip_examples)
    )

    def augment(index, example):
        key = tf.stack([tf.cast(seed, tf.int64), index])
        if not cache:
            example = _parse(example)
        if cache:
            image = example["image"]
            image = (
                tf.image.stateless_random_crop(image, (crop, crop, 3), seed=key)
                if config.crop
                else _resize(image, crop)
            )
        elif config.crop:
            image = _fused_random_crop(example, resize, crop, key)
        else:
            image = _resize(_decode(example["image/encoded"]), crop)
        if config.flip:
            image = tf.image.stateless_random_flip_left_right(image, seed=key + 1)
        return index, image, example["label"]

    batches = stream.map(augment, tf.data.AUTOTUNE, deterministic=True).batch(
        batch_size, drop_remainder=True
    )
    alpha = rule.mixup_alpha if config.mixup else 0.0
    if alpha > 0:
        import tensorflow_probability as tfp

        beta = tfp.distributions.Beta(alpha, alpha)

        def mixup(indices, images, labels):
            labels = tf.one_hot(labels, num_classes)
            key = tf.stack([tf.cast(seed + 7, tf.int64), indices[0]])
            lam = tf.cast(beta.sample(seed=tf.cast(key, tf.int32)), tf.float32)
            images = to_unit_range(images)
            images = lam * images + (1 - lam) * tf.reverse(images, axis=[0])
            labels = lam * labels + (1 - lam) * tf.reverse(labels, axis=[0])
            return images, labels

        batches = batches.map(mixup, tf.data.AUTOTUNE, deterministic=True)
    else:
        batches = batches.map(lambda i, x, y: (x, tf.one_hot(y, num_classes)))
    options = tf.data.Options()
    # Every worker reads the whole stream and keeps its share of each batch: deterministic
    # whatever the number of shard files.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return batches.prefetch(tf.data.AUTOTUNE).with_options(options)


def _fused_random_crop(example, resize: int, crop: int, key):
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
        return _resize(tf.image.decode_and_crop_jpeg(example["image/encoded"], window, 3), crop)

    def generic():
        image = _resize(_decode(example["image/encoded"]), resize)
        return tf.slice(image, [offsets[0], offsets[1], 0], [crop, crop, 3])

    image = tf.cond(tf.equal(example["image/format"], "jpeg"), jpeg, generic)
    image.set_shape([crop, crop, 3])
    return image


# ---------------------------------------------------------------------------------------------
# Devices, strategies, precision


def configure_devices() -> None:
    """Grow GPU memory as needed instead of taking all of it up front."""
    for gpu in tf.config.list_physical_devices("GPU"):
        with contextlib.suppress(RuntimeError):  # already initialised
            tf.config.experimental.set_memory_growth(gpu, True)


def make_strategy(name: str):
    """A tf.distribute strategy by name; ``auto`` picks TPU, several GPUs, or the default."""
    if name not in STRATEGIES:
        raise TrainingError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    if name in ("tpu", "auto"):
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
                tpu=os.environ.get("TPU_NAME", "")
            )
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            return tf.distribute.TPUStrategy(resolver)
        except (ValueError, RuntimeError, tf.errors.NotFoundError) as exc:
            if name == "tpu":
                raise TrainingError(f"no TPU found: {exc}") from None
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise TrainingError("--strategy multiworker needs TF_CONFIG describing the cluster")
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def strategy_name(strategy) -> str:
    """The --strategy name of a strategy object."""
    kinds = [
        (tf.distribute.TPUStrategy, "tpu"),
        (tf.distribute.MultiWorkerMirroredStrategy, "multiworker"),
        (tf.distribute.MirroredStrategy, "mirrored"),
    ]
    return next((name for kind, name in kinds if isinstance(strategy, kind)), "default")


def _accelerator(strategy) -> str:
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


def choose_precision(requested: str, accelerator: str) -> str:
    if requested not in PRECISIONS:
        raise TrainingError(f"unknown precision {requested!r}; valid: {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested
    if accelerator == "tpu":
        return "bfloat16"
    if accelerator == "gpu":
        details = tf.config.experimental.get_device_details(
            tf.config.list_physical_devices("GPU")[0]
        )
        major = (details.get("compute_capability") or (0, 0))[0]
        return "bfloat16" if major >= 8 else "float16"
    return "float32"


# ---------------------------------------------------------------------------------------------
# The run


@dataclasses.dataclass
class _Run:
    """Everything the loop needs, resolved and checked before the first step."""

    config: TrainConfig
    rule: hyperrule.HyperRule
    manifest: dict[str, Any]
    labels: list[str]
    work_dir: str  # local folder the run writes (the output, or a staging copy of gs:// output)


def prepare(config: TrainConfig) -> _Run:
    """Check every input before anything expensive: data, HyperRule, output, model source."""
    manifest = load_manifest(config.data_dir)
    try:
        rule_text = storage.read_text(config.hyperrule_path)
    except (FileNotFoundError, storage.StorageError):
        raise TrainingError(f"HyperRule file not found: {config.hyperrule_path}") from None
    try:
        rule = hyperrule.from_dict(json.loads(rule_text))
    except json.JSONDecodeError as exc:
        raise TrainingError(f"{config.hyperrule_path} is not valid JSON: {exc}") from None
    labels = list(manifest["labels"])
    if len(labels) < 2:
        raise TrainingError(f"the dataset has {len(labels)} class(es); need at least 2")
    if not manifest["splits"].get("train", {}).get("examples"):
        raise TrainingError(f"the dataset in {config.data_dir} has no training examples")
    for name in ("checkpoint_every", "eval_every", "log_every", "keep_checkpoints", "top_k"):
        if getattr(config, name) < 1:
            raise TrainingError(f"{name} must be at least 1, got {getattr(config, name)}")
    if config.max_steps is not None and config.max_steps < 1:
        raise TrainingError(f"max_steps must be at least 1, got {config.max_steps}")
    models.resolve(config.model)  # an unknown name fails here, before any download
    work_dir = _staging_dir(config.output_dir)
    previous = os.path.join(work_dir, "labels.json")
    if os.path.exists(previous):
        earlier = json.loads(storage.read_text(previous))["labels"]
        if earlier != labels:
            raise TrainingError(
                f"{config.output_dir} holds a run on {len(earlier)} other classes "
                f"({', '.join(earlier[:5])}…); the data has {len(labels)}: use a new --output"
            )
    return _Run(config, rule, manifest, labels, work_dir)


def _staging_dir(output_dir: str) -> str:
    """The local folder a run writes: the output itself, or a mirror of a gs:// output."""
    if not storage.is_gcs(output_dir):
        os.makedirs(output_dir, exist_ok=True)
        return output_dir
    local = os.path.join(tempfile.gettempdir(), "bittune-train", output_dir.replace("/", "_"))
    shutil.rmtree(local, ignore_errors=True)  # an exact mirror: nothing left from older runs
    os.makedirs(local, exist_ok=True)
    for entry in storage.list_files(output_dir) if storage.is_dir(output_dir) else []:
        target = os.path.join(local, entry.relpath)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        storage.write_bytes(target, storage.read_bytes(entry.uri))
    return local


def _sync_up(run: _Run, is_chief: bool = True) -> None:
    """Copy the staging folder to a gs:// output (the checkpoint index last)."""
    if not is_chief or not storage.is_gcs(run.config.output_dir):
        return
    files = []
    for folder, _, names in os.walk(run.work_dir):
        files += [os.path.join(folder, n) for n in names]
    files.sort(key=lambda p: os.path.basename(p) == "checkpoint")
    for path in files:
        rel = os.path.relpath(path, run.work_dir).replace(os.sep, "/")
        storage.upload_file(path, storage.join(run.config.output_dir, rel))


def train(config: TrainConfig) -> dict[str, Any]:
    """Fine-tune, checkpointing as it goes; resume from the latest checkpoint in the output."""
    configure_devices()
    strategy = make_strategy(config.strategy)  # first: multi-worker set-up must precede ops
    run = prepare(config)
    rule, work = run.rule, run.work_dir
    replicas = strategy.num_replicas_in_sync
    if rule.micro_batch_size % replicas:
        raise TrainingError(
            f"micro_batch_size {rule.micro_batch_size} must divide evenly over {replicas} replicas"
        )
    accelerator = _accelerator(strategy)
    precision = choose_precision(config.precision, accelerator)
    policy = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
    tf.keras.mixed_precision.set_global_policy(policy[precision])
    xla = config.xla if config.xla is not None else accelerator != "cpu"
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    tf.keras.utils.set_random_seed(config.seed)

    with strategy.scope():
        model = models.build_classifier(models.load_backbone(config.model), len(run.labels))
        optimizer = tf.keras.optimizers.SGD(
            BitSchedule(rule.base_lr, rule.warmup_steps, rule.decay_steps), momentum=rule.momentum
        )
        if precision == "float16":
            optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
        accumulators = (
            [
                tf.Variable(
                    tf.zeros_like(v),
                    trainable=False,
                    synchronization=tf.VariableSynchronization.ON_READ,
                    aggregation=tf.VariableAggregation.SUM,
                )
                for v in model.trainable_variables
            ]
            if rule.accumulation_steps > 1
            else []
        )
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    is_chief = _is_chief(strategy)
    checkpoint_dir = os.path.join(work, CHECKPOINT_DIR) if is_chief else tempfile.mkdtemp()
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, config.keep_checkpoints)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    start = int(optimizer.iterations.numpy())
    end = min(rule.total_steps, config.max_steps or rule.total_steps)
    storage.write_text(os.path.join(work, "labels.json"), json.dumps({"labels": run.labels}) + "\n")
    storage.write_text(os.path.join(work, "hyperrule.json"), rule.to_json())

    train_paths = shard_paths(run.manifest, "train")
    examples = run.manifest["splits"]["train"]["examples"]
    micro = rule.micro_batch_size
    dataset = train_dataset(
        train_paths,
        rule,
        len(run.labels),
        config,
        micro,
        examples,
        skip_examples=start * rule.accumulation_steps * micro,
    )
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    step_fn = _make_train_step(strategy, model, optimizer, accumulators, rule, xla)
    validation = shard_paths(run.manifest, "validation")
    writers = _summary_writers(work, is_chief)

    print(
        f"training {model.name} ({config.model}) on {examples:,} examples, {len(run.labels)} "
        f"classes: steps {start}->{end} of {rule.total_steps}, batch {rule.batch_size} = "
        f"{micro} x {rule.accumulation_steps} accumulation, {replicas} replica(s), "
        f"{accelerator}, {precision}, XLA {'on' if xla else 'off'}",
        file=sys.stderr,
        flush=True,
    )
    history: list[dict[str, float]] = []
    started, images_done = time.monotonic(), 0
    step = start
    try:
        while step < end:
            loss, accuracy = (float(v) for v in step_fn(iterator))
            step += 1
            images_done += rule.batch_size
            if step % config.log_every == 0 or step == end:
                elapsed = time.monotonic() - started
                rate = images_done / max(elapsed, 1e-9)
                lr = rule.learning_rate(step - 1)
                eta = (end - step) * rule.batch_size / max(rate, 1e-9)
                print(
                    f"step {step}/{end} loss {loss:.4f} acc {accuracy:.3f} lr {lr:.3g} "
                    f"{rate:.1f} img/s ETA {_duration(eta)}",
                    file=sys.stderr,
                    flush=True,
                )
                _scalars(
                    writers["train"],
                    step,
                    loss=loss,
                    accuracy=accuracy,
                    learning_rate=lr,
                    images_per_second=rate,
                )
            if validation and (step % config.eval_every == 0 or step == end):
                metrics = evaluate_model(model, validation, rule.crop, micro)
                _scalars(writers["validation"], step, **metrics)
                history.append({"step": step, **metrics})
                print(
                    f"validation at step {step}: loss {metrics['loss']:.4f} "
                    f"accuracy {metrics['accuracy']:.4f}",
                    file=sys.stderr,
                    flush=True,
                )
            if step % config.checkpoint_every == 0 or step == end:
                manager.save(checkpoint_number=step)
                _sync_up(run, is_chief)
    except tf.errors.ResourceExhaustedError:
        raise TrainingError(
            f"out of memory at micro-batch {micro}: try --micro-batch-size {max(1, micro // 2)} "
            f"(the batch of {rule.batch_size} is kept by gradient accumulation)"
        ) from None
    summary = {
        "model": config.model,
        "steps": step,
        "total_steps": rule.total_steps,
        "finished": step >= rule.total_steps,
        "precision": precision,
        "strategy": strategy_name(strategy),
        "replicas": replicas,
        "validation": history,
        "images_per_second": images_done / max(time.monotonic() - started, 1e-9),
    }
    if is_chief:
        if summary["finished"]:
            export(model, run.labels, rule.crop, os.path.join(work, EXPORT_DIR), config.top_k)
        summary_text = json.dumps(summary, indent=2) + "\n"
        storage.write_text(os.path.join(work, "training.json"), summary_text)
        _sync_up(run)
    return summary


def _is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


def _make_train_step(strategy, model, optimizer, accumulators, rule, xla: bool):
    """One optimizer step: ``accumulation_steps`` micro-batches, then one update, equal to one
    step on the whole batch (the loss is summed over examples and divided by the batch)."""
    variables = model.trainable_variables
    batch = float(rule.batch_size)
    scaled = isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer)

    @tf.function(jit_compile=xla)
    def gradients(images, labels):
        images = to_unit_range(images)
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            losses = tf.nn.softmax_cross_entropy_with_logits(labels, logits)
            loss = tf.reduce_sum(losses) / batch
            scaled_loss = optimizer.get_scaled_loss(loss) if scaled else loss
        grads = tape.gradient(scaled_loss, variables)
        if scaled:
            grads = optimizer.get_unscaled_gradients(grads)
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, -1), tf.argmax(labels, -1)), tf.float32)
        )
        return loss, correct, grads

    def single(images, labels):
        loss, correct, grads = gradients(images, labels)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return loss, correct

    def accumulate(images, labels):
        loss, correct, grads = gradients(images, labels)
        for accumulator, grad in zip(accumulators, grads, strict=True):
            accumulator.assign_add(grad)
        return loss, correct

    def apply():
        sums = [a.read_value() for a in accumulators]
        optimizer.apply_gradients(zip(sums, variables, strict=True))
        for accumulator in accumulators:
            accumulator.assign(tf.zeros_like(accumulator))

    reduce = lambda value: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)  # noqa: E731

    @tf.function
    def step(iterator):
        if not accumulators:
            loss, correct = strategy.run(single, args=next(iterator))
            return reduce(loss), reduce(correct) / batch
        total_loss, total_correct = tf.constant(0.0), tf.constant(0.0)
        for _ in tf.range(rule.accumulation_steps):
            loss, correct = strategy.run(accumulate, args=next(iterator))
            total_loss += reduce(loss)
            total_correct += reduce(correct)
        strategy.run(apply)
        return total_loss, total_correct / batch

    return step


def evaluate_model(model, paths: Sequence[str], crop: int, batch_size: int) -> dict[str, float]:
    """Loss and top-1 accuracy over every example of ``paths``."""
    total = loss_sum = correct = 0.0
    for images, labels in eval_dataset(paths, crop, batch_size):
        logits = model(to_unit_range(images), training=False)
        loss_sum += float(
            tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        )
        correct += float(
            tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1), labels), tf.float32))
        )
        total += int(labels.shape[0])
    return {"loss": loss_sum / max(total, 1), "accuracy": correct / max(total, 1)}


def _summary_writers(work: str, is_chief: bool):
    if not is_chief:
        return {
            "train": tf.summary.create_noop_writer(),
            "validation": tf.summary.create_noop_writer(),
        }
    return {
        name: tf.summary.create_file_writer(os.path.join(work, LOG_DIR, name))
        for name in ("train", "validation")
    }


def _scalars(writer, step: int, **values: float) -> None:
    with writer.as_default():
        for name, value in values.items():
            tf.summary.scalar(name, value, step=step)
    writer.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else (f"{seconds // 60}m{seconds % 60:02d}s")
    )


# ---------------------------------------------------------------------------------------------
# Export and prediction


class _Serving(tf.Module):
    def __init__(self, model, labels: Sequence[str], crop: int, top_k: int):
        super().__init__()
        self.model = model
        self.labels = tf.constant(list(labels))
        self.crop = crop
        self.top_k = min(top_k, len(labels))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(self, image_bytes):
        def one(encoded):
            image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
            image.set_shape([None, None, 3])
            return to_unit_range(_resize(image, self.crop))

        images = tf.map_fn(
            one,
            image_bytes,
            fn_output_signature=tf.TensorSpec([self.crop, self.crop, 3], tf.float32),
        )
        probabilities = tf.nn.softmax(tf.cast(self.model(images, training=False), tf.float32))
        top = tf.math.top_k(probabilities, k=self.top_k)
        return {
            "probabilities": probabilities,
            "top_k_scores": top.values,
            "top_k_classes": tf.gather(self.labels, top.indices),
        }


def export(model, labels: Sequence[str], crop: int, directory: str, top_k: int = 5) -> str:
    """A SavedModel whose serving signature takes encoded JPEG/PNG bytes (``image_bytes``) and
    returns ``probabilities``, ``top_k_classes`` and ``top_k_scores``; labels embedded."""
    module = _Serving(model, labels, crop, top_k)
    tmp = directory.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
    return directory


def predict(model_dir: str, image_uris: Sequence[str]) -> list[dict[str, Any]]:
    """Top-k classes of each image file, from an exported model (a run's output or its
    saved_model folder)."""
    path = model_dir
    if not storage.exists(storage.join(path, "saved_model.pb")):
        path = storage.join(model_dir, EXPORT_DIR)
    if not storage.exists(storage.join(path, "saved_model.pb")):
        raise TrainingError(f"no exported model in {model_dir} (did training finish?)")
    serve = tf.saved_model.load(path).signatures["serving_default"]
    results = []
    for image in image_uris:
        try:
            data = storage.read_bytes(image)
        except (OSError, storage.StorageError) as exc:
            raise TrainingError(f"cannot read {image}: {exc}") from None
        checked = image_files.inspect(data)  # header only: bombs and broken files never decode
        if isinstance(checked, image_files.Problem):
            raise TrainingError(f"{image}: {checked.reason}")
        try:
            out = serve(image_bytes=tf.constant([data]))
        except tf.errors.InvalidArgumentError:
            raise TrainingError(f"{image} is not a JPEG, PNG, GIF or BMP image") from None
        classes = [c.decode("utf-8") for c in out["top_k_classes"].numpy()[0]]
        scores = [float(s) for s in out["top_k_scores"].numpy()[0]]
        results.append({"image": image, "top_k": list(zip(classes, scores, strict=True))})
    return results
