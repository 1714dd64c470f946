"""Fine-tuning BiT with the BiT-HyperRule: the run's configuration, the loop with gradient
accumulation, checkpoints with exact resume, TensorBoard logs and the SavedModel export. The
input pipeline is :mod:`components.bit.augment`, devices and strategies
:mod:`components.bit.devices`, the schedule and optimizer :mod:`components.bit.optimizer`.

A run reads a preprocessed dataset (:class:`components.bit.dataset.Manifest`, which also names
the HyperRule the data was prepared for) and writes three folders, each local or ``gs://``:
the model (``saved_model``, ``labels.json``, ``hyperrule.json``, ``training.json``: what serving
needs), the checkpoints, and the TensorBoard logs (by default ``checkpoints`` and ``logs`` inside
the model folder).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

from components.bit import (
    augment,
    devices,
    hyperrule,
    inputs,
    models,
    params,
    serving,
    storage,
    tf_env,
)
from components.bit import dataset as ds
from components.bit.errors import BittuneError
from components.bit.inputs import tf
from components.bit.optimizer import BitSchedule, MomentumSGD

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
    training_strategy: str = "auto"
    precision: str = "auto"
    accelerator: str = ""  # what the step was given: "" or cpu (any), gpu, tpu; none found fails
    training_cpu: str | None = None  # CPUs the step was given, e.g. "6" (sizes thread pools)
    training_replicas: int = 1  # machines training together (multi-worker; a CustomJob)
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
        params.require_fields(self, skip=("accelerator",))
        for name in ("eval_every", "log_every", "keep_checkpoints", "top_k"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise TrainingError(f"max_steps must be at least 1, got {self.max_steps}")
        if self.accelerator not in ACCELERATORS:
            raise TrainingError(
                f"accelerator must be '', cpu, gpu or tpu, got {self.accelerator!r}"
            )

    @classmethod
    def from_params(cls, values: Mapping[str, Any], **fields: Any) -> TrainConfig:
        """The config from table values (component inputs, command-line options) and paths."""
        return params.config_from(cls, values, **fields)

    @property
    def cpus(self) -> int | None:
        return params.cpu_count(self.training_cpu) if self.training_cpu else None

    @property
    def augmentation(self) -> augment.Augmentation:
        return augment.Augmentation(
            self.random_crop, self.random_flip, self.mixup, self.seed, self.cache, self.cache_bytes
        )

    @property
    def checkpoints(self) -> str:
        return self.checkpoint_dir or storage.join(self.output_dir, CHECKPOINT_DIR)

    @property
    def logs(self) -> str:
        return self.log_dir or storage.join(self.output_dir, LOG_DIR)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a run did (also its ``training.json``)."""

    model: str
    steps: int
    total_steps: int
    finished: bool
    precision: str
    strategy: str  # the tf.distribute strategy it ran with (default, mirrored, …)
    replicas: int
    validation: list[dict[str, float]]  # {"step", "loss", "accuracy"} per validation
    images_per_second: float
    hyperrule: dict[str, Any]
    already_finished: bool = False  # the output held this schedule's finished model

    @property
    def validation_accuracy(self) -> float:
        """The last validation accuracy (NaN without a validation split)."""
        return self.validation[-1]["accuracy"] if self.validation else float("nan")

    def to_dict(self) -> dict[str, Any]:
        summary = dataclasses.asdict(self)
        del summary["already_finished"]
        return summary

    @classmethod
    def from_dict(cls, summary: Mapping[str, Any]) -> TrainResult:
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in summary.items() if k in known})


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
# Folders: local, or gs:// through a local mirror


class _Folder:
    """A run folder as a local path: the folder itself, or, for gs://, a local mirror that is
    filled from gs:// at the start (so a new machine resumes) and pushed back (``sync``)."""

    def __init__(self, target: str, apart: Sequence[str] = ()) -> None:
        """``apart``: folders inside ``target`` mirrored on their own (the checkpoints and logs
        in the output folder), left out here: else this mirror would hold their state as of the
        start and ``sync`` would upload it over theirs (a resumed run's latest checkpoint
        named the one it resumed from)."""
        self.target = target
        self._sent: dict[str, tuple[int, int, int]] = {}  # path -> _stamp as on gs://
        if not storage.is_gcs(target):
            os.makedirs(target, exist_ok=True)
            self.local = target
            return
        # Keyed by this process's part in a multi-machine job too: two replicas on one machine
        # (a test on loopback) must not clear each other's mirror.
        self.local = os.path.join(tempfile.gettempdir(), "bittune-train", devices.replica_role(),
                                  target.replace("/", "_"))  # fmt: skip
        shutil.rmtree(self.local, ignore_errors=True)  # an exact mirror: nothing from older runs
        os.makedirs(self.local, exist_ok=True)
        inside = [f"{f.rstrip('/')}/" for f in apart if f.startswith(f"{target.rstrip('/')}/")]
        for entry in storage.list_files(target) if storage.is_dir(target) else []:
            if any(entry.uri.startswith(folder) for folder in inside):
                continue
            path = os.path.join(self.local, entry.relpath)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            storage.write_bytes(path, storage.read_bytes(entry.uri))
            self._sent[path] = _stamp(path)

    def sync(self) -> None:
        """Upload what is new or changed in the mirror to gs:// (a checkpoint's index file
        last); a checkpoint already there is not sent again at every save."""
        if self.local == self.target:
            return
        files = [os.path.join(d, n) for d, _, names in os.walk(self.local) for n in names]
        files.sort(key=lambda p: os.path.basename(p) == "checkpoint")
        for path in files:
            stamp = _stamp(path)
            if self._sent.get(path) == stamp:
                continue
            rel = os.path.relpath(path, self.local).replace(os.sep, "/")
            storage.upload_file(path, storage.join(self.target, rel))
            self._sent[path] = stamp


def _stamp(path: str) -> tuple[int, int, int]:
    """What changes when a file is written: its size, time, and (replaced whole) its inode."""
    status = os.stat(path)
    return status.st_size, status.st_mtime_ns, status.st_ino


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
    output = _Folder(config.output_dir, apart=(config.checkpoints, config.logs))
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


def finished_summary(run: _Run) -> TrainResult | None:
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
    return TrainResult.from_dict(summary) if same and done else None


@dataclasses.dataclass
class _Setup:
    strategy: Any
    accelerator: str
    precision: str
    xla: bool
    replicas: int


def _set_up(config: TrainConfig, rule: hyperrule.HyperRule) -> _Setup:
    """Devices, threads, strategy, precision policy, XLA, determinism and seeds."""
    devices.configure_devices()
    if config.cpus:  # the step's share of the node, never more than the cores it can use
        cpus = min(config.cpus, tf_env.usable_cpus())
        tf.config.threading.set_intra_op_parallelism_threads(cpus)
        tf.config.threading.set_inter_op_parallelism_threads(min(cpus, 4))
    strategy = devices.make_strategy(
        config.training_strategy, config.accelerator, config.training_replicas
    )
    replicas = strategy.num_replicas_in_sync
    if rule.micro_batch_size % replicas:
        raise TrainingError(
            f"micro_batch_size {rule.micro_batch_size} must divide evenly over {replicas} replicas"
        )
    accelerator = devices.accelerator_of(strategy)
    precision = devices.choose_precision(config.precision, accelerator)
    tf.keras.mixed_precision.set_global_policy(devices.POLICIES[precision])
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
    scratch: tuple[str, ...] = ()  # a worker's own folders, removed when the run ends


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
    manager, latest, scratch = _checkpoints(run, setup.strategy, checkpoint)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
    _same_start_everywhere(setup.strategy, int(optimizer.iterations.numpy()), run.config)
    return _Trainable(model, optimizer, accumulators, checkpoint, manager, scratch)


def _checkpoints(run: _Run, strategy, checkpoint) -> tuple[Any, str | None, tuple[str, ...]]:
    """Where this process writes checkpoints and which one it restores: (manager, latest
    checkpoint or None, scratch folders).

    The chief writes the run's checkpoints folder. With several machines every worker must
    save too (reading the ON_READ accumulators is a collective), but into a scratch folder
    of its own, and it restores from the *chief's* folder, which the job's storage (gs://)
    lets every machine read: tf_keras 2.21.0 ``tf_keras/src/distribute/worker_training_state.py``
    ``WorkerTrainingState.__init__`` (read_checkpoint_manager on the shared folder for every
    worker, write_checkpoint_manager on ``distributed_file_utils.write_dirpath``'s temporary
    folder for the others)."""
    keep = run.config.keep_checkpoints
    if devices.is_chief(strategy):
        run.checkpoints = _Folder(run.config.checkpoints)
        manager = tf.train.CheckpointManager(checkpoint, run.checkpoints.local, keep)
        return manager, manager.latest_checkpoint, ()
    write = tempfile.mkdtemp(prefix="bittune-worker-checkpoints-")
    manager = tf.train.CheckpointManager(checkpoint, write, keep)
    read = tempfile.mkdtemp(prefix="bittune-worker-restore-")
    return manager, _latest_in(run.config.checkpoints, read), (write, read)


def _latest_in(folder: str, scratch: str) -> str | None:
    """The latest checkpoint in ``folder`` (local, or gs://: the index file and that one
    checkpoint's files, downloaded into ``scratch``), as a path to restore; None if none."""
    if not storage.is_gcs(folder):
        return tf.train.latest_checkpoint(folder) if os.path.isdir(folder) else None
    state = storage.join(folder, "checkpoint")
    if not storage.exists(state):
        return None
    storage.write_bytes(os.path.join(scratch, "checkpoint"), storage.read_bytes(state))
    name = os.path.basename(tf.train.get_checkpoint_state(scratch).model_checkpoint_path)
    for entry in storage.list_files(folder):
        if entry.relpath.startswith(f"{name}."):  # ckpt-N.index, ckpt-N.data-…
            storage.write_bytes(os.path.join(scratch, entry.relpath), storage.read_bytes(entry.uri))
    return tf.train.latest_checkpoint(scratch)


def _same_start_everywhere(strategy, step: int, config: TrainConfig) -> None:
    """Several machines must resume from the same step: a worker that cannot see the chief's
    checkpoints (a folder on each machine's own disk) would otherwise train other weights in
    lockstep, or hang once the chief is done. Every replica learns every replica's step (one
    all-gather) and all of them stop with the same line when they differ."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    mine = strategy.experimental_distribute_values_from_function(
        lambda _: tf.constant([step], tf.int64)
    )
    others = sorted({int(s) for s in strategy.gather(mine, axis=0).numpy()} - {step})
    if others:
        raise TrainingError(
            f"the machines found different checkpoints in {config.checkpoints} (step {step} "
            f"here, {', '.join(map(str, others))} on another): every machine must read the "
            "chief's checkpoints; give a folder they all reach (gs://), not a machine's own disk"
        )


def train(config: TrainConfig) -> TrainResult:
    """Fine-tune, checkpointing as it goes; resume from the latest checkpoint. A run whose
    output already holds this schedule's finished model returns that run's summary."""
    run = prepare(config)
    done = finished_summary(run)
    if done is not None:
        return dataclasses.replace(done, already_finished=True)
    setup = _set_up(config, run.rule)
    trainable = _build(run, setup)
    history, step, rate = _loop(run, setup, trainable)
    result = _finish(run, setup, trainable, history, step, rate)
    for folder in trainable.scratch:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def _loop(run: _Run, setup: _Setup, t: _Trainable) -> tuple[list[dict[str, float]], int, float]:
    """Train from the restored step to the end (or ``max_steps``), logging, validating and
    checkpointing; returns (validation history, last step, images per second)."""
    config, rule = run.config, run.rule
    start = int(t.optimizer.iterations.numpy())
    end = min(rule.total_steps, config.max_steps or rule.total_steps)
    examples = run.manifest.examples("train")
    dataset = augment.train_dataset(
        run.shards["train"],
        rule,
        len(run.labels),
        config.augmentation,
        examples,
        skip_examples=start * rule.batch_size,
    )
    iterator = iter(setup.strategy.experimental_distribute_dataset(dataset))
    step_fn = _make_train_step(
        setup.strategy, t.model, t.optimizer, t.accumulators, rule, setup.xla
    )
    chief = devices.is_chief(setup.strategy)
    if chief:
        run.logs = _Folder(config.logs)
    writers = _summary_writers(run.logs.local if chief else None)
    _say(
        f"training {t.model.name} ({config.model}) on {examples:,} examples, {len(run.labels)} "
        f"classes: steps {start}->{end} of {rule.total_steps}, batch {rule.batch_size} = "
        f"{rule.micro_batch_size} x {rule.accumulation_steps} accumulation, {setup.replicas} "
        f"replica(s), {setup.accelerator}, {setup.precision}, XLA {'on' if setup.xla else 'off'}"
        f"; CPU kernels: {tf_env.cpu_kernels()}"
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
    result = TrainResult(
        model=run.config.model,
        steps=step,
        total_steps=run.rule.total_steps,
        finished=step >= run.rule.total_steps,
        precision=setup.precision,
        strategy=devices.strategy_name(setup.strategy),
        replicas=setup.replicas,
        validation=history,
        images_per_second=rate,
        hyperrule=run.rule.to_dict(),
    )
    if not devices.is_chief(setup.strategy):
        return result
    out = run.output.local
    if result.finished:
        serving.export(
            t.model, run.labels, run.rule.crop, os.path.join(out, serving.EXPORT_DIR),
            run.config.top_k,
        )  # fmt: skip
    storage.write_text(os.path.join(out, LABELS_FILE), json.dumps({"labels": run.labels}) + "\n")
    storage.write_text(os.path.join(out, ds.HYPERRULE_FILE), run.rule.to_json())
    summary = json.dumps(result.to_dict(), indent=2)
    storage.write_text(os.path.join(out, SUMMARY_FILE), summary + "\n")
    run.output.sync()
    return result


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _make_train_step(strategy, model, optimizer, accumulators, rule, xla: bool):
    """One optimizer step: ``accumulation_steps`` micro-batches, then one update, equal to one
    step on the whole batch (the loss is summed over examples and divided by the batch)."""
    variables = model.trainable_variables
    batch = float(rule.batch_size)
    scaled = isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer)

    @tf.function(jit_compile=xla)
    def gradients(features, labels):
        images = augment.model_inputs(features)
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
