"""Likely label errors among held-out examples, by confident learning (cleanlab).

The model never trained on the held-out split, so its probabilities there are out of sample:
what confident learning needs. ``cleanlab.filter.find_label_issues`` picks the examples whose
given label the per-class confident joint says is wrong; they are ranked by self-confidence
(the probability the model gives the given label, lowest first).

The list is written as ``label_issues.json``; a user reviews it and passes it (or any list of
the same URIs) back as ``exclude_list``, and the next analysis excludes those items.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

ISSUES_FILE = "label_issues.json"
SHOWN = 12  # issues shown with thumbnails in the evaluation report
# Probabilities kept in memory for the search (float32: 200 MB); a larger split x classes
# product skips it, and the evaluation says so (metrics.json: label_issues_skipped).
MAX_PROBABILITIES = 50_000_000


@dataclasses.dataclass(frozen=True)
class LabelIssue:
    """One example whose given label the model confidently contradicts."""

    index: int  # position in the evaluated split's record order
    uri: str
    sha256: str
    given: str
    predicted: str
    label_quality: float  # the model's probability of the given label (low: likely wrong)


def rank(labels: np.ndarray, probabilities: np.ndarray) -> list[int]:
    """Indices of likely label errors, most likely first (empty when there are too few
    examples or classes to judge)."""
    import warnings

    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if len(labels) < 2 or len(np.unique(labels)) < 2:
        return []
    from cleanlab.filter import find_label_issues

    with warnings.catch_warnings():  # cleanlab warns about classes absent from a small split
        warnings.simplefilter("ignore")
        ranked = find_label_issues(
            labels, probabilities, return_indices_ranked_by="self_confidence"
        )
    return [int(i) for i in ranked]


def issues(
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    uris: Sequence[str],
    sha256: Sequence[str],
) -> list[LabelIssue]:
    """The ranked label issues of a split, each with its source and both labels."""
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return [
        LabelIssue(
            index=i,
            uri=uris[i],
            sha256=sha256[i],
            given=class_names[labels[i]],
            predicted=class_names[int(probabilities[i].argmax())],
            label_quality=float(probabilities[i, labels[i]]),
        )
        for i in rank(labels, probabilities)
    ]


def to_json(found: Sequence[LabelIssue], split: str, examples: int) -> str:
    """``label_issues.json``: the method, the split, and every issue (an exclude list)."""
    document: dict[str, Any] = {
        "method": "confident learning (cleanlab.filter.find_label_issues), ranked by "
        "self-confidence",
        "split": split,
        "examples": examples,
        "issues": [dataclasses.asdict(issue) for issue in found],
    }
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"


def read_exclude_list(text: str) -> tuple[set[str], int]:
    """The names an exclude list gives and how many entries it has: ``label_issues.json``
    (each issue by its URI and SHA-256), a JSON list of URIs or keys, or plain text with one
    per line (# starts a comment)."""
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        document = json.loads(stripped)
        entries = document.get("issues", []) if isinstance(document, dict) else document
        names: set[str] = set()
        for entry in entries:
            if isinstance(entry, dict):
                names.update(str(entry[k]) for k in ("uri", "sha256", "key") if entry.get(k))
            else:
                names.add(str(entry))
        return names, len(entries)
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return {line for line in lines if line}, sum(1 for line in lines if line)
