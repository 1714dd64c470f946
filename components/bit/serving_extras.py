"""What a pushed version carries besides its SavedModel: TF Serving warm-up requests, and the
exports chosen by ``export_formats`` that kept to their agreement threshold
(:mod:`components.bit.exports`), with their parity for the model card; and prediction with an
export (``bittune predict --format``)."""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from components.bit import exports, serving, storage, tfrecords
from components.bit.exports import EXPORTS_DIR, FILES, LABELS_FILE, WARMUP_FILE

SERVING_API_HINT = "pip install 'bittune[export]' (tensorflow-serving-api)"


# ---------------------------------------------------------------------------------------------
# Warm-up


def warmup_requests(images: Sequence[bytes]) -> bytes:
    """A TFRecord file of PredictionLog records, one ``serving_default`` request per encoded
    image (the signature's ``image_bytes``, a batch of one)."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from components.bit.inputs import tf

    out = []
    for data in images[:1000]:  # TF Serving reads at most 1,000 records
        request = predict_pb2.PredictRequest()
        request.model_spec.signature_name = "serving_default"
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([data], dtype=tf.string))
        log = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)
        )
        out.append(tfrecords.frame(log.SerializeToString()))
    return b"".join(out)


def read_warmup(data: bytes) -> list[Any]:
    """The PredictionLog records of a warm-up file (CRCs checked)."""
    from tensorflow_serving.apis import prediction_log_pb2

    return [
        prediction_log_pb2.PredictionLog.FromString(payload)
        for payload in tfrecords.read_frames(io.BytesIO(data))
    ]


def test_images(paths: Sequence[str], count: int = exports.WARMUP_IMAGES) -> list[bytes]:
    """The first ``count`` encoded images of the evaluated split's shards."""
    found: list[bytes] = []
    for path in paths:
        data = storage.read_bytes(path)  # a test shard: small next to training's
        for payload in tfrecords.read_frames(io.BytesIO(data)):
            found.append(tfrecords.decode_example(payload)["image/encoded"])  # type: ignore
            if len(found) == count:
                return found
    return found
    return found


# ---------------------------------------------------------------------------------------------
# The extras of one version


@dataclasses.dataclass
class Extras:
    """Files to push beside the SavedModel (relative path -> bytes), each export's parity, and
    one line per export that is not pushed."""

    files: dict[str, bytes]
    parity: list[exports.Parity]
    notes: list[str]

    def card(self) -> list[dict[str, Any]]:
        return [{**dataclasses.asdict(p), "pushed": p.pushed} for p in self.parity]


def prepare(
    run: str,
    test_paths: Sequence[str],
    train_paths: Sequence[str],
    formats: Sequence[str] = (),
    thresholds: Mapping[str, float] | None = None,
) -> Extras:
    """The warm-up file, then each of ``formats`` converted, run beside the SavedModel on
    ``test_paths`` and kept only at or above its threshold (``{"float": …, "int8": …}``)."""
    thresholds = {"float": 0.995, "int8": 0.98, **(thresholds or {})}
    files: dict[str, bytes] = {}
    notes: list[str] = []
    try:
        files[WARMUP_FILE] = warmup_requests(test_images(test_paths))
    except ImportError:
        notes.append(f"no TF Serving warm-up requests written: {SERVING_API_HINT}")
    if not formats:
        return Extras(files, [], notes)
    exports.require_runtimes(formats)
    saved_model = serving.find_saved_model(run)
    _, _, crop = exports.pixels_function(saved_model)
    parities, runners, converted = [], {}, {}
    for fmt in formats:
        found = exports.Parity(fmt, f"{EXPORTS_DIR}/{FILES[fmt]}", 0)
        found.threshold = thresholds[exports.float_or_int8(fmt)]
        parities.append(found)
        try:
            converted[fmt] = exports.convert(fmt, saved_model, train_paths, crop)
            found.bytes = len(converted[fmt])
            runners[fmt] = exports.runner(fmt, converted[fmt])
        except Exception as exc:  # converters fail in many ways: one line, no traceback
            found.problem = f"conversion failed: {_first_line(exc)}"
    model = serving.load(run)
    _measure(parities, runners, model.serve, test_paths, crop)
    for found in parities:
        if found.pushed:
            files[found.file] = converted[found.format]
        else:
            notes.append(f"{found.format} export not pushed: {found.problem}")
    if any(p.pushed for p in parities):
        labels = "".join(f"{label}\n" for label in model.labels)
        files[f"{EXPORTS_DIR}/{LABELS_FILE}"] = labels.encode()
    return Extras(files, parities, notes)


def _measure(parities, runners, serve, test_paths, crop) -> None:
    try:
        measured = exports.parity(serve, runners, test_paths, crop)
    except Exception as exc:  # an export that cannot run: every one still running is refused
        for found in parities:
            if found.pushed:
                found.problem = f"it failed on the test images: {_first_line(exc)}"
        return
    for found in parities:
        if found.format not in measured:
            continue
        for key, value in measured[found.format].items():
            setattr(found, key, value)
        if found.agreement < found.threshold:
            found.problem = (
                f"top-1 agreement with the SavedModel {found.agreement:.2%} on {found.examples:,} "
                f"test images is below {found.threshold:.2%} (export_agreement_"
                f"{exports.float_or_int8(found.format)})"
            )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def card_lines(rows: Sequence[Mapping[str, Any]] | None) -> list[str]:
    """The model card's "Exports" section (none when no export was asked for)."""
    if not rows:
        return []
    lines = [
        "## Exports (input: resized uint8 RGB pixels)",
        "| format | file | MiB | top-1 agreement | max abs Δprob | accuracy | SavedModel accuracy "
        "| pushed |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        pushed = "yes" if r["pushed"] else f"no: {r['problem']}"
        lines.append(
            f"| {r['format']} | {r['file']} | {r['bytes'] / 2**20:.2f} | {r['agreement']:.2%} | "
            f"{r['max_abs_diff']:.2g} | {r['accuracy']:.4f} | {r['saved_model_accuracy']:.4f} | "
            f"{pushed} |"
        )
    return [*lines, ""]


# ---------------------------------------------------------------------------------------------
# Prediction with an export


def predict(version: str, image_uris: Sequence[str], fmt: str) -> list[serving.Prediction]:
    """Top-5 classes of each image from the ``fmt`` export of a pushed version (or its exports
    folder); a bad image gets its reason, the others their results."""
    folder = version
    if not storage.exists(storage.join(folder, FILES[fmt])):
        folder = storage.join(version, EXPORTS_DIR)
    try:
        data = storage.read_bytes(storage.join(folder, FILES[fmt]))
        labels = storage.read_text(storage.join(folder, LABELS_FILE)).splitlines()
    except (FileNotFoundError, OSError, storage.StorageError):
        raise exports.ExportError(
            f"no {fmt} export in {version} (exports are pushed with --export-formats {fmt})"
        ) from None
    exports.require_runtimes([fmt])
    from components.bit.inputs import tf

    run = exports.runner(fmt, data)
    crop = _input_size(fmt, data)
    results = []
    for uri, encoded, problem in serving.read_images(image_uris):
        if problem is not None:
            results.append(serving.Prediction(uri, error=problem))
            continue
        try:
            pixels = exports.pixels_of([encoded], crop)
        except tf.errors.InvalidArgumentError:
            results.append(serving.Prediction(uri, error="not a JPEG, PNG, GIF or BMP image"))
            continue
        probabilities = np.asarray(run(pixels))[0]
        top = np.argsort(-probabilities, kind="stable")[: min(5, len(labels))]
        results.append(
            serving.Prediction(uri, top_k=[(labels[i], float(probabilities[i])) for i in top])
        )
    return results


def _input_size(fmt: str, data: bytes) -> int:
    if fmt == "onnx":
        import onnx

        dims = onnx.load_from_string(data).graph.input[0].type.tensor_type.shape.dim
        return int(dims[1].dim_value)
    from ai_edge_litert.interpreter import Interpreter

    return int(Interpreter(model_content=data).get_input_details()[0]["shape"][1])


def for_dataset(
    run: str,
    dataset_dir: str,
    split: str,
    holdout_dirs: Sequence[str],
    train_dirs: Sequence[str],
    values: Mapping[str, Any],
) -> Extras:
    """:func:`prepare` for a preprocessed dataset (its ``split`` judged the model), with the
    table's ``export_formats`` and agreement thresholds from ``values``."""
    from components.bit import dataset as ds

    manifest = ds.read_manifest(dataset_dir)
    formats = exports.parse_formats(values.get("export_formats", ""))
    test = manifest.shard_paths(split, list(holdout_dirs) or [dataset_dir])
    train = manifest.shard_paths("train", list(train_dirs) or [dataset_dir]) if formats else []
    thresholds = {
        "float": values.get("export_agreement_float", 0.995),
        "int8": values.get("export_agreement_int8", 0.98),
    }
    return prepare(run, test, train, formats, thresholds)


PARITY_FILE = "extras.json"  # beside the files of an extras folder: parity and notes


def write(extras: Extras, folder: str) -> None:
    """Keep ``extras`` in a local folder (the export step's artifact) for push to read."""
    import json

    for rel, data in extras.files.items():
        path = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    record = {"parity": [dataclasses.asdict(p) for p in extras.parity], "notes": extras.notes}
    with open(os.path.join(folder, PARITY_FILE), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)


def read(folder: str) -> Extras:
    """What :func:`write` kept (nothing, for a folder without its record)."""
    import json

    try:
        with open(os.path.join(folder, PARITY_FILE), encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        return Extras({}, [], [])
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
            if rel != PARITY_FILE:
                with open(os.path.join(root, name), "rb") as f:
                    files[rel] = f.read()
    parity = [exports.Parity(**row) for row in record["parity"]]
    return Extras(files, parity, record["notes"])
