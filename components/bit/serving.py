"""What serving needs of a trained model: the SavedModel export with its serving signature,
the one lookup of a SavedModel in a run folder, and prediction on image files.

The signature ``serving_default`` takes encoded JPEG/PNG bytes (``image_bytes``, a batch of
strings), resizes each image to the training crop size, and returns ``probabilities``,
``top_k_classes`` (class names, embedded in the model) and ``top_k_scores``. The signature
``pixels`` takes what that decoding and resizing make (uint8 ``[batch, crop, crop, 3]``) and
returns ``probabilities``: what the LiteRT and ONNX exports are converted from
(:mod:`components.bit.exports`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Sequence
from typing import Any

from components.bit import images as image_files
from components.bit import storage
from components.bit.errors import BittuneError

EXPORT_DIR = "saved_model"
SAVED_MODEL_FILE = "saved_model.pb"

# The serving layout (TF Serving's and Vertex AI's): SERVING_ROOT/<version>/ holds a SavedModel.
# A version is complete once its saved_model.pb is there (written last); the claim file marks a
# version number as taken by a writer before anything else is written.
CLAIM_FILE = ".bittune-claim"
# What a version is (push.model_card): its data, metrics, gate and lineage, read by the next run.
CARD_JSON = "model_card.json"
# The second signature: resized uint8 RGB pixels [batch, crop, crop, 3] -> probabilities.
PIXELS = "pixels"


class ServingError(BittuneError):
    """No usable exported model, with where it was looked for."""


def find_saved_model(run: str) -> str:
    """The SavedModel folder of ``run``: the folder itself, or its ``saved_model`` folder."""
    for folder in (run, storage.join(run, EXPORT_DIR)):
        if storage.exists(storage.join(folder, SAVED_MODEL_FILE)):
            return folder
    raise ServingError(f"no exported model in {run} (did training finish?)")


def versions(serving_root: str, complete: bool = True) -> list[int]:
    """The numeric versions under ``serving_root`` (only complete ones, or every one taken)."""
    found: set[int] = set()
    if not storage.is_dir(serving_root):
        return []
    for entry in storage.list_files(serving_root):
        head, _, rest = entry.relpath.partition("/")
        if head.isdigit() and (rest == SAVED_MODEL_FILE or not complete):
            found.add(int(head))
    return sorted(found)


def latest_version(serving_root: str) -> str | None:
    """The folder of the newest complete version under ``serving_root``, if any."""
    done = versions(serving_root)
    return storage.join(serving_root, str(done[-1])) if done else None


def read_card(version: str) -> dict[str, Any] | None:
    """A served version's model card, or None when it has none (or not a readable one)."""
    import json

    try:
        card = json.loads(storage.read_text(storage.join(version, CARD_JSON)))
    except (FileNotFoundError, storage.StorageError, OSError, ValueError):
        return None
    return card if isinstance(card, dict) else None


def _serving_module(model, labels: Sequence[str], crop: int, top_k: int):
    """A tf.Module holding the model, its class names and the serving signature."""
    from components.bit import inputs

    tf = inputs.tf

    class Serving(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            # A variable, so that the loaded model has its class names (``loaded.labels``).
            self.labels = tf.Variable(list(labels), trainable=False, name="labels")
            self.top_k = min(top_k, len(labels))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve(self, image_bytes):
            def one(encoded):
                return inputs.to_unit_range(inputs.resize(inputs.decode(encoded), crop))

            images = tf.map_fn(
                one, image_bytes, fn_output_signature=tf.TensorSpec([crop, crop, 3], tf.float32)
            )
            probabilities = self.probabilities(images)
            top = tf.math.top_k(probabilities, k=self.top_k)
            return {
                "probabilities": probabilities,
                "top_k_scores": top.values,
                "top_k_classes": tf.gather(self.labels, top.indices),
            }

        @tf.function(input_signature=[tf.TensorSpec([None, crop, crop, 3], tf.uint8, name=PIXELS)])
        def pixels(self, pixels):
            """The same model after decoding and resizing (what the LiteRT and ONNX exports
            are converted from: their runtimes have no image decoder)."""
            return {"probabilities": self.probabilities(inputs.to_unit_range(pixels))}

        def probabilities(self, images):
            logits = self.model(images, training=False)
            return tf.nn.softmax(tf.cast(logits, tf.float32))

    return Serving()


def export(model, labels: Sequence[str], crop: int, directory: str, top_k: int = 5) -> str:
    """Write ``model`` as a SavedModel with the serving signature (labels embedded); the
    folder appears only when complete."""
    from components.bit.inputs import tf

    module = _serving_module(model, labels, crop, top_k)
    tmp = directory.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    signatures = {"serving_default": module.serve, PIXELS: module.pixels}
    tf.saved_model.save(module, tmp, signatures=signatures)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
    return directory


def local_copy(folder: str) -> str:
    """``folder`` itself when local; a gs:// folder downloaded to a temporary folder (TensorFlow's
    own gs:// reader cannot be pointed at an emulator, and reads object by object anyway)."""
    if not storage.is_gcs(folder):
        return folder
    import tempfile

    local = tempfile.mkdtemp(prefix="bittune-model-")
    for entry in storage.list_files(folder):
        target = os.path.join(local, entry.relpath)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(storage.read_bytes(entry.uri))
    return local


@dataclasses.dataclass(frozen=True)
class Loaded:
    """An exported model: its serving function and the class names it predicts."""

    serve: Any
    labels: list[str]


def load(run: str) -> Loaded:
    """The exported model of a run (or a SavedModel folder, or a served version)."""
    from components.bit.inputs import tf

    loaded = tf.saved_model.load(local_copy(find_saved_model(run)))
    labels = [label.decode("utf-8") for label in loaded.labels.numpy()]
    return Loaded(loaded.signatures["serving_default"], labels)


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One image's result: its top classes with scores, or why it could not be classified."""

    image: str
    top_k: list[tuple[str, float]] | None = None
    error: str | None = None


def read_images(image_uris: Sequence[str]) -> list[tuple[str, bytes | None, str | None]]:
    """(uri, bytes, problem) per image, checked from the header alone: bombs and broken files
    are refused before any decoding, and before a model is loaded."""
    out = []
    for uri in image_uris:
        try:
            data = storage.read_bytes(uri)
        except (OSError, storage.StorageError) as exc:
            out.append((uri, None, f"cannot read it ({getattr(exc, 'strerror', None) or exc})"))
            continue
        checked = image_files.inspect(data)
        if isinstance(checked, image_files.Problem):
            out.append((uri, None, checked.reason))
        else:
            out.append((uri, data, None))
    return out


def predict(run: str, image_uris: Sequence[str]) -> list[Prediction]:
    """Top-k classes of each image; a bad image gets its reason, the others their results."""
    from components.bit.inputs import tf

    checked = read_images(image_uris)
    readable = [c for c in checked if c[1] is not None]
    serve = load(run).serve if readable else None
    results = []
    for uri, data, problem in checked:
        if problem is not None:
            results.append(Prediction(uri, error=problem))
            continue
        try:
            out = serve(image_bytes=tf.constant([data]))
        except tf.errors.InvalidArgumentError:
            results.append(Prediction(uri, error="not a JPEG, PNG, GIF or BMP image"))
            continue
        classes = [c.decode("utf-8") for c in out["top_k_classes"].numpy()[0]]
        scores = [float(s) for s in out["top_k_scores"].numpy()[0]]
        results.append(Prediction(uri, top_k=list(zip(classes, scores, strict=True))))
    return results
