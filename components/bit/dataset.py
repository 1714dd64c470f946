"""The contracts the stages meet at: the analysis folder and the preprocessed dataset.

* **Analysis folder** (written by analysis, read by preprocessing): ``stats.json``,
  ``hyperrule.json``, ``items.jsonl`` (every listed item with its split, header facts and
  flag), ``report.md``, ``report.html``.
* **Dataset** (written by preprocessing, read by training and evaluation): ``manifest.json``
  (a :class:`Manifest`: labels, per split the shards by *name* with their counts, bytes and
  SHA-256, and the HyperRule the data was prepared for), ``labels.json``, ``rejects.json``, and
  the TFRecord shards (schema: :mod:`components.bit.tfrecords`). Shards are named relative to
  the dataset, never by absolute path or another step's URI: a dataset folder can move, and on
  a cluster the shards are found in whatever folders the step was given
  (:meth:`Manifest.shard_paths`). ``manifest.json`` is written last: a folder without it is not
  a complete dataset.

No TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from components.bit import hyperrule, storage
from components.bit.errors import BittuneError

STATS_FILE = "stats.json"
HYPERRULE_FILE = "hyperrule.json"
ITEMS_FILE = "items.jsonl"
REPORT_MARKDOWN = "report.md"
REPORT_HTML = "report.html"

SCHEMA = "bittune.dataset/v2"
MANIFEST_FILE = "manifest.json"
LABELS_FILE = "labels.json"
REJECTS_FILE = "rejects.json"
SPLITS = ("train", "validation", "test")


class DatasetError(BittuneError):
    """An analysis or dataset folder that is missing, incomplete or of another version."""


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def _json(text: str) -> Any:
    return json.loads(text)


def _dumps(data: Any, indent: int | None = 2) -> str:
    return json.dumps(data, indent=indent, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------------------------
# The analysis folder


@dataclasses.dataclass(frozen=True)
class Analysis:
    """What analysis wrote: the statistics, every item's row, and the HyperRule."""

    stats: dict[str, Any]
    items: list[dict[str, Any]]
    rule: hyperrule.HyperRule


def _read(folder: str, name: str, what: str, hint: str) -> str:
    try:
        return storage.read_text(storage.join(folder, name))
    except (FileNotFoundError, NotADirectoryError, storage.StorageError):
        raise DatasetError(f"{folder} is not {what}: no {name} ({hint})") from None


def read_analysis(folder: str) -> Analysis:
    """Read an analysis folder; a clear error names what is missing."""
    what, hint = "an analysis folder", "run `bittune analyze` first"
    stats = _json(_read(folder, STATS_FILE, what, hint))
    lines = [line for line in _read(folder, ITEMS_FILE, what, hint).splitlines() if line]
    rule = hyperrule.from_dict(_json(_read(folder, HYPERRULE_FILE, what, hint)))
    return Analysis(stats, _json("[" + ",".join(lines) + "]"), rule)  # one parse: fast


def write_analysis(folder: str, stats: Mapping[str, Any], rows, rule: hyperrule.HyperRule):
    """Write stats.json, hyperrule.json and items.jsonl (the reports are written beside them)."""
    storage.write_text(storage.join(folder, STATS_FILE), _dumps(stats))
    storage.write_text(storage.join(folder, HYPERRULE_FILE), rule.to_json())
    lines = (json.dumps(row, ensure_ascii=False) for row in rows)
    storage.write_text(storage.join(folder, ITEMS_FILE), "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# The dataset


@dataclasses.dataclass(frozen=True)
class Shard:
    """One TFRecord file of a split, by name relative to the dataset."""

    name: str
    examples: int
    bytes: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class Split:
    """A split's examples: totals, per class, inputs rejected, and its shards."""

    examples: int
    bytes: int
    per_class: dict[str, int]
    rejected: int
    shards: tuple[Shard, ...]


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A complete preprocessed dataset, as ``manifest.json`` describes it."""

    labels: tuple[str, ...]
    splits: dict[str, Split]
    rule: hyperrule.HyperRule  # the HyperRule the images were prepared (pre-resized) for
    source: dict[str, Any]
    totals: dict[str, int]
    preresize: dict[str, Any]
    few_shot: int | None = None
    seed: int = 0
    shard_limits: dict[str, int] = dataclasses.field(default_factory=dict)
    # held-out split -> SHA-256 of its examples with a near-duplicate in training (analysis)
    leaked: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    profile: dict[str, Any] = dataclasses.field(default_factory=dict)  # drift.profile

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def examples(self, split: str) -> int:
        return self.splits[split].examples if split in self.splits else 0

    def evaluation_split(self) -> str:
        """The split a model is judged on: test, or validation when there is no test split."""
        return "test" if self.examples("test") else "validation"

    def shard_paths(self, split: str, roots: Sequence[str]) -> list[str]:
        """Where each of ``split``'s shards is: the first of ``roots`` (the dataset folder, or
        on a cluster the shard folders the step was given) that holds a file of that name."""
        if split not in self.splits:
            return []
        paths = []
        for shard in self.splits[split].shards:
            found = next(
                (p for p in (storage.join(r, shard.name) for r in roots) if storage.exists(p)),
                None,
            )
            if found is None:
                where = ", ".join(roots)
                raise DatasetError(f"shard {shard.name} of the dataset is not in {where}")
            paths.append(found)
        return paths

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "labels": list(self.labels),
            "num_classes": self.num_classes,
            "splits": {
                name: {
                    **dataclasses.asdict(split),
                    "shards": [dataclasses.asdict(s) for s in split.shards],
                }
                for name, split in self.splits.items()
            },
            "totals": dict(self.totals),
            "preresize": dict(self.preresize),
            "hyperrule": self.rule.to_dict(),
            "source": dict(self.source),
            "few_shot": self.few_shot,
            "seed": self.seed,
            "shard_limits": dict(self.shard_limits),
            "leaked": {split: list(keys) for split, keys in self.leaked.items()},
            "profile": dict(self.profile),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        if data.get("schema") != SCHEMA:
            raise DatasetError(
                f"dataset schema {data.get('schema')!r} is not {SCHEMA!r}: preprocess the data "
                "again with this version of bittune"
            )
        splits = {
            name: Split(
                examples=entry["examples"],
                bytes=entry["bytes"],
                per_class=dict(entry["per_class"]),
                rejected=entry["rejected"],
                shards=tuple(Shard(**shard) for shard in entry["shards"]),
            )
            for name, entry in data["splits"].items()
        }
        return cls(
            labels=tuple(data["labels"]),
            splits=splits,
            rule=hyperrule.from_dict(data["hyperrule"]),
            source=dict(data["source"]),
            totals=dict(data["totals"]),
            preresize=dict(data["preresize"]),
            few_shot=data.get("few_shot"),
            seed=data.get("seed", 0),
            shard_limits=dict(data.get("shard_limits", {})),
            leaked={split: list(keys) for split, keys in data.get("leaked", {}).items()},
            profile=dict(data.get("profile", {})),
        )


def read_manifest(folder: str) -> Manifest:
    """The manifest of a complete dataset folder; a clear error otherwise."""
    text = _read(folder, MANIFEST_FILE, "a complete dataset", "run `bittune preprocess` first")
    try:
        return Manifest.from_dict(_json(text))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{folder}/{MANIFEST_FILE} is damaged ({exc})") from None


def write_dataset_files(folder: str, manifest: Manifest, rejects: Sequence[Mapping]) -> None:
    """labels.json, rejects.json, then manifest.json (last: it marks the dataset complete)."""
    labels = list(manifest.labels)
    index = {label: i for i, label in enumerate(labels)}
    storage.write_text(
        storage.join(folder, LABELS_FILE), _dumps({"labels": labels, "index": index})
    )
    storage.write_text(storage.join(folder, REJECTS_FILE), _dumps(list(rejects), indent=1))
    storage.write_text(storage.join(folder, MANIFEST_FILE), _dumps(manifest.to_dict()))
