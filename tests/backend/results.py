"""What a run returns (tasks, attempts, artifacts) and the errors the emulated backend raises."""

from __future__ import annotations

import copy
import pathlib
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ArtifactRecord",
    "AttemptResult",
    "DriverError",
    "LauncherError",
    "RunFailed",
    "RunResult",
    "SubmissionError",
    "TaskDirs",
    "TaskResult",
]


class SubmissionError(Exception):
    """The API server refuses the run (invalid pipeline job inputs, unsupported root, ...)."""


class DriverError(Exception):
    """A driver failed (message as the driver writes it); the task fails without retries."""


class LauncherError(Exception):
    """A launcher attempt failed after the user command (download, output collection, upload)."""


class RunFailed(Exception):
    """A run ended FAILED; ``result`` holds every task, ``failed_task`` the first failure."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        task = result.tasks.get(result.failed_task or "")
        tail = task.log_tail() if task is not None else ""
        message = f"run {result.run_id} failed in task {result.failed_task!r}: {result.error}"
        if tail:
            message += f"\n--- last lines of {result.failed_task}'s log ---\n{tail}"
        super().__init__(message)


@dataclass
class ArtifactRecord:
    """An output artifact as the launcher uploaded and recorded it in ML Metadata."""

    id: int
    output_name: str
    uri: str
    schema_title: str
    schema_version: str
    metadata: dict[str, Any]  # what the component reported (merged runtime artifact metadata)
    mlmd_properties: dict[str, Any]  # what downstream tasks read (metadata.mlmd_value)
    local_path: str | None  # the pod-local path it was uploaded from (by the producing run)
    backend_local_path: str | None  # the path it has in a real pod (/minio/…, /gcs/…)
    producer: str  # task path
    uploaded: list[str] = field(default_factory=list)  # object URIs written

    def runtime_artifact(self, *, typed: bool) -> dict[str, Any]:
        """metadata/converter.go ``toRuntimeArtifact``: what a consumer's executor input holds
        for this artifact -- ``name`` = the ML Metadata id, no schema title, type
        ``{"instanceSchema": ""}`` from a producer (``typed``), no type through a DAG input."""
        out: dict[str, Any] = {
            "name": str(self.id),
            "uri": self.uri,
            "metadata": copy.deepcopy(self.mlmd_properties),
        }
        if typed:
            out["type"] = {"instanceSchema": ""}
        return out


@dataclass
class AttemptResult:
    """One launcher pod of a container task."""

    number: int  # 1-based
    exit_code: int | None  # container exit code; 128+N when killed by signal N
    signal: int | None
    killed_by_hook: bool
    error: str | None  # the launcher's error when the attempt failed
    log: str
    pod_root: str
    started_at: float
    duration_s: float
    warnings: list[str] = field(default_factory=list)
    phase: str = "Succeeded"  # Argo node phase: Succeeded, Failed or Error
    simulated_s: float = 0.0  # time this attempt took on Argo's simulated clock
    downloaded: dict[str, list[str]] = field(default_factory=dict)  # input -> local files

    @property
    def succeeded(self) -> bool:
        """Whether the launcher finished without error."""
        return self.error is None


@dataclass
class TaskDirs:
    """Where a running attempt keeps its files (argument of ``kill_on`` conditions)."""

    task: str  # task path
    pod_root: pathlib.Path
    cwd: pathlib.Path
    outputs: dict[str, pathlib.Path]  # output artifact -> local path
    inputs: dict[str, list[pathlib.Path]]  # input artifact -> local paths
    parameter_files: dict[str, pathlib.Path]  # output parameter -> local file

    def __getitem__(self, output_name: str) -> pathlib.Path:
        return self.outputs[output_name]


@dataclass
class TaskResult:
    """One task instance (container, DAG, loop, or loop iteration) of a run."""

    path: str  # e.g. "for-loop-1[0]/square"
    name: str  # the task key in its DAG, e.g. "square"
    display_name: str  # taskInfo.name
    kind: str  # "container", "dag", "loop" or "iteration"
    component: str
    state: str = "PENDING"  # SUCCEEDED, CACHED, FAILED, SKIPPED, OMITTED, NOT_STARTED
    mlmd_state: str | None = None  # RUNNING, COMPLETE, CACHED, FAILED, CANCELED
    execution_id: int | None = None
    parent_execution_id: int | None = None
    cache_hit: bool = False
    fingerprint: str | None = None
    iteration_index: int | None = None
    iteration_count: int | None = None
    parallelism_limit: int | None = None
    condition: str | None = None
    condition_result: bool | None = None
    inputs: dict[str, Any] = field(default_factory=dict)  # resolved input parameters
    input_artifacts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)  # output parameters
    output_artifacts: dict[str, ArtifactRecord] = field(default_factory=dict)
    collected_artifacts: dict[str, list[ArtifactRecord]] = field(default_factory=dict)
    image: str | None = None
    command: list[str] = field(default_factory=list)  # after driver + launcher substitution
    executor_input: dict[str, Any] | None = None  # as a component gets it on a cluster
    local_executor_input: dict[str, Any] | None = None  # as passed here (pod-rooted paths)
    pod_spec: dict[str, Any] = field(default_factory=dict)
    kubernetes_config: dict[str, Any] | None = None
    retry_policy: dict[str, Any] | None = None
    retry_delays_s: list[float] = field(default_factory=list)  # configured, before scaling
    attempts: list[AttemptResult] = field(default_factory=list)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def log(self) -> str:
        """All attempts' stdout+stderr, each under a header."""
        parts = []
        for attempt in self.attempts:
            parts.append(f"--- attempt {attempt.number} ---\n{attempt.log}")
        return "\n".join(parts)

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the last attempt's log, or the error."""
        if self.attempts:
            return "\n".join(self.attempts[-1].log.splitlines()[-lines:])
        return self.error or ""


@dataclass
class RunResult:
    """A run: its identity, final state and every task instance by path."""

    run_id: str
    run_name: str
    display_name: str
    pipeline_name: str
    pipeline_root: str  # the configured root
    run_root: str  # <root>/<pipeline name>/<run id>
    parameters: dict[str, Any]
    state: str = "RUNNING"  # SUCCEEDED or FAILED at the end
    error: str | None = None
    failed_task: str | None = None
    tasks: dict[str, TaskResult] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)  # root DAG outputs, when any
    platform_spec: dict[str, Any] | None = None

    def task(self, name: str) -> TaskResult:
        """The task whose path is ``name``, else the only one whose path ends with
        ``/name``, else the only one with that key or display name."""
        if name in self.tasks:
            return self.tasks[name]
        found = [t for p, t in self.tasks.items() if p.endswith("/" + name)]
        found = found or self.tasks_named(name)
        if len(found) != 1:
            paths = sorted(self.tasks)
            raise KeyError(f"{len(found)} tasks match {name!r}; paths: {paths}")
        return found[0]

    def tasks_named(self, name: str) -> list[TaskResult]:
        """Every task instance with key or display name ``name`` (loop iterations included)."""
        return [t for t in self.tasks.values() if name in (t.name, t.display_name)]
