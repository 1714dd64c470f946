"""Helpers the training tests share (imported by test modules, never a test module itself):
tiny schedules, random checkpoints in the official layout, the training command line, the
weights a run ends with, several training processes run together as a multi-machine job, a
MirroredStrategy run of both momentum optimizers, and training's input stream over the digits
dataset."""

import contextlib
import dataclasses
import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

from components.bit.models import Architecture

SMALL = Architecture((1, 2, 1, 1), 0.5)
TINY_RULE = {
    "resize": 32,
    "crop": 28,
    "batch_size": 16,
    "micro_batch_size": 8,
    "total_steps": 6,
    "warmup_steps": 2,
    "decay_steps": [3, 4, 5],
}
LONGER_RULE = {**TINY_RULE, "total_steps": 12, "decay_steps": [6, 8, 10]}


def random_checkpoint(arch, seed=0, head_classes=None):
    """Random weights in the official layout for ``arch`` (keys taken from the NumPy spec)."""
    rng = np.random.default_rng(seed)
    weights = {
        "resnet/root_block/standardized_conv2d/kernel": rng.normal(
            size=(7, 7, 3, arch.root_filters)
        )
    }
    channels = arch.root_filters
    for block, count in enumerate(arch.units, start=1):
        mid = arch.root_filters * 2 ** (block - 1)
        for unit in range(1, count + 1):
            p = f"resnet/block{block}/unit{unit:02d}/"
            shapes = {"a": (1, 1, channels, mid), "b": (3, 3, mid, mid), "c": (1, 1, mid, 4 * mid)}
            gn_channels = {"a": channels, "b": mid, "c": mid}
            for part, shape in shapes.items():
                weights[p + f"{part}/standardized_conv2d/kernel"] = rng.normal(size=shape)
                weights[p + f"{part}/group_norm/gamma"] = rng.uniform(0.5, 1.5, gn_channels[part])
                weights[p + f"{part}/group_norm/beta"] = rng.normal(0, 0.1, gn_channels[part])
            if unit == 1:
                weights[p + "a/proj/standardized_conv2d/kernel"] = rng.normal(
                    size=(1, 1, channels, 4 * mid)
                )
            channels = 4 * mid
    weights["resnet/group_norm/gamma"] = rng.uniform(0.5, 1.5, channels)
    weights["resnet/group_norm/beta"] = rng.normal(0, 0.1, channels)
    if head_classes:
        weights["resnet/head/conv2d/kernel"] = rng.normal(size=(1, 1, channels, head_classes))
        weights["resnet/head/conv2d/bias"] = np.zeros(head_classes)
    return {k: v.astype(np.float32) for k, v in weights.items()}


def train_command(root, output, model, *extra):
    """``bittune train`` on a prepared dataset folder (``root``/data, ``root``/analysis)."""
    return [
        sys.executable,
        "-m",
        "pipelines.cli",
        "train",
        "--data",
        str(root / "data"),
        "--hyperrule",
        str(root / "analysis" / "hyperrule.json"),
        "--model",
        model,
        "--output",
        str(output),
        "--checkpoint-every",
        "2",
        "--eval-every",
        "100",
        "--deterministic",
        *extra,
    ]


def checkpoint_weights(checkpoints) -> dict:
    """The model's variables in the latest checkpoint of a checkpoints folder."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(checkpoints))
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith("model/")]
    return {n: reader.get_tensor(n) for n in names}


def final_weights(output) -> dict:
    """The model's variables at the end of a ``bittune train --output`` run."""
    return checkpoint_weights(output / "checkpoints")


def downloaded(folder: str, local: pathlib.Path) -> pathlib.Path:
    """A copy of a (gs://) folder in ``local``."""
    from components.bit import storage

    for entry in storage.list_files(folder):
        target = local / entry.relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(storage.read_bytes(entry.uri))
    return local


# ---------------------------------------------------------------------------------------------
# Several training processes as one multi-machine job, on loopback


def free_ports(count: int) -> list[int]:
    """``count`` loopback ports nobody listens on, drawn below the kernel's ephemeral range:
    a port the kernel hands out for bind(0) can be taken by any outgoing connection before the
    worker binds it; one below the range only by another program that picks it by number."""
    low = 32768
    with contextlib.suppress(OSError, ValueError, IndexError):  # not Linux: the IANA range
        low = int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    draw = random.SystemRandom()
    ports: list[int] = []
    while len(ports) < count:
        port = draw.randrange(max(1024, low - 16384), low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


def vertex_replica_envs(replicas: int = 2) -> list[dict[str, str]]:
    """What Vertex AI gives each replica of a CustomJob with two worker pools (pool 0: the
    chief, pool 1: the other workers), on fresh loopback ports: ``CLUSTER_SPEC`` and no
    ``TF_CONFIG``. The shape is Vertex's "CLUSTER_SPEC" environment variable
    (cloud.google.com/vertex-ai/docs/training/distributed-training)."""
    ports = free_ports(replicas)
    cluster = {
        "workerpool0": [f"localhost:{ports[0]}"],
        "workerpool1": [f"localhost:{p}" for p in ports[1:]],
    }
    envs = []
    for replica in range(replicas):
        pool, index = ("workerpool0", 0) if replica == 0 else ("workerpool1", replica - 1)
        task = {"type": pool, "index": index, "trial": ""}
        spec = {"cluster": cluster, "environment": "cloud", "task": task, "job": {}}
        envs.append({"CLUSTER_SPEC": json.dumps(spec), "TF_CONFIG": ""})
    return envs


class Job:
    """Training processes started together (one per command and environment), their stderr in
    files; leaving the ``with`` block kills any still running (SIGKILL to its process group),
    so a failed test never leaves a worker behind."""

    def __init__(self, commands: list[list[str]], envs: list[dict[str, str]]) -> None:
        # closed in __exit__
        self._logs = [tempfile.TemporaryFile("w+", encoding="utf-8") for _ in commands]  # noqa: SIM115
        self.processes = [
            subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                             stderr=log, text=True, start_new_session=True)
            for command, env, log in zip(commands, envs, self._logs, strict=True)
        ]  # fmt: skip

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
        for log in self._logs:
            log.close()

    def kill(self) -> None:
        """SIGKILL every process still running (all at once, as when a job is stopped)."""
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes:
            process.wait()

    def running(self) -> bool:
        return all(p.poll() is None for p in self.processes)

    def wait(self, timeout_s: float) -> list[int]:
        """Every process's exit status; those still running after ``timeout_s`` are killed."""
        deadline = time.monotonic() + timeout_s
        for process in self.processes:
            try:
                process.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                break
        self.kill()
        return [p.returncode for p in self.processes]

    def wait_until(self, ready, timeout_s: float) -> bool:
        """Poll ``ready()`` while every process runs; False if one ended or time ran out."""
        deadline = time.monotonic() + timeout_s
        while self.running() and time.monotonic() < deadline:
            if ready():
                return True
            time.sleep(0.02)
        return False

    def stderr(self) -> list[str]:
        out = []
        for log in self._logs:
            log.seek(0)
            out.append(log.read())
        return out


def mirrored_weights(kind: str) -> list:
    """Weights after a few steps under MirroredStrategy over two logical CPUs."""
    import tensorflow as tf

    from components.bit import optimizer as bit_optimizer

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    data = rng.normal(0.0, 1.0, (6, 8, 5)).astype(np.float32)
    targets = rng.normal(0.0, 1.0, (6, 8, 3)).astype(np.float32)
    with strategy.scope():
        tf.keras.utils.set_random_seed(1)
        model = tf.keras.Sequential([tf.keras.layers.Dense(4, activation="tanh"),
                                     tf.keras.layers.Dense(3)])  # fmt: skip
        model.build((None, 5))
        schedule = bit_optimizer.BitSchedule(0.1, 2, [3, 4])
        if kind == "fused":
            optimizer = bit_optimizer.MomentumSGD(schedule, momentum=0.9)
        else:
            optimizer = tf.keras.optimizers.SGD(schedule, momentum=0.9)
        optimizer.build(model.trainable_variables)

    @tf.function
    def step(x, y):
        def replica(x, y):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(model(x) - y)) / 8.0
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))

        strategy.run(replica, (x, y))

    for x, y in zip(data, targets, strict=True):
        dist = strategy.experimental_distribute_values_from_function(
            lambda ctx, x=x, y=y: (x[ctx.replica_id_in_sync_group * 4:][:4],
                                   y[ctx.replica_id_in_sync_group * 4:][:4]))  # fmt: skip
        step(*dist)
    return [v.numpy().tolist() for v in model.trainable_variables]


def train_stream(digits_data, skip=0, **changes):
    """Training's input pipeline over the digits dataset (``digits_data``: (analysis, dataset)),
    with ``changes`` to the augmentation and ``rule`` changes to its HyperRule."""
    from components.bit import augment
    from components.bit import dataset as ds

    _, data = digits_data
    manifest = ds.read_manifest(str(data))
    rule = dataclasses.replace(manifest.rule, **changes.pop("rule", {}))
    config = augment.Augmentation(**changes)
    paths = manifest.shard_paths("train", [str(data)])
    return augment.train_dataset(paths, rule, 10, config, manifest.examples("train"), skip)


def first_batches(dataset, batches=2):
    """(images, labels) of the first micro-batches (images uint8 unless MixUp mixed them)."""
    from components.bit import augment

    out = []
    for features, labels in dataset.take(batches):
        out.append((augment.model_inputs(features).numpy() if "lam" in features
                    else features["images"].numpy(), labels.numpy()))  # fmt: skip
    return out
