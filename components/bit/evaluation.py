"""Evaluation of an exported model, its report, and the gate that blesses it for serving.

The exported SavedModel itself is evaluated (the artifact that would be pushed), on the test
split (validation when there is none), streaming: every example counts, the last partial batch
too, and memory does not grow with the number of classes beyond a few vectors of that length.

The gate blesses a model only when it means something: it must beat the majority-class rate of
the evaluated split (a model at chance is never pushed), reach ``threshold`` when one is set,
and be no worse (within ``tolerance``) than the baseline — the given baseline, or by default
the newest version already under ``serving_root`` — both on the same data and on the data the
baseline was evaluated on (its model card's shards). The verdict names the rule that decided.
"""

from __future__ import annotations

import base64
import dataclasses
import heapq
import html
import json
import os
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from components.bit import dataset as ds
from components.bit import hyperrule, label_issues, params, storage
from components.bit.errors import BittuneError
from components.bit.plots import png_base64

ECE_BINS = 15
WORST_SHOWN = 16
MATRIX_CLASSES = 30  # classes shown in the confusion heat map (the most frequent ones)
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"


class EvaluationError(BittuneError):
    """Evaluation cannot run, with the reason."""


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What to evaluate on what, and how to gate it. Checked when made."""

    dataset_dir: str  # a preprocessed dataset (manifest.json)
    run: str  # a training output (or a SavedModel folder)
    output_dir: str | None = None  # metrics.json and report.html
    shard_dirs: tuple[str, ...] = ()  # where the shards are (default: the dataset folder)
    shard_uris: tuple[str, ...] = ()  # the storage URI of each of shard_dirs (default: itself)
    log_dir: str | None = None  # the run's TensorBoard logs (default: RUN/logs)
    split: str | None = None  # None: test, else validation
    baseline_model: str | None = None  # a model to beat; None or "": the newest served version
    serving_root: str | None = None
    blessing_threshold: float = 0.0  # minimum top-1 accuracy (0: only the relative rules)
    baseline_tolerance: float = 0.0  # how much worse than the baseline is still blessed
    batch_size: int = 64

    def __post_init__(self) -> None:
        params.require_fields(self)
        if self.split not in (None, *ds.SPLITS):
            raise EvaluationError(f"split must be one of {', '.join(ds.SPLITS)}")

    @classmethod
    def from_params(cls, values: Mapping[str, Any], **fields: Any) -> EvalConfig:
        """The config from table values (component inputs, command-line options) and paths."""
        return params.config_from(cls, values, **fields)


@dataclasses.dataclass
class Tally:
    """Streaming counts from which every metric is computed."""

    num_classes: int
    examples: int = 0
    correct: int = 0
    top5: int = 0
    loss_sum: float = 0.0
    pairs: dict[tuple[int, int], int] = dataclasses.field(default_factory=dict)
    bin_count: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(ECE_BINS))
    bin_confidence: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(ECE_BINS))
    bin_correct: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(ECE_BINS))

    def add(self, probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Count a batch; return its predicted classes."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        predicted = probabilities.argmax(axis=1)
        k = min(5, self.num_classes)
        top = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
        self.examples += len(labels)
        self.correct += int((predicted == labels).sum())
        self.top5 += int((top == labels[:, None]).any(axis=1).sum())
        true_p = probabilities[np.arange(len(labels)), labels]
        self.loss_sum += float(-np.log(np.clip(true_p, 1e-12, 1.0)).sum())
        for t, p in zip(labels.tolist(), predicted.tolist(), strict=True):
            self.pairs[(t, p)] = self.pairs.get((t, p), 0) + 1
        confidence = probabilities.max(axis=1)
        bins = np.minimum((confidence * ECE_BINS).astype(int), ECE_BINS - 1)
        np.add.at(self.bin_count, bins, 1)
        np.add.at(self.bin_confidence, bins, confidence)
        np.add.at(self.bin_correct, bins, (predicted == labels).astype(float))
        return predicted


def metrics_from(tally: Tally, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, top-5, loss, per-class precision/recall/F1/support, confusion pairs, ECE, and
    the majority-class rate (the accuracy of always guessing the most frequent class)."""
    n = max(tally.examples, 1)
    classes = len(labels)
    support = np.zeros(classes, np.int64)
    predicted = np.zeros(classes, np.int64)
    hits = np.zeros(classes, np.int64)
    for (t, p), count in tally.pairs.items():
        support[t] += count
        predicted[p] += count
        if t == p:
            hits[t] += count
    precision = np.divide(hits, predicted, out=np.zeros(classes), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros(classes), where=support > 0)
    f1 = np.divide(
        2 * precision * recall,
        precision + recall,
        out=np.zeros(classes),
        where=(precision + recall) > 0,
    )
    ece = float(np.abs(tally.bin_correct - tally.bin_confidence).sum() / n)
    present = support > 0
    return {
        "examples": tally.examples,
        "accuracy": tally.correct / n,
        "top5_accuracy": tally.top5 / n,
        "top5_k": min(5, classes),
        "loss": tally.loss_sum / n,
        "expected_calibration_error": ece,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "majority_rate": float(support.max() / n) if classes else 0.0,
        "per_class": [
            {
                "class": labels[i],
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in range(classes)
        ],
        "confusion": [[t, p, c] for (t, p), c in sorted(tally.pairs.items())],
    }


def frequent_classes(metrics: Mapping[str, Any]) -> list[int]:
    """The (at most :data:`MATRIX_CLASSES`) classes with the most examples, in index order:
    the ones a confusion matrix shows so that it stays readable."""
    support = np.array([c["support"] for c in metrics["per_class"]])
    return sorted(np.argsort(-support, kind="stable")[:MATRIX_CLASSES].tolist())


def confusion_matrix(metrics: Mapping[str, Any], classes: Sequence[int]) -> np.ndarray:
    """The dense confusion matrix restricted to ``classes`` (rows: true, columns: predicted)."""
    position = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), np.int64)
    for t, p, count in metrics["confusion"]:
        if t in position and p in position:
            matrix[position[t], position[p]] += count
    return matrix


# ---------------------------------------------------------------------------------------------
# Running a model over a split


@dataclasses.dataclass
class Scored:
    """A split through a model: every metric's counts, those without the leaked examples
    (held out, with a near-duplicate in training), and the most confident mistakes."""

    tally: Tally
    unleaked: Tally
    worst: list[tuple[float, int, bytes, int, int]]
    probabilities: np.ndarray  # (examples, classes), float32, in record order
    labels: np.ndarray
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
    seen: dict[str, list] = {"probabilities": [], "labels": [], "uris": [], "sha256": []}
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


def count_remapped(
    serve, paths: Sequence[str], label_map: np.ndarray, batch_size: int = 64
) -> np.ndarray:
    """[correct, scored, skipped] of a model on records whose labels index another class
    list: ``label_map`` takes each to the model's class index, or -1 for a class the model
    does not predict (those examples are skipped and counted)."""
    from components.bit.inputs import encoded_dataset, tf

    counts = np.zeros(3, np.int64)
    for encoded, labels, _, _ in encoded_dataset(paths, batch_size):
        mapped = label_map[labels.numpy()]
        known = np.flatnonzero(mapped >= 0)
        counts[2] += len(mapped) - len(known)
        if len(known):
            out = serve(image_bytes=tf.gather(encoded, known))
            predicted = out["probabilities"].numpy().argmax(axis=1)
            counts[:2] += (int((predicted == mapped[known]).sum()), len(known))
    return counts


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


def on_served_data(challenger, served, served_uri: str, batch_size: int) -> dict[str, Any]:
    """Both models' accuracy on the data the served version was evaluated on (its card's
    ``data.evaluated_shards``, copied one shard at a time), on the examples of classes both
    predict; or a note saying why there is no such figure."""
    import tempfile

    from components.bit import serving

    card = serving.read_card(served_uri) or {}
    shards = (card.get("data") or {}).get("evaluated_shards") or []
    if not shards:
        return {"note": f"{served_uri}'s model card names no evaluated data: not compared"}
    if list(card.get("classes") or []) != served.labels:
        return {"note": f"{served_uri}'s card and model list different classes: not compared"}
    mine = np.array([challenger.labels.index(c) if c in challenger.labels else -1
                     for c in served.labels])  # fmt: skip
    theirs = np.where(mine >= 0, np.arange(len(mine)), -1)
    counts = np.zeros((2, 3), np.int64)
    for uri in shards:
        with tempfile.TemporaryDirectory(prefix="bittune-served-data-") as folder:
            try:
                path = _local_shard(uri, folder)
            except (FileNotFoundError, storage.StorageError, OSError) as exc:
                return {"note": f"{served_uri}'s evaluated data cannot be read ({exc}): "
                                "not compared"}  # fmt: skip
            counts[0] += count_remapped(challenger.serve, [path], mine, batch_size)
            counts[1] += count_remapped(served.serve, [path], theirs, batch_size)
    (correct, examples, skipped), (served_correct, _, _) = counts.tolist()
    return {
        "served": served_uri,
        "shards": list(shards),
        "examples": examples,
        "skipped": skipped,  # of classes the challenger does not predict
        "accuracy": correct / max(examples, 1),
        "served_accuracy": served_correct / max(examples, 1),
    }


# ---------------------------------------------------------------------------------------------
# The gate


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """An evaluation: the metrics, the comparison, the verdict (``metrics.json`` without the
    thumbnails of the worst mistakes)."""

    split: str
    labels: list[str]
    metrics: dict[str, Any]
    baseline: str | None  # the model compared with
    baseline_accuracy: float | None
    blessed: bool
    reason: str
    rules: list[dict[str, Any]]
    worst: list[dict[str, Any]]  # the most confident mistakes, with base64 thumbnails
    label_issues: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # ranked
    shards: list[str] = dataclasses.field(default_factory=list)  # evaluated, storage URIs
    issue_thumbnails: dict[int, str] = dataclasses.field(default_factory=dict)  # by index

    def to_dict(self) -> dict[str, Any]:
        public = dataclasses.asdict(self)
        del public["worst"], public["issue_thumbnails"]
        public["label_issues"] = self.label_issues[: label_issues.SHOWN]
        public["label_issue_count"] = len(self.label_issues)
        return public


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether the model is blessed, the sentence saying why, and each rule's outcome."""

    blessed: bool
    reason: str
    rules: list[dict[str, Any]]


def gate(
    accuracy: float,
    *,
    majority: float,
    blessing_threshold: float = 0.0,
    baseline: float | None = None,
    baseline_tolerance: float = 0.0,
    baseline_name: str = "the baseline",
    served_data: tuple[float, float] | None = None,
) -> Verdict:
    """Bless when every rule passes: beat the majority-class rate; reach
    ``blessing_threshold`` (when above 0); be within ``baseline_tolerance`` of the baseline's
    accuracy (when there is one), on this data and, given ``served_data`` (this model's and
    the baseline's accuracy there), on the data the baseline was evaluated on."""
    threshold, tolerance = blessing_threshold, baseline_tolerance
    rules = []

    def rule(name: str, passed: bool, text: str) -> None:
        rules.append({"rule": name, "passed": passed, "detail": text})

    if majority < 1.0:
        beats = accuracy > majority
        verb = "beats" if beats else "does not beat"
        text = f"accuracy {accuracy:.4f} {verb} the majority-class rate {majority:.4f}"
        rule("majority", beats, text)
    else:  # one class only: nothing to beat, and nothing this rule can judge
        rule("majority", True, "the evaluated split holds one class: no majority rate to beat")
    if threshold > 0:
        reached = accuracy >= threshold
        verb = ">= threshold" if reached else "is below the threshold"
        rule("threshold", reached, f"accuracy {accuracy:.4f} {verb} {threshold:.4f}")
    if baseline is not None:
        name = f"{baseline_name}'s"
        rule("baseline", *_within(f"accuracy {accuracy:.4f}", accuracy, baseline, name, tolerance))
    if served_data is not None:
        mine, theirs = served_data
        there = f"on {baseline_name}'s own test data accuracy {mine:.4f}"
        rule("served data", *_within(there, mine, theirs, "its", tolerance))
    failed = [r for r in rules if not r["passed"]]
    if failed:
        return Verdict(False, f"{failed[0]['detail']} (rule: {failed[0]['rule']})", rules)
    return Verdict(True, "; ".join(r["detail"] for r in rules), rules)


def _within(
    what: str, mine: float, theirs: float, whose: str, tolerance: float
) -> tuple[bool, str]:
    """Whether ``mine`` is no worse than ``theirs`` by more than ``tolerance``, and the words."""
    if mine >= theirs - tolerance:
        return True, f"{what} is within {tolerance:.4f} of {whose} {theirs:.4f}"
    return False, f"{what} is worse than {whose} {theirs:.4f} by more than {tolerance:.4f}"


def _storage_uri(path: str, config: EvalConfig) -> str:
    """Where a shard the step read is in storage (a pipeline step reads artifacts at local
    paths; the model card keeps the URIs the next run can read)."""
    for folder, uri in zip(config.shard_dirs, config.shard_uris, strict=False):
        if path.startswith(folder.rstrip("/") + "/"):
            return uri.rstrip("/") + path[len(folder.rstrip("/")) :]
    return path if "://" in path else os.path.abspath(path)


def _baseline(config: EvalConfig) -> str | None:
    """The model to compare with: the given one, or the newest version being served."""
    from components.bit import serving

    if config.baseline_model:
        return config.baseline_model
    if config.serving_root:
        return serving.latest_version(config.serving_root)
    return None


def _against(
    baseline_uri: str | None, model, labels: Sequence[str], paths: Sequence[str], batch_size: int
) -> tuple[float | None, str, dict[str, Any]]:
    """The baseline's accuracy on this data (None when it predicts other classes, with a
    note saying so), and both models on the baseline's own test data (on_served_data)."""
    from components.bit import serving

    if not baseline_uri:
        return None, "", {}
    other, baseline, note = serving.load(baseline_uri), None, ""
    if other.labels == list(labels):
        theirs = run_model(other.serve, paths, len(labels), batch_size, keep_probabilities=False)
        baseline = metrics_from(theirs.tally, labels)["accuracy"]
    else:
        note = f"; {baseline_uri} predicts other classes: not compared on this data"
    return baseline, note, on_served_data(model, other, baseline_uri, batch_size)


def evaluate(config: EvalConfig) -> EvalResult:
    """Evaluate, gate, and (with an output folder) write metrics.json and report.html."""
    from components.bit import serving

    manifest = ds.read_manifest(config.dataset_dir)
    split = config.split or manifest.evaluation_split()
    if not manifest.examples(split):
        raise EvaluationError(f"the dataset has no {split} examples to evaluate on")
    paths = manifest.shard_paths(split, list(config.shard_dirs) or [config.dataset_dir])
    labels = list(manifest.labels)
    model = serving.load(config.run)
    leaked = manifest.leaked.get(split, [])
    size = manifest.examples(split) * len(labels)
    searched = size <= label_issues.MAX_PROBABILITIES
    scored = run_model(model.serve, paths, len(labels), config.batch_size, leaked, searched)
    metrics = metrics_from(scored.tally, labels)
    metrics["without_leaked"] = {
        "examples": scored.unleaked.examples,
        "leaked": scored.tally.examples - scored.unleaked.examples,
        "accuracy": scored.unleaked.correct / max(scored.unleaked.examples, 1),
    }
    if metrics["examples"] != manifest.examples(split):
        raise EvaluationError(
            f"evaluated {metrics['examples']} examples, the manifest lists "
            f"{manifest.examples(split)}"
        )
    issues = []
    if searched:
        found = label_issues.issues(
            scored.labels, scored.probabilities, labels, scored.uris, scored.sha256
        )
        issues = [dataclasses.asdict(issue) for issue in found]
    else:
        metrics["label_issues_skipped"] = (
            f"{manifest.examples(split):,} examples x {len(labels):,} classes of probabilities "
            f"exceed the {label_issues.MAX_PROBABILITIES:,} kept for the label-issue search"
        )
    baseline_uri = _baseline(config)
    baseline, note, served = _against(baseline_uri, model, labels, paths, config.batch_size)
    if baseline_uri:
        metrics["served_data"] = served
    verdict = gate(
        metrics["accuracy"],
        majority=metrics["majority_rate"],
        blessing_threshold=config.blessing_threshold,
        baseline=baseline,
        baseline_tolerance=config.baseline_tolerance,
        baseline_name=baseline_uri or "the baseline",
        served_data=(served["accuracy"], served["served_accuracy"])
        if served.get("examples")
        else None,
    )
    result = EvalResult(
        split=split,
        labels=labels,
        metrics=metrics,
        baseline=baseline_uri,
        baseline_accuracy=baseline,
        blessed=verdict.blessed,
        reason=verdict.reason + note,
        rules=verdict.rules,
        worst=[
            {
                "image": base64.b64encode(data).decode(),
                "true": labels[t],
                "predicted": labels[p],
                "confidence": conf,
            }
            for conf, _, data, t, p in scored.worst
        ],
        label_issues=issues,
        shards=[_storage_uri(path, config) for path in paths],
        issue_thumbnails=thumbnails_at(paths, [i["index"] for i in issues[: label_issues.SHOWN]]),
    )
    if config.output_dir:
        write_outputs(result, config, manifest)
    return result


# ---------------------------------------------------------------------------------------------
# Outputs


def write_outputs(result: EvalResult, config: EvalConfig, manifest: ds.Manifest) -> None:
    storage.write_text(
        storage.join(config.output_dir, METRICS_FILE),
        json.dumps(result.to_dict(), indent=1, ensure_ascii=False) + "\n",
    )
    found = [label_issues.LabelIssue(**issue) for issue in result.label_issues]
    storage.write_text(
        storage.join(config.output_dir, label_issues.ISSUES_FILE),
        label_issues.to_json(found, result.split, result.metrics["examples"]),
    )
    logs = config.log_dir or os.path.join(config.run, "logs")
    page = html_report(result, training_curves(logs), _rule_of(config.run), manifest)
    storage.write_text(storage.join(config.output_dir, REPORT_FILE), page)


def _rule_of(run: str) -> hyperrule.HyperRule | None:
    path = os.path.join(run, ds.HYPERRULE_FILE)
    return hyperrule.load(path) if os.path.exists(path) else None


def training_curves(log_dir: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Scalars from a run's TensorBoard logs: {run: {tag: [(step, value)]}}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for run in ("train", "validation"):
        folder = os.path.join(log_dir, run)
        if not os.path.isdir(folder):
            continue
        accumulator = EventAccumulator(folder, size_guidance={"tensors": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("tensors", []):
            curves.setdefault(run, {})[tag] = [
                (e.step, float(np.asarray(tensor_util.make_ndarray(e.tensor_proto))))
                for e in accumulator.Tensors(tag)
            ]
    return curves


def _img(alt: str, b64: str, kind: str = "png") -> str:
    return f"<img alt='{alt}' src='data:image/{kind};base64,{b64}'>"


def _summary_section(result: Mapping[str, Any]) -> str:
    esc, metrics = html.escape, result.metrics
    verdict = "BLESSED" if result.blessed else "NOT BLESSED"
    rows = [
        ("examples", metrics["examples"]),
        ("top-1 accuracy", metrics["accuracy"]),
        (f"top-{metrics['top5_k']} accuracy", metrics["top5_accuracy"]),
        ("loss", metrics["loss"]),
        ("macro F1", metrics["macro_f1"]),
        ("expected calibration error", metrics["expected_calibration_error"]),
        ("majority-class rate", metrics["majority_rate"]),
        ("leaked examples (near-duplicate in training)", metrics["without_leaked"]["leaked"]),
        ("top-1 accuracy without leaked examples", metrics["without_leaked"]["accuracy"]),
    ]
    cells = "".join(
        f"<tr><th>{esc(k)}</th><td>{v:.4f}</td></tr>"
        if isinstance(v, float)
        else f"<tr><th>{esc(k)}</th><td>{v}</td></tr>"
        for k, v in rows
    )
    gate_rows = "".join(
        f"<li>{'passed' if r['passed'] else 'FAILED'} ({esc(r['rule'])}): {esc(r['detail'])}</li>"
        for r in result.rules
    )
    return (
        f"<h1>Evaluation on the {esc(result.split)} split</h1>"
        f"<p class='verdict'><b>{verdict}</b>: {esc(result.reason)}</p>"
        f"<ul>{gate_rows}</ul><table>{cells}</table>"
    )


def _served_section(result: EvalResult) -> str:
    """This model and the served one, on this data and on the served model's own test data."""
    if not result.baseline:
        return ""
    esc, served = html.escape, result.metrics.get("served_data") or {}
    rows, notes = [], []
    if result.baseline_accuracy is not None:
        rows.append((f"this {result.split} split", result.metrics["accuracy"],
                     result.baseline_accuracy, result.metrics["examples"]))  # fmt: skip
    else:
        notes.append("the served model predicts other classes: not compared on this data")
    if served.get("examples"):
        rows.append(("the served model's test data", served["accuracy"],
                     served["served_accuracy"], served["examples"]))  # fmt: skip
        if served["skipped"]:
            notes.append(f"{served['skipped']:,} of its examples are of classes this model "
                         "does not predict: left out for both")  # fmt: skip
    elif served.get("note"):
        notes.append(served["note"])
    cells = "".join(
        f"<tr><td>{esc(name)}</td><td>{mine:.4f}</td><td>{theirs:.4f}</td><td>{n:,}</td></tr>"
        for name, mine, theirs, n in rows
    )
    table = (
        "<table><tr><th>data</th><th>this model</th><th>served model</th><th>examples</th></tr>"
        f"{cells}</table>"
        if rows
        else ""
    )
    return f"<h2>Against the served model</h2><p>{esc(result.baseline)}</p>{table}" + "".join(
        f"<p>{esc(n)}</p>" for n in notes
    )


def _curves_section(curves: Mapping[str, Mapping[str, list]]) -> str:
    if not curves:
        return ""

    def draw(fig, ax):
        for run, tags in curves.items():
            for tag in ("loss", "accuracy"):
                if tag in tags:
                    steps, values = zip(*tags[tag], strict=True)
                    ax.plot(steps, values, label=f"{run} {tag}")
        ax.set_xlabel("step")
        ax.set_title("Training curves")
        ax.legend()

    return f"<h2>Training</h2>{_img('training curves', png_base64(draw, (6, 4)))}"


def _matrix_section(result: Mapping[str, Any]) -> str:
    metrics, labels = result.metrics, result.labels
    shown = frequent_classes(metrics)
    matrix = confusion_matrix(metrics, shown)

    def draw(fig, ax):
        image = ax.imshow(matrix, cmap="Blues")
        names = [labels[i] for i in shown]
        ax.set_xticks(range(len(shown)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(shown)), names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        fig.colorbar(image)

    note = "" if len(shown) == len(labels) else f" ({len(shown)} most frequent classes)"
    return f"<h2>Confusion matrix{note}</h2>{_img('confusion matrix', png_base64(draw, (7, 6)))}"


def _per_class_section(metrics: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(c['class'])}</td><td>{c['precision']:.3f}</td>"
        f"<td>{c['recall']:.3f}</td><td>{c['f1']:.3f}</td><td>{c['support']}</td></tr>"
        for c in metrics["per_class"]
    )
    return (
        "<h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th>"
        f"<th>F1</th><th>support</th></tr>{rows}</table>"
    )


def _issues_section(result: EvalResult) -> str:
    """The likely label errors: thumbnails, given vs predicted label, and the score."""
    count, esc = len(result.label_issues), html.escape
    skipped = result.metrics.get("label_issues_skipped")
    if skipped:
        return f"<h2>Likely label errors</h2><p>Not searched: {esc(skipped)}.</p>"
    intro = (
        f"<h2>Likely label errors ({count:,})</h2><p>Confident learning (cleanlab) on the "
        f"{esc(result.split)} split's out-of-sample probabilities, lowest probability of the "
        f"given label first. The full list is {label_issues.ISSUES_FILE}: review it and pass "
        "it back as <code>--exclude-list</code> to leave those images out of the next run.</p>"
    )
    cells = "".join(
        f"<figure>{_thumb(result.issue_thumbnails.get(i['index'], ''))}<figcaption>given "
        f"<b>{esc(i['given'])}</b>, predicted {esc(i['predicted'])}<br>p(given) "
        f"{i['label_quality']:.3f}<br>{esc(i['uri'].rsplit('/', 1)[-1])}</figcaption></figure>"
        for i in result.label_issues[: label_issues.SHOWN]
    )
    return intro + (f"<div class='grid'>{cells}</div>" if cells else "")


def _thumb(b64: str) -> str:
    return _img("", b64, _image_kind(b64)) if b64 else ""


def _mistakes_section(worst: Sequence[Mapping[str, Any]]) -> str:
    if not worst:
        return ""
    esc = html.escape
    cells = "".join(
        f"<figure>{_img('mistake', w['image'], _image_kind(w['image']))}<figcaption>true "
        f"{esc(w['true'])}<br>predicted {esc(w['predicted'])} ({w['confidence']:.2f})"
        "</figcaption></figure>"
        for w in worst
    )
    return f"<h2>Most confident mistakes</h2><div class='grid'>{cells}</div>"


def _dataset_section(manifest: ds.Manifest) -> str:
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(name)}</td><td>{split.examples}</td><td>{len(split.shards)}</td></tr>"
        for name, split in manifest.splits.items()
    )
    return (
        f"<h2>Dataset</h2><p>{manifest.num_classes} classes; source "
        f"{esc(str(manifest.source.get('uri')))}; {manifest.totals['rejected']} inputs rejected "
        f"in preprocessing.</p><table><tr><th>split</th><th>examples</th><th>shards</th></tr>"
        f"{rows}</table>"
    )


_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
    ".grid{display:flex;flex-wrap:wrap}figure{margin:4px;text-align:center;font-size:12px}"
    "figure img{width:96px;height:96px;image-rendering:pixelated;object-fit:contain}"
)


def html_report(
    result: EvalResult,
    curves: Mapping[str, Mapping[str, list]],
    rule: hyperrule.HyperRule | None,
    manifest: ds.Manifest,
) -> str:
    """A self-contained page: the verdict, curves, confusion heat map, per-class table, worst
    mistakes, the HyperRule and the dataset summary."""
    parts = [
        _summary_section(result),
        _served_section(result),
        _curves_section(curves),
        _matrix_section(result),
        _per_class_section(result.metrics),
        _mistakes_section(result.worst),
        _issues_section(result),
    ]
    if rule is not None:
        parts.append(
            f"<h2>BiT-HyperRule</h2><pre>{html.escape(hyperrule.format_table(rule))}</pre>"
        )
    parts.append(_dataset_section(manifest))
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>bittune evaluation</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def _image_kind(b64: str) -> str:
    return "png" if base64.b64decode(b64[:12]).startswith(b"\x89PNG") else "jpeg"


def kfp_confusion_matrix(result: EvalResult) -> tuple[list[str], list[list[int]]]:
    """(class names, matrix) for KFP's ClassificationMetrics, limited to the most frequent
    classes so that the UI stays readable."""
    metrics = result.metrics
    shown = frequent_classes(metrics)
    matrix = confusion_matrix(metrics, shown)
    return [result.labels[i] for i in shown], matrix.tolist()
