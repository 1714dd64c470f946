"""The one way bittune imports TensorFlow: Keras 2 (tf-keras), quiet logs.

bittune uses tf-keras throughout (``TF_USE_LEGACY_KERAS=1`` before TensorFlow is imported):
TF Hub's ``hub.KerasLayer`` works inside Keras 2 models, not inside Keras 3 functional models.
"""

from __future__ import annotations

import os


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
