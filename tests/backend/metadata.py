"""ML Metadata in memory: executions, artifact ids, the cache entries and DAG states
(backend/src/v2/metadata/client.go, converter.go)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .results import ArtifactRecord, TaskResult
from .values import to_pb

__all__ = ["CacheEntry", "Execution", "Metadata", "generate_output_uri", "update_dag_states"]


@dataclass
class Execution:
    """An ML Metadata execution (container or DAG) plus the tree the runner walks."""

    id: int
    kind: str  # "root", "dag", "loop", "iteration", "container"
    name: str  # task key ("" for root)
    path: str
    component: dict[str, Any]
    task: dict[str, Any]
    parent: Execution | None
    result: TaskResult | None
    state: str = "RUNNING"  # ML Metadata state
    params: dict[str, Any] = field(default_factory=dict)  # input parameters
    artifacts: dict[str, list[ArtifactRecord]] = field(default_factory=dict)  # input artifacts
    out_params: dict[str, Any] = field(default_factory=dict)
    out_artifacts: dict[str, ArtifactRecord] = field(default_factory=dict)
    children: dict[str, Execution] = field(default_factory=dict)  # by recorded task name
    iterations: list[Execution] = field(default_factory=list)
    iteration_index: int | None = None
    iteration_count: int | None = None
    argo: dict[str, str] = field(default_factory=dict)  # child task key -> Argo phase
    launched: bool = False  # a launcher below finished (and updated DAG states)

    def child_path(self, key: str) -> str:
        """The task path of child ``key``."""
        return f"{self.path}/{key}" if self.path else key

    def dag_tasks(self) -> dict[str, Any]:
        """The tasks of this execution's DAG component."""
        return self.component.get("dag", {}).get("tasks", {})

    def mlmd_task_name(self, key: str) -> str:
        """How the driver names child ``key`` in its errors: ``name_<dag id>[_idx_<i>]``."""
        name = f"{key}_{self.id}"
        if self.iteration_index is not None:
            name += f"_idx_{self.iteration_index}"
        return name

    def read_back(self, name: str) -> list[ArtifactRecord]:
        """This DAG's input artifact as its children's drivers read it back: ONE artifact per
        input name, however many the DAG's driver recorded (metadata/client.go
        ``GetInputArtifactsByExecutionID`` builds ``inputs[name] = {Artifacts: [one]}`` per
        input event, the last one winning; resolve.go ``resolveInputs`` uses it for every task
        inside a DAG and for iterations). So a ``dsl.Collected`` list passed into a sub-pipeline
        or a condition branch arrives as one artifact: kubeflow/pipelines issue 13900 (PR 13901,
        not merged as of 2.17.0 and master). A list taken at the root from the loop
        (``CollectInputs``) keeps every artifact."""
        return list(self.artifacts.get(name, [])[-1:])


@dataclass
class CacheEntry:
    """A finished execution the driver's cache lookup can reuse."""

    execution_id: int
    run_id: str
    task: str
    out_params: dict[str, Any]
    out_artifacts: dict[str, ArtifactRecord]


class Metadata:
    """The ids and the cache of one ML Metadata store (shared by every run of a runner)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str, str], list[CacheEntry]] = {}
        self._next_execution = 0
        self._next_artifact = 0

    def new_execution_id(self) -> int:
        """The next execution id."""
        self._next_execution += 1
        return self._next_execution

    def new_artifact_id(self) -> int:
        """The next artifact id."""
        self._next_artifact += 1
        return self._next_artifact

    def cached(self, fingerprint: str, pipeline: str, namespace: str) -> CacheEntry | None:
        """The newest execution with this fingerprint in ``pipeline/<name>`` and namespace."""
        entries = self._cache.get((fingerprint, f"pipeline/{pipeline}", namespace))
        return entries[-1] if entries else None

    def add_cache_entry(
        self, fingerprint: str, pipeline: str, namespace: str, entry: CacheEntry
    ) -> None:
        """Records a successful execution under its fingerprint (written by the launcher)."""
        self._cache.setdefault((fingerprint, f"pipeline/{pipeline}", namespace), []).append(entry)


def generate_output_uri(root: str, paths: Sequence[str], preserve_query: bool = False) -> str:
    """metadata/client.go ``GenerateOutputURI``: ``root/path/...`` keeping the scheme's ``//``.
    The run's root is ``<root>/<pipeline name>/<run id>`` (``GetPipeline``)."""
    query = ""
    parts = root.split("?")
    if len(parts) == 2:
        root = parts[0]
        if preserve_query:
            query = "?" + parts[1]
    joined = "/".join(p.strip("/") for p in paths if p)
    joined = os.path.normpath(joined) if joined else ""
    return f"{root.rstrip('/')}/{joined}{query}"


def mlmd_value(value: Any) -> Any:
    """An artifact metadata value after the ML Metadata round trip: metadata/converter.go
    ``StructValueToMLMDValue``, then back through ``toRuntimeArtifact``. Downstream tasks see
    numbers as doubles, bools as 1/0, lists wrapped as ``{"list": […]}``, dicts as
    ``{"struct": {…}}``; a null value fails the upload."""
    if value is None:
        raise ValueError("unknown/unsupported value type *structpb.Value_NullValue")
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return {"list": to_pb(value)}
    if isinstance(value, dict):
        return {"struct": to_pb(value)}
    raise ValueError(f"unknown/unsupported value type {type(value).__name__}")


def update_dag_states(node: Execution, *, recursive: bool) -> None:
    """metadata/client.go ``UpdateDAGExecutionsState`` after a launcher: the parent DAG, and from
    2.17.0 (PR 13322, recursive DAG state propagation) its parents up to the root as each
    completes; before 2.17.0 the parent only (2.16.0 metadata/client.go
    ``UpdateDAGExecutionsState``). Only a launcher (a task that really ran) triggers it, so a
    branch whose tasks were all cache hits stays RUNNING."""
    dag = node.parent
    while dag is not None and dag.kind != "root":
        dag.launched = True
        if not recount(dag) or not recursive:
            return
        dag = dag.parent


def recount(dag: Execution) -> bool:
    """One DAG's ``UpdateDAGExecutionsState`` step; False while it is still running. A DAG is
    COMPLETE when COMPLETE+CACHED+CANCELED children equal its task count (iteration count for
    a loop), FAILED when a child failed."""
    if dag.kind == "loop":
        expected = dag.iteration_count or 0
        children = list(dag.iterations)
    else:
        expected = len(dag.dag_tasks())
        children = list(dag.children.values())
    done = sum(1 for c in children if c.state in ("COMPLETE", "CACHED", "CANCELED"))
    failed = sum(1 for c in children if c.state == "FAILED")
    if done == expected:
        dag.state = "COMPLETE"
    elif failed > 0:
        dag.state = "FAILED"
    else:
        return False
    if dag.result is not None:
        dag.result.mlmd_state = dag.state
    return True
