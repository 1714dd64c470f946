"""Pushing a blessed model: a new numbered version under the serving location, with a model card.

The layout is TF Serving's and Vertex AI's (:mod:`components.bit.serving`):
``SERVING_ROOT/<version>/`` holding the SavedModel plus ``model_card.json`` and
``model_card.md``. A version number is claimed atomically before anything is written (a claim
file created only if absent: an exclusive create locally, a generation precondition on gs://),
so two pushes never share a number; ``saved_model.pb`` is written last, so a server never sees a
version whose variables are still arriving.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from collections.abc import Mapping
from typing import Any

from components.bit import serving, serving_extras, storage
from components.bit.errors import BittuneError

CARD_JSON = serving.CARD_JSON
CARD_MARKDOWN = "model_card.md"
_CARD_HYPERRULE = ("resize", "crop", "batch_size", "base_lr", "total_steps", "mixup_alpha")
_CARD_METRICS = ("accuracy", "top5_accuracy", "loss", "macro_f1", "expected_calibration_error")
_CARD_COMPARISON = ("where", "examples", "accuracy", "other_accuracy", "difference", "low", "high",
                    "confidence", "p_value", "tolerance", "passed", "sentence")  # fmt: skip


class PushError(BittuneError):
    """A model that cannot be pushed, with the reason."""


def model_card(
    evaluation: Mapping[str, Any],
    hyperrule: Mapping[str, Any],
    manifest: Mapping[str, Any],
    lineage: Mapping[str, str],
) -> dict[str, Any]:
    """What a served version is: model, classes, data, HyperRule, metrics, gate and lineage."""
    metrics = evaluation["metrics"]
    return {
        "model": lineage.get("model_source", ""),
        "classes": evaluation["labels"],
        "data": {
            "source": manifest["source"].get("uri"),
            "splits": {s: e["examples"] for s, e in manifest["splits"].items()},
            "rejected_in_preprocessing": manifest["totals"]["rejected"],
            "exclude_list": manifest["source"].get("exclude_list"),
            "profile": manifest.get("profile", {}),  # what drift compares new data with
            "evaluated_shards": evaluation.get("shards", []),  # the next challenger's test
        },
        "hyperrule": {k: hyperrule[k] for k in (*_CARD_HYPERRULE, "variant")},
        "metrics": {
            "split": evaluation["split"],
            **{k: metrics[k] for k in _CARD_METRICS},
        },
        "gate": {
            "blessed": evaluation["blessed"],
            "reason": evaluation["reason"],
            "compared_with": evaluation.get("baseline"),  # the served version, if any
            "comparisons": [  # paired, on the same examples: how sure the verdict is
                {k: c[k] for k in _CARD_COMPARISON if k in c}
                for c in evaluation.get("comparisons", [])
            ],
        },
        "lineage": dict(lineage),
    }


def card_markdown(card: Mapping[str, Any]) -> str:
    """The model card as Markdown a person reads."""
    m, data, rule = card["metrics"], card["data"], card["hyperrule"]
    classes = card["classes"]
    shown = ", ".join(classes[:20]) + (" …" if len(classes) > 20 else "")
    splits = ", ".join(f"{name} {count:,}" for name, count in data["splits"].items())
    lines = [
        f"# Model card: {card['model']} fine-tuned on {data['source']}",
        "",
        f"**Classes ({len(classes)}):** {shown}",
        "",
        "## Data",
        f"- Examples: {splits}",
        f"- Inputs rejected in preprocessing: {data['rejected_in_preprocessing']:,}",
        *_excluded_line(data.get("exclude_list")),
        "",
        f"## BiT-HyperRule ({rule['variant']})",
        "| resize | crop | batch | base lr | steps | MixUp alpha |",
        "|---|---|---|---|---|---|",
        f"| {rule['resize']} | {rule['crop']} | {rule['batch_size']} | {rule['base_lr']:g} | "
        f"{rule['total_steps']:,} | {rule['mixup_alpha']:g} |",
        "",
        f"## Metrics ({m['split']} split)",
        "| accuracy | top-5 | loss | macro F1 | calibration error |",
        "|---|---|---|---|---|",
        f"| {m['accuracy']:.4f} | {m['top5_accuracy']:.4f} | {m['loss']:.4f} | "
        f"{m['macro_f1']:.4f} | {m['expected_calibration_error']:.4f} |",
        "",
        "## Gate",
        f"{'Blessed' if card['gate']['blessed'] else 'Not blessed'}: {card['gate']['reason']}",
        *_compared_lines(card["gate"]),
        "",
        *serving_extras.card_lines(card.get("exports")),
        "## Lineage",
        *[f"- {k}: {v}" for k, v in card["lineage"].items() if v],
    ]
    return "\n".join(lines) + "\n"


def _compared_lines(gate: Mapping[str, Any]) -> list[str]:
    """What the version was compared with, and how sure the comparison is."""
    if not gate.get("compared_with"):
        return ["", "Compared with: no served version (nothing to compare with)."]
    found = [f"- {c['sentence']}" for c in gate.get("comparisons", [])]
    return ["", f"Compared with {gate['compared_with']}:"] + (
        found or ["- on no common examples (other classes, and no test data named on its card)"]
    )


def _excluded_line(excluded: Mapping[str, Any] | None) -> list[str]:
    if not excluded:
        return []
    return [
        f"- Left out by the exclude list {excluded['uri']} (SHA-256 {excluded['sha256'][:12]}…): "
        f"{excluded['excluded']:,} of its {excluded['entries']:,} entries matched"
    ]


def claim_version(serving_root: str) -> int:
    """The next free version number under ``serving_root``, claimed atomically."""
    claim_id = uuid.uuid4().hex.encode()
    version = max(serving.versions(serving_root, complete=False), default=0) + 1
    while True:
        claim = storage.join(serving_root, str(version), serving.CLAIM_FILE)
        if _create_if_absent(claim, claim_id):
            return version
        version += 1


def _create_if_absent(uri: str, data: bytes) -> bool:
    if storage.is_gcs(uri):
        try:
            storage.write_if_generation(uri, data, 0)
        except storage.PreconditionFailed:
            return False
        return True
    os.makedirs(os.path.dirname(uri), exist_ok=True)
    try:
        fd = os.open(uri, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


@dataclasses.dataclass(frozen=True)
class Pushed:
    """A pushed version: where it is, its number, and how many model files it holds."""

    uri: str
    version: int
    files: int


def push(
    run: str, serving_root: str, card: Mapping[str, Any], extras: Mapping[str, bytes] | None = None
) -> Pushed:
    """Copy the run's SavedModel to a newly claimed version under ``serving_root`` (the model
    card first, then ``extras``: relative path -> bytes, then the SavedModel, ``saved_model.pb``
    last)."""
    if not card["gate"]["blessed"]:
        raise PushError("refusing to push a model that the gate did not bless")
    try:
        export = serving.find_saved_model(run)
    except serving.ServingError as exc:
        raise PushError(str(exc)) from None
    version = claim_version(serving_root)
    target = storage.join(serving_root, str(version))
    files = sorted(
        os.path.relpath(os.path.join(folder, name), export).replace(os.sep, "/")
        for folder, _, names in os.walk(export)
        for name in names
    )
    files.sort(key=lambda rel: rel == serving.SAVED_MODEL_FILE)  # the graph last
    storage.write_text(storage.join(target, CARD_MARKDOWN), card_markdown(card))
    storage.write_text(storage.join(target, CARD_JSON), json.dumps(card, indent=2) + "\n")
    for rel, data in (extras or {}).items():  # exports, warm-up requests
        storage.write_bytes(storage.join(target, rel), data)
    for rel in files:
        with open(os.path.join(export, rel), "rb") as f:
            storage.write_bytes(storage.join(target, rel), f.read())
    return Pushed(target, version, len(files))
