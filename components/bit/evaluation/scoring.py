"""Running models over data: a split through the model being evaluated (every metric's counts,
each example's correctness for the paired comparison, the most confident mistakes), and both
models on the served model's own test data (its model card names the shards it was judged on).
"""

from __future__ import annotations

import base64
import dataclasses
import heapq
import os
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from components.bit import storage
from components.bit.errors import BittuneError
from components.bit.evaluation.metrics import Tally
from components.bit.evaluation.stats import Paired

WORST_SHOWN = 16


class EvaluationError(BittuneError):
    """Evaluation cannot run, with the reason."""


@dataclasses.dataclass
class Scored:
    """A split through a model: every metric's counts, those without the leaked examples
    (held out, with a near-duplicate in training), and the most confident mistakes."""

    tally: Tally
    unleaked: Tally
    worst: list[tuple[float, int, bytes, int, int]]
    probabilities: np.ndarray  # (examples, classes), float32, in record order
    labels: np.ndarray
    correct: np.ndarray  # bool per example, in record order: the paired comparison's input
    uris: list[str]
    sha256: list[str]


def run_model(
    serve,
    paths: Sequence[str],
    num_classes: int,
    batch_size: int = 64,
    leaked: Collection[str] = (),
    keep_probabilities: bool = True,
) -> Scored:
    """Stream the split's records through a serving function (keeping every example's
    probabilities for the label-issue search unless told not to)."""
    from components.bit.inputs import encoded_dataset

    tally, unleaked = Tally(num_classes), Tally(num_classes)
    leaked = {key.encode() for key in leaked}
    worst: list[tuple[float, int, bytes, int, int]] = []  # min-heap on wrong confidence
    seen: dict[str, list] = {"probabilities": [], "labels": [], "correct": [], "uris": [],
                             "sha256": []}  # fmt: skip
    for encoded, labels, uris, sha256 in encoded_dataset(paths, batch_size):
        out = serve(image_bytes=encoded)
        probabilities = out["probabilities"].numpy()
        if probabilities.shape[1] != num_classes:
            raise EvaluationError(
                f"the model predicts {probabilities.shape[1]} classes, the data has {num_classes}"
            )
        labels = labels.numpy()
        if keep_probabilities:
            seen["probabilities"].append(probabilities.astype(np.float32))
        seen["labels"].append(labels)
        seen["uris"] += [u.decode("utf-8") for u in uris.numpy().tolist()]
        seen["sha256"] += [h.decode() for h in sha256.numpy().tolist()]
        clean = np.array([key not in leaked for key in sha256.numpy().tolist()], dtype=bool)
        if clean.any():
            unleaked.add(probabilities[clean], labels[clean])
        predicted = tally.add(probabilities, labels)
        seen["correct"].append(predicted == labels)
        for i in np.flatnonzero(predicted != labels):
            item = (
                float(probabilities[i].max()),
                tally.examples + int(i),
                encoded[i].numpy(),
                int(labels[i]),
                int(predicted[i]),
            )
            if len(worst) < WORST_SHOWN:
                heapq.heappush(worst, item)
            else:
                heapq.heappushpop(worst, item)
    return Scored(
        tally,
        unleaked,
        sorted(worst, reverse=True),
        np.concatenate(seen["probabilities"] or [np.zeros((0, num_classes), np.float32)]),
        np.concatenate(seen["labels"] or [np.zeros(0, np.int64)]),
        np.concatenate(seen["correct"] or [np.zeros(0, bool)]),
        seen["uris"],
        seen["sha256"],
    )


def thumbnails_at(paths: Sequence[str], indices: Sequence[int]) -> dict[int, str]:
    """Base64 encoded images of the records at ``indices`` (record order)."""
    from components.bit.inputs import encoded_dataset

    wanted, found = set(indices), {}
    if not wanted:
        return found
    for index, (encoded, *_) in enumerate(encoded_dataset(paths, 1).unbatch()):
        if index in wanted:
            found[index] = base64.b64encode(encoded.numpy()).decode()
            if len(found) == len(wanted):
                break
    return found


# ---------------------------------------------------------------------------------------------
# The served model's own test data: the challenger must not get worse where the served model
# was judged (its model card names the shards it was evaluated on).


def score_remapped(
    serve, paths: Sequence[str], label_map: np.ndarray, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray, int]:
    """A model on records whose labels index another class list: ``label_map`` takes each to
    the model's class index, or -1 for a class the model does not predict (those examples are
    skipped and counted). Returns whether each scored example was right (record order), its
    record label, and the number skipped."""
    from components.bit.inputs import encoded_dataset, tf

    right, labels, skipped = [], [], 0
    for encoded, batch_labels, _, _ in encoded_dataset(paths, batch_size):
        original = batch_labels.numpy()
        mapped = label_map[original]
        known = np.flatnonzero(mapped >= 0)
        skipped += len(mapped) - len(known)
        if len(known):
            out = serve(image_bytes=tf.gather(encoded, known))
            right.append(out["probabilities"].numpy().argmax(axis=1) == mapped[known])
            labels.append(original[known])
    return (
        np.concatenate(right or [np.zeros(0, bool)]),
        np.concatenate(labels or [np.zeros(0, np.int64)]),
        skipped,
    )


def count_remapped(
    serve, paths: Sequence[str], label_map: np.ndarray, batch_size: int = 64
) -> np.ndarray:
    """[correct, scored, skipped] of :func:`score_remapped`."""
    right, _, skipped = score_remapped(serve, paths, label_map, batch_size)
    return np.array([int(right.sum()), len(right), skipped], np.int64)


def _local_shard(uri: str, folder: str) -> str:
    """A shard as a local file: a local path as it is, a gs:// object copied into ``folder``
    (TensorFlow's gs:// reader cannot be pointed at an emulator)."""
    if not storage.is_gcs(uri):
        if not os.path.exists(uri):
            raise FileNotFoundError(uri)
        return uri
    local = os.path.join(folder, uri.rsplit("/", 1)[-1])
    with open(local, "wb") as f:
        f.write(storage.read_bytes(uri))
    return local


def on_served_data(
    challenger, served, served_uri: str, batch_size: int
) -> tuple[dict[str, Any], Paired | None]:
    """Both models on the data the served version was evaluated on (its card's
    ``data.evaluated_shards``, copied one shard at a time), on the examples of classes both
    predict: a summary (or a note saying why there is no such figure) and the paired results."""
    import tempfile

    from components.bit import serving

    card = serving.read_card(served_uri) or {}
    shards = (card.get("data") or {}).get("evaluated_shards") or []
    if not shards:
        return {"note": f"{served_uri}'s model card names no evaluated data: not compared"}, None
    if list(card.get("classes") or []) != served.labels:
        return {"note": f"{served_uri}'s card and model list different classes: not compared"
                }, None  # fmt: skip
    mine = np.array([challenger.labels.index(c) if c in challenger.labels else -1
                     for c in served.labels])  # fmt: skip
    theirs = np.where(mine >= 0, np.arange(len(mine)), -1)
    found: dict[str, list] = {"mine": [], "theirs": [], "labels": []}
    skipped = 0
    for uri in shards:
        with tempfile.TemporaryDirectory(prefix="bittune-served-data-") as folder:
            try:
                path = _local_shard(uri, folder)
            except (FileNotFoundError, storage.StorageError, OSError) as exc:
                return {"note": f"{served_uri}'s evaluated data cannot be read ({exc}): "
                                "not compared"}, None  # fmt: skip
            right, labels, missed = score_remapped(challenger.serve, [path], mine, batch_size)
            found["mine"].append(right)
            found["labels"].append(labels)
            found["theirs"].append(score_remapped(served.serve, [path], theirs, batch_size)[0])
            skipped += missed
    paired = Paired(*(np.concatenate(found[k]) for k in ("mine", "theirs", "labels")),
                    classes=list(served.labels), where=f"{served_uri}'s own test data")  # fmt: skip
    examples = len(paired.mine)
    summary = {
        "served": served_uri,
        "shards": list(shards),
        "examples": examples,
        "skipped": skipped,  # of classes the challenger does not predict
        "accuracy": float(paired.mine.sum()) / max(examples, 1),
        "served_accuracy": float(paired.theirs.sum()) / max(examples, 1),
    }
    return summary, paired if examples else None
