"""Pushing a blessed model: a new numbered version under the serving location, with a model card.

The layout is TF Serving's and Vertex AI's: ``SERVING_ROOT/<version>/`` holding the SavedModel
(``saved_model.pb``, ``variables/``) plus ``model_card.json`` and ``model_card.md``. Versions are
increasing integers; the card is written last, so a version with a card is complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from components.bit import storage
from components.bit.errors import BittuneError

CARD_JSON = "model_card.json"
CARD_MARKDOWN = "model_card.md"


def next_version(serving_root: str) -> int:
    """One more than the highest complete numeric version under ``serving_root``."""
    versions = [0]
    if storage.is_dir(serving_root):
        for entry in storage.list_files(serving_root):
            head, _, rest = entry.relpath.partition("/")
            if head.isdigit() and rest == CARD_JSON:
                versions.append(int(head))
    return max(versions) + 1


def model_card(
    evaluation: Mapping[str, Any],
    hyperrule: Mapping[str, Any],
    manifest: Mapping[str, Any],
    lineage: Mapping[str, str],
) -> dict[str, Any]:
    metrics = evaluation["metrics"]
    return {
        "model": lineage.get("model_source", ""),
        "classes": evaluation["labels"],
        "data": {
            "source": manifest["source"].get("uri"),
            "splits": {s: e["examples"] for s, e in manifest["splits"].items()},
            "rejected_in_preprocessing": manifest["totals"]["rejected"],
        },
        "hyperrule": {
            k: hyperrule[k]
            for k in (
                "resize",
                "crop",
                "batch_size",
                "base_lr",
                "total_steps",
                "mixup_alpha",
                "variant",
            )
        },
        "metrics": {
            "split": evaluation["split"],
            "accuracy": metrics["accuracy"],
            "top5_accuracy": metrics["top5_accuracy"],
            "loss": metrics["loss"],
            "macro_f1": metrics["macro_f1"],
            "expected_calibration_error": metrics["expected_calibration_error"],
        },
        "gate": {"blessed": evaluation["blessed"], "reason": evaluation["reason"]},
        "lineage": dict(lineage),
    }


def card_markdown(card: Mapping[str, Any]) -> str:
    m = card["metrics"]
    lines = [
        f"# Model card: {card['model']} on {card['data']['source']}",
        "",
        f"- Classes ({len(card['classes'])}): {', '.join(card['classes'][:20])}"
        + (" …" if len(card["classes"]) > 20 else ""),
        f"- Data splits: {card['data']['splits']}; rejected in preprocessing: "
        f"{card['data']['rejected_in_preprocessing']}",
        f"- HyperRule: {card['hyperrule']}",
        f"- {m['split']} accuracy {m['accuracy']:.4f}, top-5 {m['top5_accuracy']:.4f}, "
        f"loss {m['loss']:.4f}, macro F1 {m['macro_f1']:.4f}, ECE "
        f"{m['expected_calibration_error']:.4f}",
        f"- Gate: {card['gate']['reason']}",
        "- Lineage:",
        *[f"  - {k}: {v}" for k, v in card["lineage"].items()],
    ]
    return "\n".join(lines) + "\n"


def push(model_dir: str, serving_root: str, card: Mapping[str, Any]) -> str:
    """Copy the exported SavedModel to the next version under ``serving_root``; return its URI."""
    if not card["gate"]["blessed"]:
        raise BittuneError("refusing to push a model that the gate did not bless")
    export = os.path.join(model_dir, "saved_model")
    if not os.path.exists(os.path.join(export, "saved_model.pb")):
        raise BittuneError(f"no exported model in {model_dir}")
    version = next_version(serving_root)
    target = storage.join(serving_root, str(version))
    for folder, _, names in os.walk(export):
        for name in names:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, export).replace(os.sep, "/")
            with open(path, "rb") as f:
                storage.write_bytes(storage.join(target, rel), f.read())
    storage.write_text(storage.join(target, CARD_MARKDOWN), card_markdown(card))
    storage.write_text(storage.join(target, CARD_JSON), json.dumps(card, indent=2) + "\n")
    return target
