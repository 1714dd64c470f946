"""Serving on a CPU: the SavedModel beside its LiteRT float32 and int8 exports and its ONNX export
(:mod:`components.bit.exports`), in one process, alternated, on the same decoded images.

Each runtime gets the same input (resized uint8 pixels, the exports' input; the SavedModel
through its ``pixels`` signature, so decoding is left out of every figure) and two threads.
Single-image latency is the median of alternated rounds of one-image calls; throughput is
images/s at batch 32. Sizes are the files a server loads (the SavedModel folder in full)."""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

CROP = 128
THREADS = 2
ROUNDS = 7
CALLS = 20  # single-image calls per round
BATCH = 32


def _folder_bytes(folder: str) -> int:
    walked = os.walk(folder)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, names in walked for f in names)


def _images(count: int) -> np.ndarray:
    """``count`` digits (every class), decoded and resized as at serving."""
    from components.bit.datasets import materialize_digits
    from components.bit.exports import pixels_of

    root = materialize_digits()
    paths = sorted(os.path.join(root, d, f) for d in "0123456789" for f in os.listdir(
        os.path.join(root, d)) if f.endswith(".png"))  # fmt: skip
    chosen = paths[:: len(paths) // count][:count]
    data = []
    for path in chosen:
        with open(path, "rb") as f:
            data.append(f.read())
    return pixels_of(data, CROP)


def _runners(saved_model: str, calibration: np.ndarray):
    """(name, run, bytes) for the SavedModel and each export."""
    import onnxruntime

    from components.bit import exports, serving
    from components.bit.inputs import tf

    loaded = tf.saved_model.load(saved_model)
    fn = loaded.signatures[serving.PIXELS]
    found = [
        ("SavedModel (TensorFlow)", lambda x: fn(pixels=tf.constant(x))["probabilities"].numpy(),
         _folder_bytes(saved_model)),
    ]  # fmt: skip
    fp32 = exports.to_tflite(saved_model)
    int8 = exports.to_tflite(saved_model, [x[None] for x in calibration])
    onnx = exports.to_onnx(saved_model)
    from ai_edge_litert.interpreter import Interpreter

    for name, data in (("LiteRT float32", fp32), ("LiteRT int8", int8)):
        found.append((name, _litert(Interpreter(model_content=data, num_threads=THREADS)),
                      len(data)))  # fmt: skip
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = onnxruntime.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
    found.append(("ONNX Runtime", lambda x: session.run(None, {"pixels": x})[0], len(onnx)))
    return found, (loaded,)


def _litert(interpreter):
    given, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    shape = [None]

    def run(x):
        if x.shape != shape[0]:
            interpreter.resize_tensor_input(given["index"], x.shape)
            interpreter.allocate_tensors()
            shape[0] = x.shape
        interpreter.set_tensor(given["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])

    return run


def _model(folder: str) -> str:
    from components.bit import models, serving

    model = models.build_classifier(models.load_backbone("bittune-tiny"), 10)
    rng = np.random.default_rng(0)
    head = model.get_layer("head")
    head.set_weights([rng.normal(0, 0.05, w.shape).astype(np.float32) for w in head.weights])
    return serving.export(model, [str(i) for i in range(10)], CROP, folder)


def _time(runners, images: np.ndarray) -> dict[str, dict[str, float]]:
    single = {name: [] for name, _, _ in runners}
    batched = {name: [] for name, _, _ in runners}
    for _name, run, _ in runners:  # warm up (and allocate at both batch sizes)
        run(images[:1]), run(images[:BATCH])
    for _ in range(ROUNDS):
        for name, run, _ in runners:
            start = time.perf_counter()
            for i in range(CALLS):
                run(images[i : i + 1])
            single[name].append((time.perf_counter() - start) / CALLS)
            start = time.perf_counter()
            run(images[:BATCH])
            batched[name].append(BATCH / (time.perf_counter() - start))
    return {
        name: {
            "ms": 1000 * statistics.median(single[name]),
            "images/s": statistics.median(batched[name]),
            "MiB": size / 2**20,
        }
        for name, _, size in runners
    }


def run() -> list[dict]:
    from components.bit.inputs import tf

    with contextlib.suppress(RuntimeError):  # settable only before TensorFlow's first op
        tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    images = _images(64)
    with tempfile.TemporaryDirectory() as tmp:
        saved_model = _model(os.path.join(tmp, "saved_model"))
        runners, _keep = _runners(saved_model, images[:32])
        figures = _time(runners, images)
    base = figures["SavedModel (TensorFlow)"]
    setup = (
        f"bittune-tiny, 10 classes, {CROP} px uint8 pixels, {THREADS} threads each; median of "
        f"{ROUNDS} alternated rounds of {CALLS} one-image calls and a batch of {BATCH}"
    )
    results = []
    for name, f in figures.items():
        results.append(
            {
                "name": f"export: {name}",
                "setup": setup,
                "figures": {
                    "single-image ms": f["ms"],
                    f"images/s at batch {BATCH}": f["images/s"],
                    "MiB": f["MiB"],
                },
                "ratio": base["ms"] / f["ms"],
                "ratio_label": "single-image speed over the SavedModel's",
                "target": None,
                "passed": True,
            }
        )
    return results
