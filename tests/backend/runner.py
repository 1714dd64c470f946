"""A test-only runner that executes a compiled KFP v2 pipeline (IR YAML) the way the open-source
KFP backend does: API server submission checks, the Argo workflow, driver and launcher, with ML
Metadata and the cache in memory.

``kfp.local`` is lenient; a cluster is not. The runner follows the backend's source rule by rule
so that tests see cluster-only failures on this machine. The reference is kubeflow/pipelines at
tags 2.14.0, 2.15.0, 2.16.0 and 2.17.0 (2.17.0 is commit 4a3592cb2dd0, the backend matching kfp
2.17.x) and the Argo each installs (v3.6.7, v3.7.3, v3.7.3, v4.0.5); each rule cites its source
file and function where it is implemented, in the module that mirrors that source:

  apiserver.py  submission (apiserver/template/v2_template.go, common/util/parameter_formatter.go)
  argo.py       scheduling and retries (compiler/argocompiler/dag.go, container.go; Argo's
                workflow/controller/operator.go)
  driver.py     the DAG and container drivers (driver/driver.go, dag.go, container.go,
                root_dag.go); resolve.py inputs (resolve.go); podspec.py the pod (driver.go
                initPodSpecPatch, k8s.go, util.go); cache.py the cache (cache.go, cacheutils)
  launcher.py   the launcher (component/launcher_v2.go); pod.py how a pod runs here
  metadata.py   ML Metadata (metadata/client.go, converter.go); cel.py conditions (expression.go)

Backend versions (``backend_version``, default 2.17) differ where the Go source differs, each
rule with its release table: releases.py (the name a loop is recorded under, a null node
selector or toleration, the create/schedule-time placeholders, literal validation, who resolves
placeholders in container args), the artifact ``dsl.OneOf`` (resolve.py), DAG state
propagation (metadata.py) and the executor output file (driver.py).

Not reproduced: exit handlers and final-status tasks, importer tasks, PVC create/delete tasks,
workspaces, OCI/modelcar artifacts, ``parameterExpressionSelector``, TaskConfig inputs, log
artifacts (``executor-logs``), Kubernetes scheduling itself (the recorded limits are not
enforced), secrets/config maps/volumes from the platform spec, parallel execution, Argo's
workflow-level ``activeDeadlineSeconds``, ``cachingOptions.cacheKey`` (ignored by 2.17.0).
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import apiserver, argo, driver, releases
from .cluster import BACKEND_VERSIONS, DEFAULT_PIPELINE_ROOT, Cluster, KillHook, Run
from .ir import Binding, PipelineIR, binding_problems, load_ir, parameter_bindings
from .metadata import Execution, generate_output_uri
from .resolve import dag_outputs
from .results import (
    ArtifactRecord,
    AttemptResult,
    RunFailed,
    RunResult,
    SubmissionError,
    TaskDirs,
    TaskResult,
)
from .stores import ObjectStore

__all__ = [
    "ArtifactRecord",
    "AttemptResult",
    "BACKEND_VERSIONS",
    "BackendRunner",
    "Binding",
    "DEFAULT_PIPELINE_ROOT",
    "PipelineIR",
    "RunFailed",
    "RunResult",
    "SubmissionError",
    "TaskDirs",
    "TaskResult",
    "load_ir",
    "parameter_bindings",
    "binding_problems",
]


class BackendRunner(Cluster):
    """Runs compiled KFP v2 pipelines the way the open-source backend does (see module doc).

    One runner holds the ML Metadata ids, the cache and the kill hooks; runs on the same runner
    share the cache, as runs on one cluster do."""

    def add_store(self, store: ObjectStore) -> None:
        """Adds an object store (looked up by URI scheme, first match wins)."""
        self.stores.append(store)

    def kill_on(
        self,
        task: str,
        when: Callable[[TaskDirs, int], bool],
        *,
        attempts: Iterable[int] = (1,),
        ran_for_s: float = 0.0,
        phase: str = "Failed",
    ) -> KillHook:
        """SIGKILLs an attempt of ``task`` (path, key or display name) once ``when(dirs,
        attempt)`` is true while it runs; only the given attempt numbers (default: the first).
        ``ran_for_s`` is how long the attempt counts as having run on Argo's clock (a
        preemption hours into training); ``phase`` is the node phase the kill leaves: "Failed"
        (the container was killed: OOM, eviction with the pod kept) or "Error" (the pod was
        deleted, e.g. its node was preempted -- argo-workflows workflow/controller/operator.go
        ``podReconciliation``: "pod deleted"). Returns the hook; its ``fired`` lists the task
        paths killed."""
        if phase not in ("Failed", "Error"):
            raise ValueError(f"phase must be 'Failed' or 'Error', not {phase!r}")
        hook = KillHook(
            task=task, when=when, attempts=tuple(attempts), ran_for_s=ran_for_s, phase=phase
        )
        self.hooks.append(hook)
        return hook

    def clear_hooks(self) -> None:
        """Removes every kill hook."""
        self.hooks.clear()

    def run(
        self,
        pipeline: str | os.PathLike[str] | Mapping[str, Any] | PipelineIR,
        parameters: Mapping[str, Any] | None = None,
        *,
        pipeline_root: str | None = None,
        display_name: str | None = None,
        run_id: str | None = None,
        raise_on_failure: bool = True,
    ) -> RunResult:
        """Runs ``pipeline`` with runtime ``parameters``; raises ``RunFailed`` when it fails
        (unless ``raise_on_failure`` is false) and ``SubmissionError`` when the API server would
        refuse it. The run's root is ``<root>/<pipeline name>/<run id>``, the root being
        ``pipeline_root`` or the runner's default (``minio://mlpipeline/v2/artifacts``)."""
        ir = load_ir(pipeline)
        created = dt.datetime.now(dt.UTC).replace(microsecond=0)
        run_id = run_id or str(uuid.uuid4())
        run_name = apiserver.workflow_name(ir.name)
        params = apiserver.runtime_parameters(
            ir.spec, parameters or {}, run_id, created, releases.validates_literals(self)
        )
        root = pipeline_root or self.default_pipeline_root
        result = RunResult(
            run_id=run_id,
            run_name=run_name,
            display_name=display_name or ir.name,
            pipeline_name=ir.name,
            pipeline_root=root,
            run_root=generate_output_uri(root, [ir.name, run_id], preserve_query=True),
            parameters=params,
            platform_spec=ir.platform_spec,
        )
        self.runs.append(result)
        run_dir = self.workdir / f"run-{run_id}"
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            session = driver.session_info(root)
        except ValueError as err:  # the root DAG driver fails: nothing runs
            result.state = "FAILED"
            result.error = (
                f"driver.RootDAG(pipelineName={ir.name}, runID={run_id}, runtimeConfig, "
                f"componentSpec) failed: {err}"
            )
        else:
            run = Run(ir=ir, result=result, created=created, session_info=session, run_dir=run_dir)
            self._run_root_dag(run, params)
        if result.state == "FAILED" and raise_on_failure:
            raise RunFailed(result)
        return result

    def _run_root_dag(self, run: Run, params: dict[str, Any]) -> None:
        """The root DAG's execution, its tasks, then the run's state and outputs."""
        root = Execution(
            id=self.metadata.new_execution_id(),
            kind="root",
            name="",
            path="",
            component=run.ir.spec["root"],
            task={},
            parent=None,
            result=None,
            params=params,
        )
        argo.run_dag(run, root, functools.partial(driver.drive_task, self))
        run.result.state = "FAILED" if run.failed else "SUCCEEDED"
        if not run.failed and run.ir.spec["root"].get("dag", {}).get("outputs"):
            run.result.outputs = dag_outputs(self, root)

    def run_from_fake_api(
        self, fake: Any, run_id: str, *, raise_on_failure: bool = True
    ) -> RunResult:
        """Executes a run created on tests/kfp_fake.py's ``FakeKfpServer`` and moves its state
        to RUNNING, then SUCCEEDED or FAILED (FAILED too when the submission is refused)."""
        with fake._lock:
            stored = copy.deepcopy(fake.runs[run_id])
            if "pipeline_spec" in stored:
                spec = stored["pipeline_spec"]
            else:
                ref = stored["pipeline_version_reference"]
                spec = copy.deepcopy(fake.versions[ref["pipeline_version_id"]]["pipeline_spec"])
        config = stored.get("runtime_config") or {}
        fake.set_run_state(run_id, "RUNNING")
        try:
            result = self.run(
                spec,
                config.get("parameters") or {},
                pipeline_root=config.get("pipeline_root") or None,
                display_name=stored.get("display_name"),
                run_id=run_id,
                raise_on_failure=False,
            )
        except SubmissionError:
            fake.set_run_state(run_id, "FAILED")
            raise
        fake.set_run_state(run_id, result.state)
        if result.state == "FAILED":
            with fake._lock:
                fake.runs[run_id]["error"] = {"message": result.error or "", "code": 2}
            if raise_on_failure:
                raise RunFailed(result)
        return result
