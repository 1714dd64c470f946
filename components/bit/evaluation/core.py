"""The evaluation stage: its config, its result, and :func:`evaluate`, which scores the exported
model, compares it with the served one on the same examples and asks the gate."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from components.bit import dataset as ds
from components.bit import label_issues, params, storage
from components.bit.evaluation import rules as gates
from components.bit.evaluation.metrics import metrics_from
from components.bit.evaluation.scoring import (
    EvaluationError,
    Scored,
    on_served_data,
    run_model,
    thumbnails_at,
)
from components.bit.evaluation.stats import Paired

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"


@dataclasses.dataclass(frozen=True)
class EvalConfig(gates.GateSettings):
    """What to evaluate on what, and how to gate it (the gate's settings are inherited from
    :class:`rules.GateSettings`, keyword-only). Checked when made."""

    dataset_dir: str  # a preprocessed dataset (manifest.json)
    run: str  # a training output (or a SavedModel folder)
    output_dir: str | None = None  # metrics.json and report.html
    shard_dirs: tuple[str, ...] = ()  # where the shards are (default: the dataset folder)
    shard_uris: tuple[str, ...] = ()  # the storage URI of each of shard_dirs (default: itself)
    log_dir: str | None = None  # the run's TensorBoard logs (default: RUN/logs)
    split: str | None = None  # None: test, else validation
    baseline_model: str | None = None  # a model to beat; None or "": the newest served version
    serving_root: str | None = None
    batch_size: int = 64

    def __post_init__(self) -> None:
        params.require_fields(self)
        if self.split not in (None, *ds.SPLITS):
            raise EvaluationError(f"split must be one of {', '.join(ds.SPLITS)}")

    @classmethod
    def from_params(cls, values: Mapping[str, Any], **fields: Any) -> EvalConfig:
        """The config from table values (component inputs, command-line options) and paths."""
        return params.config_from(cls, values, **fields)

    def gate_settings(self) -> gates.GateSettings:
        return gates.GateSettings(**{name: getattr(self, name) for name in gates.PARAMETERS})


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
    rules: list[dict[str, Any]]  # each rule's outcome: rule, passed, detail, figures
    worst: list[dict[str, Any]]  # the most confident mistakes, with base64 thumbnails
    label_issues: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # ranked
    shards: list[str] = dataclasses.field(default_factory=list)  # evaluated, storage URIs
    issue_thumbnails: dict[int, str] = dataclasses.field(default_factory=dict)  # by index
    comparisons: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # paired
    gate_settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        public = dataclasses.asdict(self)
        del public["worst"], public["issue_thumbnails"]
        public["label_issues"] = self.label_issues[: label_issues.SHOWN]
        public["label_issue_count"] = len(self.label_issues)
        return public


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


@dataclasses.dataclass
class Against:
    """The model compared with: its figures on this data (when it predicts the same classes)
    and both models' results on its own test data."""

    accuracy: float | None = None
    metrics: dict[str, Any] | None = None  # on this data
    paired: Paired | None = None
    note: str = ""
    served: dict[str, Any] = dataclasses.field(default_factory=dict)
    served_paired: Paired | None = None


def _against(
    uri: str | None, model, scored: Scored, labels: Sequence[str], paths, config: EvalConfig
) -> Against:
    """Score the model at ``uri`` on the same examples as ``scored``, and both models on its
    own test data (:func:`scoring.on_served_data`)."""
    from components.bit import serving

    if not uri:
        return Against()
    other, found = serving.load(uri), Against()
    if other.labels == list(labels):
        theirs = run_model(other.serve, paths, len(labels), config.batch_size,
                           keep_probabilities=False)  # fmt: skip
        found.metrics = metrics_from(theirs.tally, labels)
        found.accuracy = found.metrics["accuracy"]
        if theirs.sha256 == scored.sha256:  # the same examples in the same order
            where = f"this {config.split or 'evaluated'} split"
            found.paired = Paired(scored.correct, theirs.correct, scored.labels, labels, where)
    else:
        found.note = f"; {uri} predicts other classes: not compared on this data"
    found.served, found.served_paired = on_served_data(model, other, uri, config.batch_size)
    return found


def _worst(scored: Scored, labels: Sequence[str]) -> list[dict[str, Any]]:
    return [
        {"image": base64.b64encode(data).decode(), "true": labels[t], "predicted": labels[p],
         "confidence": conf}
        for conf, _, data, t, p in scored.worst
    ]  # fmt: skip


def _label_issues(scored: Scored, labels, metrics, searched: bool, examples: int) -> list:
    if searched:
        found = label_issues.issues(
            scored.labels, scored.probabilities, labels, scored.uris, scored.sha256
        )
        return [dataclasses.asdict(issue) for issue in found]
    metrics["label_issues_skipped"] = (
        f"{examples:,} examples x {len(labels):,} classes of probabilities exceed the "
        f"{label_issues.MAX_PROBABILITIES:,} kept for the label-issue search"
    )
    return []


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
    size = manifest.examples(split) * len(labels)
    searched = size <= label_issues.MAX_PROBABILITIES
    leaked = manifest.leaked.get(split, [])
    scored = run_model(model.serve, paths, len(labels), config.batch_size, leaked, searched)
    metrics = metrics_from(scored.tally, labels)
    metrics["without_leaked"] = {
        "examples": scored.unleaked.examples,
        "leaked": scored.tally.examples - scored.unleaked.examples,
        "accuracy": scored.unleaked.correct / max(scored.unleaked.examples, 1),
    }
    if metrics["examples"] != manifest.examples(split):
        raise EvaluationError(f"evaluated {metrics['examples']} examples, the manifest lists "
                              f"{manifest.examples(split)}")  # fmt: skip
    issues = _label_issues(scored, labels, metrics, searched, manifest.examples(split))
    baseline_uri = _baseline(config)
    config = dataclasses.replace(config, split=split)
    other = _against(baseline_uri, model, scored, labels, paths, config)
    if baseline_uri:
        metrics["served_data"] = other.served
    evidence = gates.Evidence(
        metrics,
        settings=config.gate_settings(),
        baseline_name=baseline_uri or "the baseline",
        other_metrics=other.metrics,
        paired=other.paired,
        served_paired=other.served_paired,
    )
    verdict = gates.gate(evidence)
    result = EvalResult(
        split=split,
        labels=labels,
        metrics=metrics,
        baseline=baseline_uri,
        baseline_accuracy=other.accuracy,
        blessed=verdict.blessed,
        reason=verdict.reason + other.note,
        rules=verdict.rules,
        worst=_worst(scored, labels),
        label_issues=issues,
        shards=[_storage_uri(path, config) for path in paths],
        issue_thumbnails=thumbnails_at(paths, [i["index"] for i in issues[: label_issues.SHOWN]]),
        comparisons=gates.comparisons(verdict.rules),
        gate_settings=dataclasses.asdict(evidence.settings),
    )
    if config.output_dir:
        write_outputs(result, config, manifest)
    return result


def write_outputs(result: EvalResult, config: EvalConfig, manifest: ds.Manifest) -> None:
    """metrics.json, label_issues.json and report.html in the output folder."""
    from components.bit.evaluation import report

    storage.write_text(
        storage.join(config.output_dir, METRICS_FILE),
        json.dumps(result.to_dict(), indent=1, ensure_ascii=False, default=_plain) + "\n",
    )
    found = [label_issues.LabelIssue(**issue) for issue in result.label_issues]
    storage.write_text(
        storage.join(config.output_dir, label_issues.ISSUES_FILE),
        label_issues.to_json(found, result.split, result.metrics["examples"]),
    )
    logs = config.log_dir or os.path.join(config.run, "logs")
    page = report.html_report(result, report.training_curves(logs), report.rule_of(config.run),
                              manifest)  # fmt: skip
    storage.write_text(storage.join(config.output_dir, REPORT_FILE), page)


def _plain(value: Any) -> Any:
    """numpy scalars in figures, as JSON numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
