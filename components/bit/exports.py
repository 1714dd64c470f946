"""Serving-ready extras of a pushed version: LiteRT and ONNX exports whose predictions are
measured against the SavedModel's before they are pushed, and TF Serving warm-up requests.

Exports take a *decoded tensor*: resized uint8 RGB pixels ``[batch, crop, crop, 3]`` (LiteRT and
ONNX Runtime have no image decoder). They are converted from the SavedModel's ``pixels``
signature (:data:`serving.PIXELS`), which holds the same model, unit-range scaling and softmax as
``serving_default``; whoever runs an export decodes and resizes with :func:`pixels_of`, the very
functions (``inputs.decode``, ``inputs.resize``) ``serving_default`` runs inside the graph, so
preprocessing is identical. Each export lands in ``<version>/exports/`` beside ``labels.txt``.

Parity is measured, not assumed (:func:`parity`): every export runs on the evaluated split
beside the SavedModel's ``serving_default`` (fed the encoded bytes); top-1 agreement, the largest
|difference| of any probability and the accuracy of each are written to the model card, and an
export below its agreement threshold is not pushed (the run says why in one line).

The warm-up file follows TF Serving's contract (tensorflow/serving,
tensorflow_serving/servables/tensorflow/saved_model_warmup_util.h, ``WarmupConsts``:
``assets.extra/tf_serving_warmup_requests``, a TFRecord file of at most 1,000
``PredictionLog`` records, replayed when a version loads).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from components.bit import serving
from components.bit.errors import BittuneError

FORMATS = ("tflite", "tflite-int8", "onnx")
FILES = {"tflite": "model_float32.tflite", "tflite-int8": "model_int8.tflite", "onnx": "model.onnx"}
EXPORTS_DIR = "exports"
LABELS_FILE = "labels.txt"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
WARMUP_IMAGES = 8  # single-image requests, as most clients send them (TF Serving allows 1,000)
CALIBRATION_IMAGES = 300  # int8: representative training images
# tf2onnx 1.17 mis-rewrites GroupNorm's reductions at opset 17 (onnxruntime then fails in a
# Reshape); opset 12 converts bittune's models exactly (max |dprob| ~1e-8 on bittune-tiny).
ONNX_OPSET = 12
EXTRA_HINT = "pip install 'bittune[export]'"


class ExportError(BittuneError):
    """Exports that cannot be made, with the reason."""


def parse_formats(text: str) -> tuple[str, ...]:
    """``"tflite,onnx"`` -> ("tflite", "onnx"); '' -> (); an unknown name is an error."""
    names = [part.strip() for part in str(text).split(",") if part.strip()]
    unknown = [name for name in names if name not in FORMATS]
    if unknown:
        raise ExportError(
            f"export_formats: unknown format {unknown[0]!r} (use {', '.join(FORMATS)})"
        )
    return tuple(dict.fromkeys(names))


def float_or_int8(fmt: str) -> str:
    return "int8" if fmt.endswith("int8") else "float"


# ---------------------------------------------------------------------------------------------
# Conversion (from the SavedModel's pixels signature)


def pixels_function(saved_model: str):
    """(loaded SavedModel, its ``pixels`` concrete function, crop size)."""
    from components.bit.inputs import tf

    loaded = tf.saved_model.load(serving.local_copy(saved_model))
    if serving.PIXELS not in loaded.signatures:
        raise ExportError(
            f"{saved_model} has no '{serving.PIXELS}' signature (exported before exports "
            "existed): train it again to export it"
        )
    function = loaded.signatures[serving.PIXELS]
    crop = int(function.structured_input_signature[1][serving.PIXELS].shape[1])
    return loaded, function, crop


def to_tflite(saved_model: str, calibration: Iterable[np.ndarray] | None = None) -> bytes:
    """LiteRT flatbuffer; with ``calibration`` (uint8 [1, crop, crop, 3] images), int8
    post-training quantisation with float32 input and output."""
    from components.bit.inputs import tf

    converter = tf.lite.TFLiteConverter.from_saved_model(
        serving.local_copy(saved_model), signature_keys=[serving.PIXELS]
    )
    if calibration is not None:
        images = list(calibration)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ({serving.PIXELS: x} for x in images)
    return converter.convert()


def to_onnx(saved_model: str) -> bytes:
    """ONNX through tf2onnx from the SavedModel's function (its Keras path is broken on recent
    TensorFlow)."""
    import tf2onnx

    from components.bit.inputs import tf

    _, function, crop = pixels_function(saved_model)
    spec = tf.TensorSpec([None, crop, crop, 3], tf.uint8, name=serving.PIXELS)
    wrapped = tf.function(lambda pixels: function(pixels=pixels))
    proto, _ = tf2onnx.convert.from_function(wrapped, input_signature=[spec], opset=ONNX_OPSET)
    return proto.SerializeToString()


def calibration_images(train_paths: Sequence[str], crop: int, count: int = CALIBRATION_IMAGES):
    """The first ``count`` training images, decoded and resized as at serving."""
    from components.bit.inputs import eval_dataset

    return [x.numpy() for x, _ in eval_dataset(train_paths, crop, 1).take(count)]


def convert(fmt: str, saved_model: str, train_paths: Sequence[str], crop: int) -> bytes:
    if fmt == "onnx":
        return to_onnx(saved_model)
    calibration = calibration_images(train_paths, crop) if fmt == "tflite-int8" else None
    return to_tflite(saved_model, calibration)


# ---------------------------------------------------------------------------------------------
# Running an export


Runner = Callable[[np.ndarray], np.ndarray]  # uint8 pixels [N, crop, crop, 3] -> probabilities


def runner(fmt: str, data: bytes) -> Runner:
    """A function running the export ``data`` of format ``fmt`` on a batch of pixels."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda pixels: session.run(None, {name: pixels})[0]
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=data)
    given, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    shape: list[tuple[int, ...]] = [()]

    def run(pixels: np.ndarray) -> np.ndarray:
        if pixels.shape != shape[0]:  # the batch size changed: allocate again
            interpreter.resize_tensor_input(given["index"], pixels.shape)
            interpreter.allocate_tensors()
            shape[0] = pixels.shape
        interpreter.set_tensor(given["index"], pixels)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"]).copy()

    return run


def pixels_of(encoded, crop: int) -> np.ndarray:
    """Encoded images (a string tensor or list of bytes) decoded and resized exactly as
    ``serving_default`` does: uint8 [N, crop, crop, 3]."""
    from components.bit import inputs

    tf = inputs.tf
    return tf.map_fn(
        lambda e: inputs.resize(inputs.decode(e), crop),
        tf.convert_to_tensor(encoded, tf.string),
        fn_output_signature=tf.TensorSpec([crop, crop, 3], tf.uint8),
    ).numpy()


def require_runtimes(formats: Sequence[str]) -> None:
    """One line naming the extra when a chosen format's converter or runtime is missing."""
    import importlib.util

    needed = {"tflite": ("ai_edge_litert",), "tflite-int8": ("ai_edge_litert",)}
    modules = {m for f in formats for m in needed.get(f, ("tf2onnx", "onnxruntime"))}
    missing = sorted(m for m in modules if importlib.util.find_spec(m) is None)
    if missing:
        raise ExportError(f"exports need {', '.join(missing)}: {EXTRA_HINT}")


# ---------------------------------------------------------------------------------------------
# Parity


@dataclasses.dataclass
class Parity:
    """One export beside the SavedModel on the evaluated split."""

    format: str
    file: str
    bytes: int
    examples: int = 0
    agreement: float = 0.0  # top-1 agreement with the SavedModel
    max_abs_diff: float = 0.0  # largest |probability difference| over every example and class
    accuracy: float = 0.0
    saved_model_accuracy: float = 0.0
    threshold: float = 0.0
    problem: str | None = None  # why it is not pushed

    @property
    def pushed(self) -> bool:
        return self.problem is None


def parity(
    serve, runners: Mapping[str, Runner], paths: Sequence[str], crop: int, batch_size: int = 64
) -> dict[str, dict[str, float]]:
    """Top-1 agreement, max |Δprob| and accuracy of each runner against ``serve`` (the
    SavedModel's ``serving_default``) over the records of ``paths``."""
    from components.bit.inputs import encoded_dataset

    counts = {f: {"agree": 0, "correct": 0, "diff": 0.0} for f in runners}
    total = reference_correct = 0
    for encoded, labels, _, _ in encoded_dataset(paths, batch_size):
        reference = serve(image_bytes=encoded)["probabilities"].numpy()
        labels, pixels = labels.numpy(), pixels_of(encoded, crop)
        top = reference.argmax(1)
        total += len(labels)
        reference_correct += int((top == labels).sum())
        for fmt, run in runners.items():
            probabilities = np.asarray(run(pixels), np.float32)
            c = counts[fmt]
            c["agree"] += int((probabilities.argmax(1) == top).sum())
            c["correct"] += int((probabilities.argmax(1) == labels).sum())
            c["diff"] = max(c["diff"], float(np.abs(probabilities - reference).max()))
    n = max(total, 1)
    return {
        fmt: {
            "examples": total,
            "agreement": c["agree"] / n,
            "max_abs_diff": c["diff"],
            "accuracy": c["correct"] / n,
            "saved_model_accuracy": reference_correct / n,
        }
        for fmt, c in counts.items()
    }
