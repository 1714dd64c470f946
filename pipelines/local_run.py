"""Run the bit-finetune pipeline on this machine with kfp.local."""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

from components.bit.errors import ERROR_PREFIX, BittuneError
from components.bit.validation import check_pipeline_parameters
from components.image import IMAGE_REGISTRY, IMAGE_TAG, retarget_images


def run_locally(
    data_source: str,
    pipeline_root: str,
    runner: str = "subprocess",
    image_registry: str = IMAGE_REGISTRY,
    image_tag: str = IMAGE_TAG,
    **parameters: Any,
) -> dict[str, Any]:
    """Run the whole pipeline under ``pipeline_root``; return where its outputs are.

    ``runner="docker"`` runs every step in the CPU image ``{image_registry}/bittune-cpu:{tag}``
    (training included: local Docker has no GPU), with the local paths it reads mounted."""
    check_pipeline_parameters({"data_source": data_source, **parameters}, on_cluster=False)
    from kfp import local

    from pipelines.bit_finetune import bit_finetune

    os.makedirs(pipeline_root, exist_ok=True)
    images: contextlib.AbstractContextManager = contextlib.nullcontext()
    if runner == "docker":
        chosen = docker_runner(pipeline_root, data_source, parameters)
        images = _images_retargeted(bit_finetune, image_registry, image_tag)
    elif runner == "subprocess":
        chosen = local.SubprocessRunner(use_venv=False)
    else:
        raise BittuneError(f"unknown runner {runner!r} (use subprocess or docker)")
    local.init(runner=chosen, pipeline_root=pipeline_root, raise_on_error=True)
    log = _ErrorWatch(sys.stdout)
    try:
        with images, _without_retries(bit_finetune), contextlib.redirect_stdout(log):
            bit_finetune(data_source=data_source, **parameters)
    except RuntimeError as exc:
        failed = re.sub(r"\x1b\[[0-9;]*m", "", str(exc).splitlines()[0]).rstrip(".")
        if log.error:  # the failed step's own one-line reason
            raise BittuneError(f"{log.error} ({failed}; its log is above)") from None
        raise BittuneError(f"pipeline failed: {failed} (its log is above)") from None
    return latest_outputs(pipeline_root)


class _ErrorWatch(io.TextIOBase):
    """Passes the steps' logs through and remembers the last one-line bittune error in them."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.error: str | None = None

    def write(self, text: str) -> int:
        for line in text.splitlines():
            start = line.find(ERROR_PREFIX)
            if start >= 0:
                self.error = line[start + len(ERROR_PREFIX) :].strip()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


# The image's own non-root user (docker/Dockerfile).
IMAGE_UID = 1000


def docker_runner(pipeline_root: str, data_source: str, parameters: dict[str, Any]):
    """kfp.local's DockerRunner for this run: the local paths the steps read are bind-mounted
    read-only at the same path (kfp mounts the pipeline root itself); the serving root is
    mounted writable. Containers never run as root: they run as the calling user, or, when
    that is root, as the image's own user, who is given the folders the steps write."""
    import docker
    from docker.types import Mount
    from kfp import local

    try:
        docker.from_env().ping()
    except docker.errors.DockerException as exc:
        raise BittuneError(
            f"--runner docker needs a running Docker daemon ({exc}); start dockerd, or use "
            "--runner subprocess"
        ) from None
    root = os.path.abspath(pipeline_root)
    writable = [root]
    serving = parameters.get("serving_root") or ""
    if serving and "://" not in serving and not _inside(serving, root):
        os.makedirs(serving, exist_ok=True)
        writable.append(os.path.abspath(serving))
    read_only = {
        os.path.abspath(path)
        for path in (
            data_source,
            parameters.get("data_dir"),
            parameters.get("baseline_model"),
            parameters.get("model"),
        )
        if path and "://" not in path and os.path.exists(path)
    }
    mounts = [Mount(target=p, source=p, type="bind", read_only=True) for p in sorted(read_only)]
    mounts += [Mount(target=p, source=p, type="bind") for p in writable[1:]]
    if os.getuid() == 0:
        for path in [*writable, *read_only]:
            blocked = _closed_ancestor(path)
            if blocked:
                raise BittuneError(
                    f"--runner docker: the containers run as the image's user (uid {IMAGE_UID}),"
                    f" who cannot reach {path} ({blocked} is closed to other users); use "
                    "folders outside it, e.g. --output /tmp/bittune-runs"
                )
        user = f"{IMAGE_UID}:{IMAGE_UID}"
        for path in writable:
            os.chown(path, IMAGE_UID, IMAGE_UID)
    else:
        user = f"{os.getuid()}:{os.getgid()}"
    return local.DockerRunner(
        mounts=mounts, user=user, environment={"HOME": "/tmp", "MPLCONFIGDIR": "/tmp"}
    )


def _closed_ancestor(path: str) -> str | None:
    """The first folder above ``path`` that other users cannot enter, if any."""
    folder = os.path.dirname(os.path.abspath(path))
    while True:
        if not os.stat(folder).st_mode & 0o001:
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([os.path.abspath(path), root]) == root


@contextlib.contextmanager
def _without_retries(pipeline) -> Iterator[None]:
    """Local runs fail fast: the steps' retries (with minutes of backoff) are there for
    preempted cluster nodes, and a step that failed here would only fail again."""
    spec = pipeline.pipeline_spec
    dags = [spec.root.dag] + [c.dag for c in spec.components.values() if c.HasField("dag")]
    saved = []
    for dag in dags:
        for task in dag.tasks.values():
            if task.HasField("retry_policy"):
                saved.append((task, type(task.retry_policy)()))
                saved[-1][1].CopyFrom(task.retry_policy)
                task.ClearField("retry_policy")
    try:
        yield
    finally:
        for task, policy in saved:
            task.retry_policy.CopyFrom(policy)


@contextlib.contextmanager
def _images_retargeted(pipeline, registry: str, tag: str) -> Iterator[None]:
    """Run the compiled pipeline's steps in the CPU image of ``registry``/``tag`` for a while."""
    executors = pipeline.pipeline_spec.deployment_spec["executors"]
    containers = [executors[name]["container"] for name in executors]
    before = [container["image"] for container in containers]
    retarget_images(containers, registry, tag, training="cpu")
    try:
        yield
    finally:
        for container, image in zip(containers, before, strict=True):
            container["image"] = image


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


def _json_or_empty(*parts: str) -> dict[str, Any]:
    """A JSON file's content, or {} when the step that writes it did not run."""
    path = os.path.join(*parts)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _training_summary(run: str) -> dict[str, Any]:
    return _json_or_empty(run, "train-model", "model", "training.json")


def _evaluation(run: str) -> dict[str, Any]:
    folder = os.path.join(run, "evaluate-model")
    result = _json_or_empty(folder, "evaluation", "metrics.json")
    if not result:
        return {}
    pushed = _json_or_empty(run, "push-model", "executor_output.json")
    return {
        "evaluation": os.path.join(folder, "evaluation"),
        "evaluation_report": os.path.join(folder, "report"),
        "test_split": result["split"],
        "test_accuracy": result["metrics"]["accuracy"],
        "blessed": result["blessed"],
        "reason": result["reason"],
        "pushed": pushed.get("parameterValues", {}).get("Output"),
    }
