"""The emulated cluster: its settings, what its runs share, and the state of one run."""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .ir import PipelineIR, is_loop
from .metadata import Execution, Metadata
from .results import RunResult, TaskDirs, TaskResult
from .stores import ObjectStore, StoreError

__all__ = ["BACKEND_VERSIONS", "DEFAULT_PIPELINE_ROOT", "Cluster", "KillHook", "Run"]

BACKEND_REFERENCE = "kubeflow/pipelines 2.14.0, 2.15.0, 2.16.0, 2.17.0 (4a3592cb2dd0)"
# The releases whose rules differ where this runner says so (``backend_version``).
BACKEND_VERSIONS = ("2.14", "2.15", "2.16", "2.17")
LATEST_VERSION = BACKEND_VERSIONS[-1]
# config/env.go ``DefaultPipelineRoot``: the launcher config default.
DEFAULT_PIPELINE_ROOT = "minio://mlpipeline/v2/artifacts"


@dataclass
class KillHook:
    """A ``kill_on`` request: SIGKILL attempts of ``task`` once ``when`` is true."""

    task: str
    when: Callable[[TaskDirs, int], bool]
    attempts: tuple[int, ...]
    ran_for_s: float = 0.0  # simulated run time of the killed attempt (Argo's clock)
    phase: str = "Failed"  # the Argo node phase the kill leaves: "Failed" or "Error"
    fired: list[str] = field(default_factory=list)

    def matches(self, result: TaskResult, attempt: int) -> bool:
        """Whether this hook watches ``attempt`` of the task ``result`` describes."""
        names = (result.path, result.name, result.display_name)
        return self.task in names and attempt in self.attempts


class Cluster:
    """The emulated backend's settings and what its runs share: the object stores, ML
    Metadata (ids and cache) and the kill hooks, as runs on one cluster share them."""

    def __init__(
        self,
        stores: Iterable[ObjectStore] = (),
        *,
        workdir: str | os.PathLike[str] | None = None,
        python_bin: str | os.PathLike[str] | None = None,
        base_env: Mapping[str, str] | None = None,
        default_pipeline_root: str = DEFAULT_PIPELINE_ROOT,
        namespace: str = "kubeflow",
        cache_disabled: bool = False,
        backoff_scale: float = 1.0,
        task_timeout_s: float | None = None,
        keep_pods: bool = False,
        poll_interval_s: float = 0.05,
        backend_version: str = LATEST_VERSION,
        template_retry: Mapping[str, str] | None = None,
    ) -> None:
        if backend_version not in BACKEND_VERSIONS:
            raise ValueError(f"backend_version must be one of {', '.join(BACKEND_VERSIONS)}")
        self.backend_version = backend_version
        # The workflow-controller config map's templateDefaults.retryStrategy ({} none); None:
        # what the release's manifests install (releases.template_retry_strategy).
        self.template_retry = dict(template_retry) if template_retry is not None else None
        self.stores = list(stores)
        self.workdir = pathlib.Path(
            workdir if workdir is not None else tempfile.mkdtemp(prefix="kfp-backend-runner-")
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.python_bin = pathlib.Path(python_bin or pathlib.Path(sys.executable).parent)
        self.base_env = dict(base_env) if base_env is not None else {"LANG": "C.UTF-8"}
        self.default_pipeline_root = default_pipeline_root
        self.namespace = namespace
        self.cache_disabled = cache_disabled
        self.backoff_scale = backoff_scale
        self.task_timeout_s = task_timeout_s
        self.keep_pods = keep_pods
        self.poll_interval_s = poll_interval_s
        self.runs: list[RunResult] = []
        self.metadata = Metadata()
        self.hooks: list[KillHook] = []

    def at_least(self, version: str) -> bool:
        """Whether the emulated backend is ``version`` or newer."""
        return BACKEND_VERSIONS.index(self.backend_version) >= BACKEND_VERSIONS.index(version)

    def store_for(self, uri: str) -> ObjectStore:
        """The store serving ``uri``'s scheme (first match wins)."""
        for store in self.stores:
            if store.serves(uri):
                return store
        raise StoreError(f"no object store configured for {uri}")


@dataclass
class Run:
    """One run in progress: its IR, its result so far, and Argo's ``failFast`` flag."""

    ir: PipelineIR
    result: RunResult
    created: dt.datetime
    session_info: dict[str, Any]
    run_dir: pathlib.Path
    failed: bool = False

    def new_result(
        self, dag: Execution, key: str, task: Mapping[str, Any], kind: str, path: str = ""
    ) -> TaskResult:
        """Adds the result of task ``key`` of ``dag`` (``path`` for a loop iteration)."""
        path = path or dag.child_path(key)
        result = TaskResult(
            path=path,
            name=key,
            display_name=task.get("taskInfo", {}).get("name", key),
            kind=kind,
            component=task.get("componentRef", {}).get("name", ""),
            parent_execution_id=dag.id,
            condition=task.get("triggerPolicy", {}).get("condition") or None,
            retry_policy=task.get("retryPolicy"),
        )
        self.result.tasks[path] = result
        return result

    def record_unrun(self, dag: Execution, key: str, task: Mapping[str, Any], state: str) -> None:
        """A task Argo never started: OMITTED (a dependency did not succeed) or NOT_STARTED
        (the run failed first)."""
        comp = self.ir.component(task)
        kind = "container" if "dag" not in comp else ("loop" if is_loop(task) else "dag")
        result = self.new_result(dag, key, task, kind)
        result.state = state
        dag.argo[key] = "Omitted" if state == "OMITTED" else "NotStarted"

    def fail(self, result: TaskResult, dag: Execution, error: str) -> None:
        """Marks a task failed; the first failure fails the run (Argo ``failFast``)."""
        result.state = "FAILED"
        result.error = error
        dag.argo[result.name] = "Failed"
        if not self.failed:
            self.failed = True
            self.result.failed_task = result.path
            self.result.error = error
