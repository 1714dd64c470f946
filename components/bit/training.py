"""Fine-tuning BiT with the BiT-HyperRule: input pipeline, MixUp, schedule, distribution,
gradient accumulation, checkpoints with exact resume, TensorBoard logs and the SavedModel export.

A run reads a preprocessed dataset (:class:`components.bit.dataset.Manifest`, which also names
the HyperRule the data was prepared for) and writes three folders, each local or ``gs://``:
the model (``saved_model``, ``labels.json``, ``hyperrule.json``, ``training.json``: what serving
needs), the checkpoints, and the TensorBoard logs (by default ``checkpoints`` and ``logs`` inside
the model folder).

Determinism: every random choice (shuffle, crop, flip, MixUp's lambda) derives from the seed and
the example's position in the stream, so a run restarted from a checkpoint sees exactly the
batches an uninterrupted run would have seen from that step on.

MixUp works on the whole optimizer batch: one lambda per step, each example paired with its
mirror in the batch of ``batch_size`` examples, before the batch is split into micro-batches;
gradient accumulation therefore gives exactly the update of one large batch, MixUp included.

Momentum: tf-keras SGD's form (the learning rate inside the velocity: ``v = m v - lr g``,
``w += v``), as BiT's TF2 reference code trains; BiT's PyTorch and JAX code apply the learning
rate outside the velocity, which differs on warm-up steps and right after each decay.
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

from components.bit import dataset as ds
from components.bit import hyperrule, inputs, models, params, serving, storage
from components.bit.errors import BittuneError
from components.bit.inputs import tf

CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
SUMMARY_FILE = "training.json"
LABELS_FILE = "labels.json"
ACCELERATORS = ("", "cpu", "gpu", "tpu")


class TrainingError(BittuneError):
    """Training cannot start or go on, with what to change."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One fine-tuning run: data, model, outputs, and how to run it. Checked when made."""

    dataset_dir: str  # a preprocessed dataset: manifest.json (and, locally, the shards)
    model: str  # the pretrained source (BiT-M-R50x1, bit-m-r50x1, an .npz, a SavedModel …)
    output_dir: str  # the trained model: saved_model, labels.json, hyperrule.json, training.json
    shard_dirs: tuple[str, ...] = ()  # where the shards are (default: the dataset folder)
    checkpoint_dir: str | None = None  # default: OUTPUT/checkpoints
    log_dir: str | None = None  # default: OUTPUT/logs
    hyperrule: hyperrule.HyperRule | None = None  # default: the one the dataset was made for
    random_crop: bool = True  # off for counting tasks: resize to the crop size instead
    random_flip: bool = True  # off for localisation tasks
    mixup: bool = True  # MixUp when the HyperRule's alpha > 0
    strategy: str = "auto"
    precision: str = "auto"
    accelerator: str = ""  # what the step was given: "" or cpu (any), gpu, tpu; none found fails
    cpus: int | None = None  # CPUs the step was given (sizes TensorFlow's thread pools)
    replicas: int = 1  # machines training together (multi-worker; Vertex AI's CustomJob)
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

    def __post_init__(self) -> None:
        params.require(
            labels={"training_strategy": "strategy", "training_replicas": "replicas"},
            training_strategy=self.strategy,
            precision=self.precision,
            checkpoint_every=self.checkpoint_every,
            seed=self.seed,
            training_replicas=self.replicas,
        )
        for name in ("eval_every", "log_every", "keep_checkpoints", "top_k"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise TrainingError(f"max_steps must be at least 1, got {self.max_steps}")
        if self.accelerator not in ACCELERATORS:
            raise TrainingError(
                f"accelerator must be '', cpu, gpu or tpu, got {self.accelerator!r}"
            )

    @property
    def checkpoints(self) -> str:
        return self.checkpoint_dir or storage.join(self.output_dir, CHECKPOINT_DIR)

    @property
    def logs(self) -> str:
        return self.log_dir or storage.join(self.output_dir, LOG_DIR)


def durable_folder(name: str, artifact_uri: str, artifact_path: str, root: str = "",
                   run_id: str = "") -> str:  # fmt: skip
    """Where a pipeline task keeps a folder a retry of the task must find (checkpoints, logs).

    A retried task gets the same output artifact URIs, but its local output folders start
    empty (the launcher uploads them only after success). So: ``root/run_id/name`` when a
    ``root`` is given (gs://, or a volume every attempt mounts); else the artifact's own gs://
    URI, written as training goes; else (an S3-compatible store, which only the launcher can
    reach) the artifact's local path, which a retry does not find."""
    if root:
        return storage.join(root, run_id or "run", name)
    if storage.is_gcs(artifact_uri):
        return artifact_uri
    return artifact_path


# ---------------------------------------------------------------------------------------------
# Learning rate


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
        changed = TrainingError(
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


# ---------------------------------------------------------------------------------------------
# Input pipeline


def train_dataset(
    paths: Sequence[str],
    rule: hyperrule.HyperRule,
    num_classes: int,
    config: TrainConfig,
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


def _augmented(paths, rule, config: TrainConfig, num_examples: int, cache: bool, skip: int):
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
                image = _fused_random_crop(example, resize, crop, key)
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
        image = tf.image.decode_and_crop_jpeg(example["image/encoded"], window, 3)
        return inputs.resize(image, crop)

    def generic():
        image = inputs.resize(inputs.decode(example["image/encoded"]), resize)
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


def visible_devices() -> dict[str, int]:
    """How many GPUs and TPU chips TensorFlow sees (a seam for tests without accelerators)."""
    return {
        "GPU": len(tf.config.list_physical_devices("GPU")),
        "TPU": len(tf.config.list_physical_devices("TPU")),
    }


def _tpu_expected(name: str, accelerator: str) -> bool:
    hints = ("TPU_NAME", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID")
    return (
        name == "tpu"
        or accelerator == "tpu"
        or (name == "auto" and any(os.environ.get(h) for h in hints))
    )


def _tpu_strategy():
    """A TPUStrategy: on a Cloud TPU VM (and GKE TPU nodes) the chips are local ("local");
    ``TPU_NAME`` names a remote TPU node instead."""
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=os.environ.get("TPU_NAME") or "local"
    )
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def vertex_tf_config() -> None:
    """Set ``TF_CONFIG`` from Vertex AI's ``CLUSTER_SPEC`` when only the latter is given."""
    spec = os.environ.get("CLUSTER_SPEC")
    if not spec or os.environ.get("TF_CONFIG"):
        return
    os.environ.pop("TF_CONFIG", None)  # an empty one
    cluster_spec = json.loads(spec)
    task = cluster_spec["task"]
    pools = {
        pool: addresses
        for pool, addresses in cluster_spec["cluster"].items()
        if pool.startswith("workerpool")
    }
    # Vertex's pools: workerpool0 is the chief (one replica), workerpool1 the other workers.
    cluster = {"chief": pools.get("workerpool0", [])}
    if pools.get("workerpool1"):
        cluster["worker"] = pools["workerpool1"]
    kind = "chief" if task["type"] == "workerpool0" else "worker"
    tf_config = {"cluster": cluster, "task": {"type": kind, "index": task["index"]}}
    os.environ["TF_CONFIG"] = json.dumps(tf_config)


def make_strategy(name: str, accelerator: str = "", replicas: int = 1):
    """A tf.distribute strategy by name. ``auto`` picks a TPU (when the machine has one),
    several GPUs, or the default. When ``accelerator`` (gpu or tpu) was asked for, a machine
    without one fails here, in seconds, instead of training on the CPU. Several ``replicas``
    (machines) train with MultiWorkerMirroredStrategy from the cluster the platform describes."""
    if replicas > 1:
        vertex_tf_config()
        if not os.environ.get("TF_CONFIG"):
            raise TrainingError(
                f"training_replicas={replicas} needs a multi-worker cluster (Vertex AI "
                "Pipelines runs one as a CustomJob: bittune compile --target vertex); this "
                "task runs on one machine"
            )
        name = "multiworker"
    if _tpu_expected(name, accelerator):
        try:
            return _tpu_strategy()
        except (ValueError, RuntimeError, tf.errors.NotFoundError) as exc:
            if name == "tpu" or accelerator == "tpu":
                raise TrainingError(f"asked for a TPU, but none was found ({exc})") from None
    devices = visible_devices()
    if accelerator == "gpu" and not devices["GPU"]:
        raise TrainingError(
            "asked for a GPU, but TensorFlow finds none (only the CPU): check that the node "
            "has GPUs and their driver is visible to the container (nvidia-smi), and that the "
            "image is bittune-gpu"
        )
    if name == "multiworker":
        vertex_tf_config()
        if not os.environ.get("TF_CONFIG"):
            raise TrainingError(
                "--strategy multiworker needs TF_CONFIG (or Vertex AI's CLUSTER_SPEC) "
                "describing the cluster"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        if not devices["GPU"]:
            raise TrainingError("--strategy mirrored needs GPUs, but TensorFlow finds none")
        return tf.distribute.MirroredStrategy()
    if name == "auto" and devices["GPU"] > 1:
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
    return "gpu" if visible_devices()["GPU"] else "cpu"


def choose_precision(requested: str, accelerator: str) -> str:
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


_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


# ---------------------------------------------------------------------------------------------
# Folders: local, or gs:// through a local mirror


class _Folder:
    """A run folder as a local path: the folder itself, or, for gs://, a local mirror that is
    filled from gs:// at the start (so a new machine resumes) and pushed back (``sync``)."""

    def __init__(self, target: str) -> None:
        self.target = target
        if not storage.is_gcs(target):
            os.makedirs(target, exist_ok=True)
            self.local = target
            return
        self.local = os.path.join(tempfile.gettempdir(), "bittune-train", target.replace("/", "_"))
        shutil.rmtree(self.local, ignore_errors=True)  # an exact mirror: nothing from older runs
        os.makedirs(self.local, exist_ok=True)
        for entry in storage.list_files(target) if storage.is_dir(target) else []:
            path = os.path.join(self.local, entry.relpath)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            storage.write_bytes(path, storage.read_bytes(entry.uri))

    def sync(self) -> None:
        """Upload the mirror to gs:// (a checkpoint's index file last)."""
        if self.local == self.target:
            return
        files = [os.path.join(d, n) for d, _, names in os.walk(self.local) for n in names]
        files.sort(key=lambda p: os.path.basename(p) == "checkpoint")
        for path in files:
            rel = os.path.relpath(path, self.local).replace(os.sep, "/")
            storage.upload_file(path, storage.join(self.target, rel))


# ---------------------------------------------------------------------------------------------
# The run: set-up, model and optimizer, loop, finish


@dataclasses.dataclass
class _Run:
    """Everything the loop needs, resolved and checked before the first step."""

    config: TrainConfig
    rule: hyperrule.HyperRule
    manifest: ds.Manifest
    shards: dict[str, list[str]]  # split -> shard paths
    output: _Folder
    checkpoints: _Folder | None = None
    logs: _Folder | None = None

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.labels)


def prepare(config: TrainConfig) -> _Run:
    """Check every input before anything expensive: data, HyperRule, output, model source."""
    manifest = ds.read_manifest(config.dataset_dir)
    rule = config.hyperrule or manifest.rule
    if manifest.num_classes < 2:
        raise TrainingError(f"the dataset has {manifest.num_classes} class(es); need at least 2")
    if not manifest.examples("train"):
        raise TrainingError(f"the dataset in {config.dataset_dir} has no training examples")
    models.resolve(config.model)  # an unknown name fails here, before any download
    roots = list(config.shard_dirs) or [config.dataset_dir]
    shards = {split: manifest.shard_paths(split, roots) for split in ("train", "validation")}
    output = _Folder(config.output_dir)
    previous = os.path.join(output.local, LABELS_FILE)
    if os.path.exists(previous):
        earlier = json.loads(storage.read_text(previous))["labels"]
        if earlier != list(manifest.labels):
            raise TrainingError(
                f"{config.output_dir} holds a run on {len(earlier)} other classes "
                f"({', '.join(earlier[:5])}…); the data has {manifest.num_classes}: use a new "
                "output folder"
            )
    return _Run(config, rule, manifest, shards, output)


def finished_summary(run: _Run) -> dict[str, Any] | None:
    """The summary of an earlier run in the same output that already finished this schedule."""
    path = os.path.join(run.output.local, SUMMARY_FILE)
    if not os.path.exists(path):
        return None
    summary = json.loads(storage.read_text(path))
    same = (
        summary.get("hyperrule") == run.rule.to_dict() and summary.get("model") == run.config.model
    )
    done = summary.get("finished") and os.path.isdir(
        os.path.join(run.output.local, serving.EXPORT_DIR)
    )
    return summary if same and done else None


@dataclasses.dataclass
class _Setup:
    strategy: Any
    accelerator: str
    precision: str
    xla: bool
    replicas: int


def _set_up(config: TrainConfig, rule: hyperrule.HyperRule) -> _Setup:
    """Devices, threads, strategy, precision policy, XLA, determinism and seeds."""
    configure_devices()
    if config.cpus:  # the step's share of the node, not every core the node has
        tf.config.threading.set_intra_op_parallelism_threads(config.cpus)
        tf.config.threading.set_inter_op_parallelism_threads(min(config.cpus, 4))
    strategy = make_strategy(config.strategy, config.accelerator, config.replicas)
    replicas = strategy.num_replicas_in_sync
    if rule.micro_batch_size % replicas:
        raise TrainingError(
            f"micro_batch_size {rule.micro_batch_size} must divide evenly over {replicas} replicas"
        )
    accelerator = _accelerator(strategy)
    precision = choose_precision(config.precision, accelerator)
    tf.keras.mixed_precision.set_global_policy(_POLICIES[precision])
    xla = config.xla if config.xla is not None else accelerator != "cpu"
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    tf.keras.utils.set_random_seed(config.seed)
    return _Setup(strategy, accelerator, precision, xla, replicas)


@dataclasses.dataclass
class _Trainable:
    model: Any
    optimizer: Any
    accumulators: list[Any]
    checkpoint: Any
    manager: Any


def _build(run: _Run, setup: _Setup) -> _Trainable:
    """Model, optimizer, gradient accumulators; restored from the latest checkpoint if any."""
    rule = run.rule
    with setup.strategy.scope():
        model = models.build_classifier(models.load_backbone(run.config.model), len(run.labels))
        optimizer = MomentumSGD(
            BitSchedule(rule.base_lr, rule.warmup_steps, rule.decay_steps), momentum=rule.momentum
        )
        if setup.precision == "float16":
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
    chief = _is_chief(setup.strategy)
    if chief:
        run.checkpoints = _Folder(run.config.checkpoints)
        folder = run.checkpoints.local
    else:
        folder = tempfile.mkdtemp()
    manager = tf.train.CheckpointManager(checkpoint, folder, run.config.keep_checkpoints)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    return _Trainable(model, optimizer, accumulators, checkpoint, manager)


def train(config: TrainConfig) -> dict[str, Any]:
    """Fine-tune, checkpointing as it goes; resume from the latest checkpoint. A run whose
    output already holds this schedule's finished model returns that run's summary."""
    run = prepare(config)
    done = finished_summary(run)
    if done is not None:
        return {**done, "already_finished": True}
    setup = _set_up(config, run.rule)
    trainable = _build(run, setup)
    history, step, rate = _loop(run, setup, trainable)
    return _finish(run, setup, trainable, history, step, rate)


def _loop(run: _Run, setup: _Setup, t: _Trainable) -> tuple[list[dict[str, float]], int, float]:
    """Train from the restored step to the end (or ``max_steps``), logging, validating and
    checkpointing; returns (validation history, last step, images per second)."""
    config, rule = run.config, run.rule
    start = int(t.optimizer.iterations.numpy())
    end = min(rule.total_steps, config.max_steps or rule.total_steps)
    examples = run.manifest.examples("train")
    dataset = train_dataset(
        run.shards["train"],
        rule,
        len(run.labels),
        config,
        examples,
        skip_examples=start * rule.batch_size,
    )
    iterator = iter(setup.strategy.experimental_distribute_dataset(dataset))
    step_fn = _make_train_step(
        setup.strategy, t.model, t.optimizer, t.accumulators, rule, setup.xla
    )
    chief = _is_chief(setup.strategy)
    if chief:
        run.logs = _Folder(config.logs)
    writers = _summary_writers(run.logs.local if chief else None)
    _say(
        f"training {t.model.name} ({config.model}) on {examples:,} examples, {len(run.labels)} "
        f"classes: steps {start}->{end} of {rule.total_steps}, batch {rule.batch_size} = "
        f"{rule.micro_batch_size} x {rule.accumulation_steps} accumulation, {setup.replicas} "
        f"replica(s), {setup.accelerator}, {setup.precision}, XLA {'on' if setup.xla else 'off'}"
    )
    history: list[dict[str, float]] = []
    started, images_done, step = time.monotonic(), 0, start
    try:
        while step < end:
            loss, accuracy = (float(v) for v in step_fn(iterator))
            step += 1
            images_done += rule.batch_size
            rate = images_done / max(time.monotonic() - started, 1e-9)
            if step % config.log_every == 0 or step == end:
                lr = rule.learning_rate(step - 1)
                eta = _duration((end - step) * rule.batch_size / max(rate, 1e-9))
                _say(f"step {step}/{end} loss {loss:.4f} acc {accuracy:.3f} lr {lr:.3g} "
                     f"{rate:.1f} img/s ETA {eta}")  # fmt: skip
                _scalars(writers["train"], step, loss=loss, accuracy=accuracy, learning_rate=lr,
                         images_per_second=rate)  # fmt: skip
            if run.shards["validation"] and (step % config.eval_every == 0 or step == end):
                metrics = validation_metrics(
                    t.model, run.shards["validation"], rule.crop, rule.micro_batch_size
                )
                _scalars(writers["validation"], step, **metrics)
                history.append({"step": step, **metrics})
                _say(f"validation at step {step}: loss {metrics['loss']:.4f} "
                     f"accuracy {metrics['accuracy']:.4f}")  # fmt: skip
            if step % config.checkpoint_every == 0 or step == end:
                t.manager.save(checkpoint_number=step)
                if chief:
                    run.checkpoints.sync()
                    run.logs.sync()
    except tf.errors.ResourceExhaustedError:
        micro = rule.micro_batch_size
        raise TrainingError(
            f"out of memory at micro-batch {micro}: try --micro-batch-size {max(1, micro // 2)} "
            f"(the batch of {rule.batch_size} is kept by gradient accumulation)"
        ) from None
    return history, step, images_done / max(time.monotonic() - started, 1e-9)


def _finish(run: _Run, setup: _Setup, t: _Trainable, history, step: int, rate: float):
    """Export the model when the schedule is done; write the summary and the labels."""
    summary = {
        "model": run.config.model,
        "steps": step,
        "total_steps": run.rule.total_steps,
        "finished": step >= run.rule.total_steps,
        "precision": setup.precision,
        "strategy": strategy_name(setup.strategy),
        "replicas": setup.replicas,
        "validation": history,
        "images_per_second": rate,
        "hyperrule": run.rule.to_dict(),
    }
    if not _is_chief(setup.strategy):
        return summary
    out = run.output.local
    if summary["finished"]:
        serving.export(
            t.model, run.labels, run.rule.crop, os.path.join(out, serving.EXPORT_DIR),
            run.config.top_k,
        )  # fmt: skip
    storage.write_text(os.path.join(out, LABELS_FILE), json.dumps({"labels": run.labels}) + "\n")
    storage.write_text(os.path.join(out, ds.HYPERRULE_FILE), run.rule.to_json())
    storage.write_text(os.path.join(out, SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")
    run.output.sync()
    return summary


def is_chief_replica() -> bool:
    """Whether this process writes a multi-machine job's results: it runs alone, or TF_CONFIG
    (Vertex AI's CLUSTER_SPEC turned into one) names it the chief, or worker 0 of a cluster
    without a chief."""
    vertex_tf_config()
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task") or {}
    kind = task.get("type")
    if not kind:
        return True
    alone = "chief" not in config.get("cluster", {})
    return kind == "chief" or (kind == "worker" and int(task.get("index", 0)) == 0 and alone)


def end_worker_replica() -> None:
    """End a non-chief replica with success before KFP's executor writes the task's outputs:
    every replica of a CustomJob runs the same executor input, so only the chief may write
    ``executor_output.json`` and the model's metadata (else the last writer wins)."""
    _say("worker replica done: the chief writes the task's outputs")
    sys.stdout.flush()
    os._exit(0)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


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
    def gradients(features, labels):
        images = model_inputs(features)
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

    def single(features, labels):
        loss, correct, grads = gradients(features, labels)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return loss, correct

    def accumulate(features, labels):
        loss, correct, grads = gradients(features, labels)
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


def validation_metrics(model, paths: Sequence[str], crop: int, batch_size: int) -> dict[str, float]:
    """Loss and top-1 accuracy over every example of ``paths``."""
    total = loss_sum = correct = 0.0
    for images, labels in inputs.eval_dataset(paths, crop, batch_size):
        logits = model(inputs.to_unit_range(images), training=False)
        loss_sum += float(
            tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        )
        correct += float(
            tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1), labels), tf.float32))
        )
        total += int(labels.shape[0])
    return {"loss": loss_sum / max(total, 1), "accuracy": correct / max(total, 1)}


def _summary_writers(folder: str | None):
    if folder is None:
        return {name: tf.summary.create_noop_writer() for name in ("train", "validation")}
    return {
        name: tf.summary.create_file_writer(os.path.join(folder, name))
        for name in ("train", "validation")
    }


def _scalars(writer, step: int, **values: float) -> None:
    with writer.as_default():
        for name, value in values.items():
            tf.summary.scalar(name, value, step=step)
    writer.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
