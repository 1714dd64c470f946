"""Where training runs: devices, the tf.distribute strategy, the precision policy, and which
replica of a multi-machine job writes the results."""

from __future__ import annotations

import contextlib
import json
import os
import sys

from components.bit.errors import BittuneError
from components.bit.inputs import tf


class DeviceError(BittuneError):
    """The machine does not have what training was asked to run on."""


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
    """Set ``TF_CONFIG`` from Vertex AI's ``CLUSTER_SPEC`` whenever that is given, replacing
    a ``TF_CONFIG`` the platform set too: the worker pools are Vertex's documented contract
    (workerpool0 the primary replica, workerpool1 the workers), while a platform-written
    ``TF_CONFIG`` may name the primary ``master`` (AI Platform's task types: "chief, worker,
    ps, or master"), which MultiWorkerMirroredStrategy does not take."""
    spec = os.environ.get("CLUSTER_SPEC")
    if not spec:
        return
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


def make_strategy(training_strategy: str, accelerator: str = "", training_replicas: int = 1):
    """A tf.distribute strategy by name. ``auto`` picks a TPU (when the machine has one),
    several GPUs, or the default. When ``accelerator`` (gpu or tpu) was asked for, a machine
    without one fails here, in seconds, instead of training on the CPU. Several machines
    (``training_replicas``) train with MultiWorkerMirroredStrategy from the cluster the
    platform describes."""
    name = training_strategy
    if training_replicas > 1:
        vertex_tf_config()
        if not os.environ.get("TF_CONFIG"):
            raise DeviceError(
                f"training_replicas={training_replicas} needs a multi-worker cluster (Vertex AI "
                "Pipelines runs one as a CustomJob: bittune compile --target vertex); this "
                "task runs on one machine"
            )
        name = "multiworker"
    if _tpu_expected(name, accelerator):
        try:
            return _tpu_strategy()
        except (ValueError, RuntimeError, tf.errors.NotFoundError) as exc:
            if name == "tpu" or accelerator == "tpu":
                raise DeviceError(f"asked for a TPU, but none was found ({exc})") from None
    devices = visible_devices()
    if accelerator == "gpu" and not devices["GPU"]:
        raise DeviceError(
            "asked for a GPU, but TensorFlow finds none (only the CPU): check that the node "
            "has GPUs and their driver is visible to the container (nvidia-smi), and that the "
            "image is bittune-gpu"
        )
    if name == "multiworker":
        vertex_tf_config()
        if not os.environ.get("TF_CONFIG"):
            raise DeviceError(
                "training_strategy multiworker needs TF_CONFIG (or Vertex AI's CLUSTER_SPEC) "
                "describing the cluster"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        if not devices["GPU"]:
            raise DeviceError("training_strategy mirrored needs GPUs, but TensorFlow finds none")
        return tf.distribute.MirroredStrategy()
    if name == "auto" and devices["GPU"] > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def strategy_name(strategy) -> str:
    """The training_strategy name of a strategy object."""
    kinds = [
        (tf.distribute.TPUStrategy, "tpu"),
        (tf.distribute.MultiWorkerMirroredStrategy, "multiworker"),
        (tf.distribute.MirroredStrategy, "mirrored"),
    ]
    return next((name for kind, name in kinds if isinstance(strategy, kind)), "default")


def accelerator_of(strategy) -> str:
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


POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


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


def replica_role() -> str:
    """This process's part in a multi-machine job as TF_CONFIG (or else Vertex AI's
    CLUSTER_SPEC) names it, e.g. ``chief-0``, ``worker-1`` or ``workerpool1-0``; ``""`` when
    it runs alone. Reads the environment only (TF_CONFIG is set when the strategy is made)."""
    config = os.environ.get("TF_CONFIG") or os.environ.get("CLUSTER_SPEC") or "{}"
    task = json.loads(config).get("task") or {}
    return f"{task['type']}-{task.get('index', 0)}" if task.get("type") else ""


def end_worker_replica() -> None:
    """End a non-chief replica with success before KFP's executor writes the task's outputs:
    every replica of a CustomJob runs the same executor input, so only the chief may write
    ``executor_output.json`` and the model's metadata (else the last writer wins)."""
    print("worker replica done: the chief writes the task's outputs", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(0)


def is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )
