"""The one way bittune imports TensorFlow: Keras 2 (tf-keras), and its start-up noise filtered.

bittune uses tf-keras throughout (``TF_USE_LEGACY_KERAS=1`` before TensorFlow is imported):
TF Hub's ``hub.KerasLayer`` works inside Keras 2 models, not inside Keras 3 functional models.

TensorFlow's native libraries write start-up chatter to the process's stderr (oneDNN, CUDA
stubs, ``cuInit`` errors on every machine without a GPU) before any Python logging setting
applies. :func:`import_tensorflow` passes stderr through a filter that drops exactly those
lines; everything else, errors included, goes through unchanged. Entry points (the ``bittune``
command, every component) turn the filter on with :func:`filter_native_noise` before anything
imports TensorFlow; ``BITTUNE_TF_NOISE=show`` turns it off.
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


def import_tensorflow():
    """Import and return TensorFlow with tf.keras bound to tf-keras (Keras 2)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if not tf.keras.__name__.startswith("tf_keras"):
        raise RuntimeError(
            "TensorFlow was imported before bittune could select tf-keras: set "
            "TF_USE_LEGACY_KERAS=1, or import bittune's training code first"
        )
    return tf
