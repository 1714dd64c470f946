"""Run the bit-finetune pipeline on this machine with kfp.local."""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any

from components.bit.errors import BittuneError


def run_locally(
    data_source: str,
    pipeline_root: str,
    runner: str = "subprocess",
    **parameters: Any,
) -> dict[str, Any]:
    """Run the whole pipeline under ``pipeline_root``; return where its outputs are."""
    from components.bit.sources import check_source

    check_source(data_source, parameters.get("data_dir") or None)
    from kfp import local

    from pipelines.bit_finetune import bit_finetune

    os.makedirs(pipeline_root, exist_ok=True)
    if runner == "docker":
        chosen = local.DockerRunner()
    elif runner == "subprocess":
        chosen = local.SubprocessRunner(use_venv=False)
    else:
        raise BittuneError(f"unknown runner {runner!r} (use subprocess or docker)")
    local.init(runner=chosen, pipeline_root=pipeline_root, raise_on_error=True)
    try:
        bit_finetune(data_source=data_source, **parameters)
    except RuntimeError as exc:
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(exc).splitlines()[0])
        raise BittuneError(f"pipeline failed: {message} (its log is above)") from None
    return latest_outputs(pipeline_root)


def latest_outputs(pipeline_root: str) -> dict[str, Any]:
    """Paths of the newest run's artifacts under a local pipeline root."""
    runs = sorted(glob.glob(os.path.join(pipeline_root, "bit-finetune-*")), key=os.path.getmtime)
    if not runs:
        raise BittuneError(f"no pipeline run found under {pipeline_root}")
    run = runs[-1]
    from components.bit.preprocess import load_manifest

    dataset = os.path.join(run, "gather-dataset", "dataset")
    manifest = load_manifest(dataset)
    return {
        "run": run,
        "analysis": os.path.join(run, "analyze-dataset", "analysis"),
        "report_html": os.path.join(run, "analyze-dataset", "report_html"),
        "dataset": dataset,
        "totals": manifest["totals"],
        "model": os.path.join(run, "train-model", "model"),
        **_evaluation(run),
        "validation_accuracy": _training_summary(run)
        .get("validation", [{}])[-1]
        .get("accuracy", float("nan")),
        "examples": manifest["splits"]["train"]["examples"],
    }


def _training_summary(run: str) -> dict[str, Any]:
    path = os.path.join(run, "train-model", "model", "training.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _evaluation(run: str) -> dict[str, Any]:
    folder = os.path.join(run, "evaluate-model")
    path = os.path.join(folder, "evaluation", "metrics.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    pushed = os.path.join(run, "push-model", "executor_output.json")
    version = None
    if os.path.exists(pushed):
        with open(pushed, encoding="utf-8") as f:
            version = json.load(f)["parameterValues"]["Output"]
    return {
        "evaluation": os.path.join(folder, "evaluation"),
        "evaluation_report": os.path.join(folder, "report"),
        "test_split": result["split"],
        "test_accuracy": result["metrics"]["accuracy"],
        "blessed": result["blessed"],
        "reason": result["reason"],
        "pushed": version,
    }
