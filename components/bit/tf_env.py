"""The one way bittune imports TensorFlow: Keras 2 (tf-keras), and its start-up noise filtered.

bittune uses tf-keras throughout (``TF_USE_LEGACY_KERAS=1`` before TensorFlow is imported):
TF Hub's ``hub.KerasLayer`` works inside Keras 2 models, not inside Keras 3 functional models.

TensorFlow's native libraries write start-up chatter to the process's stderr (oneDNN, CUDA
stubs, ``cuInit`` errors on every machine without a GPU) before any Python logging setting
applies. :func:`import_tensorflow` passes stderr through a filter that drops exactly those
lines; everything else, errors included, goes through unchanged. Entry points (the ``bittune``
command, every component) turn the filter on with :func:`filter_native_noise` before anything
imports TensorFlow; ``BITTUNE_TF_NOISE=show`` turns it off.

TensorFlow 2.21 turns its oneDNN CPU kernels on by default only on CPUs with AVX-512 VNNI/BF16,
AVX-VNNI or AMX; elsewhere (AVX2 cloud CPUs, most laptops) it falls back to Eigen kernels that
run BiT's training step about 3x slower (BENCHMARKS.md, "CPU kernels"). :func:`import_tensorflow`
therefore sets ``TF_ENABLE_ONEDNN_OPTS=1`` before the import unless the user set it;
:func:`cpu_kernels` says which kernels a run got, for the training header and the benchmarks.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

NOISE = re.compile(
    r"^\s*(?:[EWI]\d{4} [\d:.]+\s+\d+ \S+\] .*(?:cuInit|cuda|cudart|oneDNN|TF-TRT|"
    r"computation placer|cpu_feature_guard|rebuild TensorFlow|port\.cc)|"
    r"WARNING: All log messages before absl::InitializeLog\(\) is called|"
    r"To enable the following instructions: .* in other operations, rebuild TensorFlow)"
)
_filtering = False


def filter_native_noise() -> None:
    """Route file descriptor 2 through a thread that drops :data:`NOISE` lines."""
    global _filtering
    if _filtering or os.environ.get("BITTUNE_TF_NOISE") == "show":
        return
    _filtering = True
    sys.stderr.flush()
    original = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)

    def forward() -> None:
        with os.fdopen(read, "rb") as pipe, os.fdopen(os.dup(original), "wb", 0) as out:
            for line in pipe:
                if not NOISE.match(line.decode(errors="replace")):
                    out.write(line)

    thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last writer: the thread sees the end
        thread.join(timeout=5)

    atexit.register(restore)


def prepare_environment() -> None:
    """The variables TensorFlow reads once, at import: tf-keras, quiet logs, oneDNN kernels.

    A value the user set wins (``TF_ENABLE_ONEDNN_OPTS=0`` turns oneDNN off)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


_keras_checked = False


def import_tensorflow():
    """Import and return TensorFlow with tf.keras bound to tf-keras (Keras 2); checked once
    per process, at the first import (tf.keras's name is not stable once modules load)."""
    global _keras_checked
    prepare_environment()
    import tensorflow as tf

    if not _keras_checked:
        if not tf.keras.__name__.startswith("tf_keras"):
            raise RuntimeError(
                "TensorFlow was imported before bittune could select tf-keras: set "
                "TF_USE_LEGACY_KERAS=1, or import bittune's training code first"
            )
        _keras_checked = True
    return tf


VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")


def cpu_model() -> str:
    """The CPU's model name, family/model numbers and the vector extensions that decide
    TensorFlow's CPU kernels, e.g. ``AMD EPYC, family 25 model 1 (avx2 fma)``; from
    /proc/cpuinfo (Linux), else the platform's name."""
    import platform

    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if not line.strip():  # the first processor's block is enough
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f", family {fields['cpu family']} model {fields['model']}"
    flags = set(fields.get("flags", "").split())
    return f"{name} ({' '.join(f for f in VECTOR_FLAGS if f in flags) or 'no AVX2'})"


def onednn_enabled() -> bool:
    """Whether this process's TensorFlow runs its oneDNN CPU kernels (TensorFlow's own answer,
    ``IsMklEnabled``, which reads ``TF_ENABLE_ONEDNN_OPTS`` and the CPU's features)."""
    prepare_environment()  # before TensorFlow loads, if it has not yet
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def cpu_kernels() -> str:
    """One phrase for headers: ``oneDNN on, AMD EPYC 7B13 (avx2 fma)``."""
    return f"oneDNN {'on' if onednn_enabled() else 'off'}, {cpu_model()}"


def usable_cpus() -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as limit:
            quota, period = limit.read().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period) + 0.5)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)
