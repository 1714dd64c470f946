"""A test-only runner that executes a compiled KFP v2 pipeline (IR YAML) the way the open-source
KFP backend does: Argo workflow + driver + launcher, with ML Metadata and the cache in memory.

``kfp.local`` is lenient; a cluster is not. This runner follows the backend's source rule by rule
so that tests see cluster-only failures on this machine. The reference is kubeflow/pipelines at
tag 2.17.0 (commit 4a3592cb2dd0, the backend matching kfp 2.17.x); paths below are relative to
that repository. Where the snapshot at 7b70c7b95f68 (Aug 2026) differs, it is said.

Reproduced behaviours, with the source each follows
----------------------------------------------------
Submission (API server + workflow compiler)
  * String runtime parameters get run macros ``[[RunUUID]]``, ``[[CurrentTime]]``,
    ``{{$.currentTime.strftime('…')}}`` expanded; declared types are checked (a NUMBER_* input
    needs a number, STRING a string, …), unknown parameters are refused, required ones must be
    given -- apiserver/template/v2_template.go ``RunWorkflow``, ``validatePipelineJobInputs``;
    common/util/parameter_formatter.go ``Format``. Failures raise ``SubmissionError``.
  * Missing root parameters take their IR default, or null when optional -- compiler/argocompiler/
    argo.go ``Compile``. The pipeline root is the run's ``pipeline_root`` or the launcher config
    default ``minio://mlpipeline/v2/artifacts``; the IR's ``defaultPipelineRoot`` is NOT used by
    this backend -- driver/root_dag.go ``RootDAG``, config/env.go ``DefaultPipelineRoot``. The
    run's root is ``<root>/<pipeline name>/<run id>`` -- metadata/client.go ``GetPipeline``,
    ``GenerateOutputURI``.

Scheduling (Argo, compiler/argocompiler/dag.go, container.go)
  * A task starts when every ``dependentTasks`` entry Succeeded (``depends(...)`` builds
    ``a.Succeeded && b.Succeeded``); otherwise it is OMITTED. Tasks with
    ``triggerPolicy.strategy: ALL_UPSTREAM_TASKS_COMPLETED`` (dsl.ExitHandler's exit task) run
    regardless. After a failure no new task starts except those (Argo ``failFast``). A false
    condition SKIPS the task (``when: condition != false``); a cache hit counts as Succeeded.
  * ``retryPolicy`` applies to the executor pod only (``addContainerExecutorTemplate``,
    ``getTaskRetryParametersWithValues``): the driver runs once, so every attempt gets the SAME
    executor input. A driver failure is never retried. Argo's retry rules (argo-workflows
    v3.6.19 workflow/controller/operator.go ``processNodeRetries``) run on a simulated clock: an
    attempt counts as its real run time plus the ``ran_for_s`` of the kill hook that stopped
    it, a backoff as its configured ``duration * factor**(n-1)`` (whole seconds; the real wait
    is shrunk by ``backoff_scale``). No retry once the clock passes first start +
    ``backoffMaxDuration`` ("Max duration limit exceeded") or when the backoff would end past
    it ("Backoff would exceed max duration limit"); a RETRIED attempt still running at that
    point is stopped (``workflowpod.go getDeadline`` -> ``ARGO_DEADLINE``). The KFP compiler
    sets no ``retryPolicy`` (argocompiler/container.go ``getTaskRetryStrategyFromInput``), so
    Argo's default OnFailure applies (``RetryPolicyActual``): a Failed attempt is retried, an
    Error one (pod deleted) is not -- ``kill_on(..., phase="Error")``.
  * Tasks run one at a time, ready tasks in name order (Argo runs siblings in parallel; a
    loop's ``parallelismLimit`` is recorded). So a later iteration can hit the cache entry of
    an earlier one, and after a failure the iterations not yet started never start.

Driver (driver/driver.go, container.go, dag.go, resolve.go, util.go)
  * Inputs: ``componentInputParameter`` from the parent DAG's inputs (null -> skipped when the
    component input is optional, else "the resolved input parameter is null");
    ``taskOutputParameter``/``taskOutputArtifact`` from a producer, following sub-DAG outputs
    (``valueFromParameter``, ``artifactSelectors``) down to a container; ``dsl.Collected`` over a
    ParallelFor gathers every iteration's value into a list (``CollectInputs``); ``dsl.OneOf``
    takes the first selector whose sub-task is COMPLETE or CACHED in ML Metadata
    (``GetProducerTask``); runtime constants and the placeholders ``{{$.pipeline_job_name}}``
    (run display name), ``{{$.pipeline_job_resource_name}}`` (workflow name),
    ``{{$.pipeline_job_uuid}}`` (run id), ``{{$.pipeline_task_name}}`` (task name),
    ``{{$.pipeline_task_uuid}}`` (the PARENT DAG's execution id),
    ``{{$.pipeline_job_create_time_utc}}``, ``{{$.pipeline_job_schedule_time_utc}}`` (empty for
    a one-off run) are substituted only when they are the whole constant
    (``resolveInputParameter``); ``taskFinalStatus`` for exit tasks; ``literals`` are enforced.
  * A DAG's artifact inputs, read back by its sub-tasks' drivers and by ParallelFor iteration
    drivers, keep ONE artifact per name (metadata/client.go ``GetInputArtifactsByExecutionID``
    builds a map name -> artifact), so a ``dsl.Collected`` list passed into a sub-pipeline
    arrives there with a single artifact (kubeflow/pipelines issue 13900, open). A list taken
    at the root from the loop (``CollectInputs``) keeps every artifact.
  * Pod resources (driver.go ``initPodSpecPatch``, run after the cache check): CPU/memory
    limits and requests and the accelerator limit, with pod-spec placeholders resolved as
    STRINGS (resolve.go ``resolvePodSpecInputRuntimeParameter`` returns ``GetStringValue()``):
    a number parameter resolves to "" and the ``nvidia.com/gpu`` (or TPU) limit is silently
    left out. Recorded in ``TaskResult.pod_spec["resources"]``.
  * Types (``resolveInputs`` -> ``handleParamTypeValidationAndConversion``): a STRING input takes
    any value, converted with ``PbValueToText`` (2.0 -> "2", lists/structs -> JSON); any other
    type must match the value's kind, else "input parameter %q type mismatch: expect %s, got %s".
    Integral doubles: NUMBER_INTEGER and NUMBER_DOUBLE both accept any number -- there is no
    integrality check (2.0 and 2.5 both pass for an ``int``); the executor input is written
    with ``protojson``, which prints 2.0 as ``2``, so the component reads an ``int`` (2.5 would
    arrive as a float). Only the component's declared inputs are checked.
  * A DAG driver gives optional DAG inputs not passed by the task their default or null.
    ParallelFor: the iterator counts ``parameterIterator`` items (an input parameter, a JSON
    string, or ``raw`` JSON); each iteration driver copies the loop DAG's inputs, removes the
    items input, sets ``itemInput`` to ``items[i]`` and validates it against the loop
    component's declared item type (``-> list`` declares STRING items, so a number item becomes
    the string "1" and an ``int`` consumer then fails; ``-> List[int]`` declares NUMBER_INTEGER).
    ``artifactIterator``: "ArtifactIterator is not implemented" (dag.go).
  * Conditions: ``triggerPolicy.condition`` is CEL over the resolved inputs (expression/
    expression.go ``Condition``; see cel.py for the subset and semantics). A false condition
    records a CANCELED execution and runs nothing below it.
  * Outputs: artifact URIs ``<run root>/<task name>/<uuid>/<output name>``, output parameters in
    ``/tmp/kfp/outputs/<name>``, the executor output file ``<local task root>/
    output_metadata.json`` (2.15.0 driver.go ``provisionOutputs``; 2.14 writes
    ``/tmp/kfp_outputs/output_metadata.json`` for every task).
  * ``{{$.inputs.parameters['x']}}`` in command/args is resolved by the driver from the executor
    input WITHOUT defaults (``pbValueToString``; missing -> "parameter %q not found in executor
    input"); ``{"IfPresent": …}`` args are resolved; ``{"Concat": …}`` is not (left literal).
  * Kubernetes platform spec: recorded; ``nodeSelector`` and ``tolerations`` (static or
    ``*Json`` from a parameter) are resolved as the driver does and recorded in
    ``TaskResult.pod_spec`` (k8s.go ``extendPodSpecPatch``, ``resolveK8sJsonParameter``).
  * Caching (driver/cache.go ``getFingerPrint``, cacheutils/cache.go ``GenerateCacheKey``,
    ``GenerateFingerPrint``): sha256 of the ``CacheKey`` JSON with the input parameter values,
    the input artifacts' ML Metadata ids, the output artifacts' name/type/metadata (URI wiped),
    the output parameters' types, the raw command+args and the image; looked up by fingerprint,
    ``pipeline/<pipeline name>`` and namespace, newest first. A hit reuses the cached
    execution's output parameters and the SAME artifacts (ids, URIs); the launcher does not run.
    Entries are written by the launcher after success only, for tasks with
    ``cachingOptions.enableCache``. A ``cacheKey`` in ``cachingOptions`` is ignored by 2.17.0;
    ``honor_cache_key=True`` applies the later rule (sha256 of component name, NUL, key).

Launcher (component/launcher_v2.go)
  * Component defaults are added for absent inputs (``addDefaultParams``), then ``{{$}}`` and
    the artifact/parameter placeholders are substituted (``compileCmdAndArgs``, which replaces
    only ``{{$}}`` in the command's first word); the command runs with no shell of its own.
    The placeholders are replaced textually AFTER ``{{$}}``, so inside the executor input JSON
    too: a parameter whose value is ``{{$.inputs.parameters['pipelinechannel--x']}}`` (what the
    compiler binds for resource settings from pipeline parameters) reaches the component as
    x's text -- but the driver has type-checked the literal placeholder string before that.
  * Before the command, every input artifact whose URI has a ``gs://``, ``minio://`` or
    ``s3://`` scheme is DOWNLOADED to its local path (``/gcs/…``, ``/minio/…``, ``/s3/…``;
    ``LocalPathForURI``) -- gs:// too: open-source KFP has no FUSE mount. Other schemes are
    skipped with a warning (``downloadArtifacts``).
  * After exit 0: the executor output file is read (missing = empty; unknown fields fail,
    ``getExecutorOutputFile``); parameters it lacks are read from their output files and parsed
    with the declared type (``collectOutputParameters``, ``TextToPbValue``); each output
    artifact gets the executor output's URI/metadata merged in (``mergeRuntimeArtifacts``) and is
    UPLOADED from its local path (a file -> one object, a folder -> its files; nothing written
    -> a warning, still recorded; a URI outside the run root -> error) and recorded in ML
    Metadata (``uploadOutputArtifacts``, ``RecordArtifact``).
  * ML Metadata round trip of artifact metadata (metadata/converter.go
    ``StructValueToMLMDValue``, ``toRuntimeArtifact``): downstream tasks see numbers as doubles,
    bools as 1/0, lists wrapped as ``{"list": […]}``, dicts as ``{"struct": {…}}``, plus
    ``display_name`` and ``store_session_info``; a null value fails the upload. Downstream input
    artifacts carry ``name`` = the ML Metadata id and no schema title (type
    ``{"instanceSchema": ""}`` from a producer, no type through a DAG input).
  * ML Metadata DAG states: a DAG becomes COMPLETE when COMPLETE+CACHED+CANCELED children equal
    its task count (iteration count for a loop), FAILED when a child failed; only a launcher
    (a task that really ran) triggers that update (metadata/client.go
    ``UpdateDAGExecutionsState``), so a branch whose tasks were all cache hits stays RUNNING and a
    ``dsl.OneOf`` over it finds no successful branch, as on a cluster. Because tasks run one at
    a time here, a DAG in which a launcher ran is counted once more when its tasks are done
    (on a cluster the sibling drivers have created their executions by the time the last
    launcher finishes).

Local execution (the runner's own choices)
  * Every attempt runs in a fresh process: the container's ``command`` + ``args`` literally, with
    ``python_bin`` (the project's venv) first on PATH, cwd a fresh folder, env = ``base_env`` +
    the container's ``env`` + ``KFP_POD_NAME``/``KFP_POD_UID`` (+ ``KFP_RETRY_INDEX``). Images are
    not pulled; the image name is recorded.
  * A pod's file system is emulated by a "pod root" folder per task, wiped before every attempt
    (so outputs start EMPTY) and deleted when the task ends (``keep_pods`` keeps it): paths the
    backend fixes in the executor input (``/tmp/kfp/outputs/…``, the executor output file) are
    re-rooted under it, and ``_shim/sitecustomize.py`` (on PYTHONPATH) re-roots the SDK's
    ``/gcs/``, ``/minio/``, ``/s3/``, ``/oci/`` prefixes the moment ``kfp.dsl.types.
    artifact_types`` is imported. A sitecustomize was chosen over rewriting URIs because the
    component must see the backend's real URIs (``minio://…``) and derive paths from them
    itself, as on a cluster; an import hook keeps it lazy, and it needs no root, mount namespace
    or container. ``TaskResult.executor_input`` is the backend-exact JSON; the JSON actually
    passed is ``local_executor_input``. A path recorded by another task (a string) points into a
    pod root that no longer exists -- as on a cluster, where it was never downloaded.
  * ``kill_on(task, when)`` SIGKILLs an attempt (whole process group) when ``when(TaskDirs,
    attempt)`` turns true, polled every ``poll_interval_s``.
  * ``parameter_bindings`` lists every task input binding of the IR with both declared types;
    ``binding_problems`` keeps those the driver would refuse (type mismatch by the rules above,
    or a DAG input the enclosing DAG does not declare).

Not reproduced: importer tasks, PVC create/delete tasks, workspaces, OCI/modelcar artifacts,
``parameterExpressionSelector``, TaskConfig inputs, log artifacts (``executor-logs``), Kubernetes
scheduling itself (the recorded limits are not enforced), secrets/config maps/volumes from the
platform spec, parallel execution, Argo's workflow-level ``activeDeadlineSeconds``.

Backend versions (``backend_version``, default 2.17): the rules that differ between 2.14, 2.15,
2.16 and 2.17, each checked against the tag's source --
  * artifact ``dsl.OneOf``: before 2.17.0 the LAST selector, whichever branch ran (2.16.0
    driver/resolve.go ``GetProducerTask``; PR 13437);
  * DAG state: before 2.17.0 a launcher updates its parent DAG only, not the DAGs above it
    (2.16.0 metadata/client.go ``UpdateDAGExecutionsState``; PR 13322);
  * the executor output file: 2.14 uses ``/tmp/kfp_outputs/output_metadata.json``.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import json
import math
import os
import pathlib
import random
import re
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import yaml

from .cel import CelError, evaluate_condition
from .stores import ObjectStore, StoreError
from .values import (
    go_json,
    json_obj,
    kind_of,
    pb_value_to_string,
    pb_value_to_text,
    text_to_pb,
    to_pb,
)

__all__ = [
    "ArtifactRecord",
    "AttemptResult",
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

BACKEND_REFERENCE = "kubeflow/pipelines 2.17.0 (4a3592cb2dd0)"
# The releases whose rules differ where this runner says so (``backend_version``).
BACKEND_VERSIONS = ("2.14", "2.15", "2.16", "2.17")
LATEST_VERSION = BACKEND_VERSIONS[-1]
DEFAULT_PIPELINE_ROOT = "minio://mlpipeline/v2/artifacts"
_SHIM_DIR = pathlib.Path(__file__).resolve().parent / "_shim"
_LOCAL_PREFIXES = {"gs://": "/gcs/", "minio://": "/minio/", "s3://": "/s3/"}
_SUPPORTED_ROOTS = ("gs://", "s3://", "minio://", "mem://")
_OUTPUT_PARAMETER_DIR = "/tmp/kfp/outputs"
_LEGACY_OUTPUT_FILE = "/tmp/kfp_outputs/output_metadata.json"
_POD_CHANNEL_RE = re.compile(r"\$.inputs.parameters\['(.+?)'\]")
_QUANTITY_RE = re.compile(r"[+-]?[0-9.]+([eEinumkKMGTP]*[-+]?[0-9]*)")
_RUNTIME_PLACEHOLDERS = (
    "{{$.pipeline_job_name}}",
    "{{$.pipeline_job_resource_name}}",
    "{{$.pipeline_job_uuid}}",
    "{{$.pipeline_task_name}}",
    "{{$.pipeline_task_uuid}}",
    "{{$.pipeline_job_create_time_utc}}",
    "{{$.pipeline_job_schedule_time_utc}}",
)
_INPUT_PARAMETER_RE = re.compile(r"\{\{\$\.inputs\.parameters\['(.+?)']}}")
_DUMMY_IMAGES = {"argostub/createpvc": "create PVC", "argostub/deletepvc": "delete PVC"}
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# --- errors ------------------------------------------------------------------------------------


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


# --- the IR ------------------------------------------------------------------------------------


@dataclass
class PipelineIR:
    """A compiled pipeline: the PipelineSpec and the optional Kubernetes platform spec."""

    spec: dict[str, Any]
    platform_spec: dict[str, Any] | None = None
    source: str = ""

    @property
    def name(self) -> str:
        """``pipelineInfo.name``."""
        return str(self.spec["pipelineInfo"]["name"])

    def kubernetes_executor_config(self, executor_label: str) -> dict[str, Any] | None:
        """The platform spec's config for ``executor_label``, if any."""
        platforms = (self.platform_spec or {}).get("platforms", {})
        executors = platforms.get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
        return executors.get(executor_label)


def load_ir(source: str | os.PathLike[str] | Mapping[str, Any] | PipelineIR) -> PipelineIR:
    """Reads an IR YAML (path, text, or decoded dict; the fake API's stored form too).

    The first document is the PipelineSpec, an optional second one (with ``platforms``) the
    Kubernetes platform spec."""
    if isinstance(source, PipelineIR):
        return source
    origin = ""
    if isinstance(source, Mapping):
        data = dict(source)
        if "pipeline_spec" in data:
            spec, platform = dict(data["pipeline_spec"]), data.get("platform_spec")
        else:
            spec, platform = data, None
    else:
        text = str(source)
        if isinstance(source, os.PathLike) or (
            "\n" not in text and len(text) < 4096 and os.path.isfile(text)
        ):
            origin = os.fspath(source)
            text = pathlib.Path(origin).read_text(encoding="utf-8")
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
        specs = [d for d in docs if isinstance(d, dict) and "platforms" not in d]
        platforms = [d for d in docs if isinstance(d, dict) and "platforms" in d]
        if len(specs) != 1:
            raise ValueError(f"expected one PipelineSpec document, found {len(specs)}")
        spec, platform = specs[0], (platforms[0] if platforms else None)
    if not {"pipelineInfo", "root"} <= spec.keys():
        raise ValueError("not a PipelineSpec: pipelineInfo and root are required")
    return PipelineIR(spec=spec, platform_spec=platform, source=origin)


class Binding(NamedTuple):
    """One input parameter binding of the compiled IR."""

    consumer: str  # task path, e.g. "for-loop-1/square"
    input: str  # the consumer component's input name
    producer: str  # where the value comes from
    producer_type: str  # its declared type (parameterType)
    consumer_type: str  # the consumer's declared type


def _constant_type(value: Any, consumer_type: str) -> str:
    if isinstance(value, str):
        return "STRING"
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int | float):
        integral = float(value).is_integer()
        if consumer_type == "NUMBER_INTEGER" and integral:
            return "NUMBER_INTEGER"
        return "NUMBER_DOUBLE"
    if isinstance(value, list):
        return "LIST"
    if isinstance(value, dict):
        return "STRUCT"
    return "NULL"


def parameter_bindings(
    spec: Mapping[str, Any] | PipelineIR | str | os.PathLike[str],
) -> list[Binding]:
    """Every input parameter binding of every task (walking sub-DAGs from the root), with the
    producer's declared type and the consumer's declared type.

    Producers: a DAG input (for a loop item, the loop component's declared item type), another
    task's output, a constant (its JSON kind; a number takes the consumer's number type when it
    fits), or a task final status. The driver accepts a mismatch only for a STRING consumer
    (it converts) and between the two number types."""
    ir = load_ir(spec)  # type: ignore[arg-type]
    components = ir.spec.get("components", {})
    out: list[Binding] = []

    def walk(dag_component: Mapping[str, Any], prefix: str, label: str) -> None:
        tasks = dag_component.get("dag", {}).get("tasks", {})
        dag_inputs = dag_component.get("inputDefinitions", {}).get("parameters", {})
        for key in sorted(tasks):
            task = tasks[key]
            comp = components.get(task.get("componentRef", {}).get("name", ""), {})
            consumer_inputs = comp.get("inputDefinitions", {}).get("parameters", {})
            path = f"{prefix}{key}"
            for name, binding in sorted(task.get("inputs", {}).get("parameters", {}).items()):
                consumer_type = consumer_inputs.get(name, {}).get("parameterType", "UNDECLARED")
                if "componentInputParameter" in binding:
                    source = binding["componentInputParameter"]
                    producer = f"{label} input {source!r}"
                    producer_type = dag_inputs.get(source, {}).get("parameterType", "UNDECLARED")
                    if source.endswith("-loop-item") or "loop-item-param" in source:
                        producer = f"{label} loop item {source!r}"
                elif "taskOutputParameter" in binding:
                    ref = binding["taskOutputParameter"]
                    producer_task = tasks.get(ref.get("producerTask", ""), {})
                    producer_comp = components.get(
                        producer_task.get("componentRef", {}).get("name", ""), {}
                    )
                    outputs = producer_comp.get("outputDefinitions", {}).get("parameters", {})
                    key_ = ref.get("outputParameterKey", "")
                    producer = f"{prefix}{ref.get('producerTask')}.outputs[{key_!r}]"
                    producer_type = outputs.get(key_, {}).get("parameterType", "UNDECLARED")
                elif "runtimeValue" in binding:
                    value = binding["runtimeValue"].get("constant")
                    producer = f"constant {json.dumps(value)}"
                    producer_type = _constant_type(value, consumer_type)
                elif "taskFinalStatus" in binding:
                    producer = f"final status of {binding['taskFinalStatus'].get('producerTask')}"
                    producer_type = "TASK_FINAL_STATUS"
                else:
                    producer, producer_type = f"unsupported binding {sorted(binding)}", "UNKNOWN"
                out.append(Binding(path, name, producer, producer_type, consumer_type))
            if "dag" in comp:
                walk(comp, f"{path}/", path)

    walk(ir.spec["root"], "", "pipeline")
    return out


def binding_problems(
    spec: Mapping[str, Any] | PipelineIR | str | os.PathLike[str],
) -> list[Binding]:
    """The bindings the driver would refuse at run time, judged from declared types:

    - the producer is an input its DAG does not declare ("parent DAG does not have input
      parameter ...");
    - the consumer's type is declared, is not STRING (the driver converts anything to text)
      and differs from the producer's, except NUMBER_INTEGER vs NUMBER_DOUBLE (both take any
      number) -- "input parameter ... type mismatch"."""
    numbers = {"NUMBER_INTEGER", "NUMBER_DOUBLE"}
    return [
        b
        for b in parameter_bindings(spec)
        if b.producer_type == "UNDECLARED"
        or (
            b.consumer_type not in ("STRING", "UNDECLARED")
            and b.producer_type != b.consumer_type
            and not {b.producer_type, b.consumer_type} <= numbers
        )
    ]


# --- results -----------------------------------------------------------------------------------


@dataclass
class ArtifactRecord:
    """An output artifact as the launcher uploaded and recorded it in ML Metadata."""

    id: int
    output_name: str
    uri: str
    schema_title: str
    schema_version: str
    metadata: dict[str, Any]  # what the component reported (merged runtime artifact metadata)
    mlmd_properties: dict[str, Any]  # what downstream tasks read back (converted, see docstring)
    local_path: str | None  # the pod-local path it was uploaded from (by the producing run)
    backend_local_path: str | None  # the path it has in a real pod (/minio/…, /gcs/…)
    producer: str  # task path
    uploaded: list[str] = field(default_factory=list)  # object URIs written

    def runtime_artifact(self, *, typed: bool) -> dict[str, Any]:
        """``toRuntimeArtifact``: what a consumer's executor input holds for this artifact."""
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


# --- internal state ----------------------------------------------------------------------------


@dataclass
class _Exec:
    """An ML Metadata execution (container or DAG) plus the tree the runner walks."""

    id: int
    kind: str  # "root", "dag", "loop", "iteration", "container"
    name: str  # task key ("" for root)
    path: str
    component: dict[str, Any]
    task: dict[str, Any]
    parent: _Exec | None
    result: TaskResult | None
    state: str = "RUNNING"  # ML Metadata state
    params: dict[str, Any] = field(default_factory=dict)  # input parameters
    artifacts: dict[str, list[ArtifactRecord]] = field(default_factory=dict)  # input artifacts
    out_params: dict[str, Any] = field(default_factory=dict)
    out_artifacts: dict[str, ArtifactRecord] = field(default_factory=dict)
    children: dict[str, _Exec] = field(default_factory=dict)  # by task key
    iterations: list[_Exec] = field(default_factory=list)
    iteration_index: int | None = None
    iteration_count: int | None = None
    argo: dict[str, str] = field(default_factory=dict)  # child task key -> Argo phase
    launched: bool = False  # a launcher below finished (and updated DAG states)

    def child_path(self, key: str) -> str:
        return f"{self.path}/{key}" if self.path else key

    def dag_tasks(self) -> dict[str, Any]:
        return self.component.get("dag", {}).get("tasks", {})


@dataclass
class _CacheEntry:
    execution_id: int
    run_id: str
    task: str
    out_params: dict[str, Any]
    out_artifacts: dict[str, ArtifactRecord]


@dataclass
class _Run:
    ir: PipelineIR
    result: RunResult
    created: dt.datetime
    session_info: dict[str, Any]
    run_dir: pathlib.Path
    failed: bool = False


@dataclass
class _KillHook:
    task: str
    when: Callable[[TaskDirs, int], bool]
    attempts: tuple[int, ...]
    ran_for_s: float = 0.0  # simulated run time of the killed attempt (Argo's clock)
    phase: str = "Failed"  # the Argo node phase the kill leaves: "Failed" or "Error"
    fired: list[str] = field(default_factory=list)


class _ArtInput(NamedTuple):
    records: list[ArtifactRecord]
    typed: bool  # a producer output (type instanceSchema "") or a DAG input (no type)


class _RetryPolicy(NamedTuple):
    """A task's ``retryPolicy`` as Argo applies it (durations in whole seconds)."""

    max_retries: int
    base: float
    factor: float
    max_duration: float

    @classmethod
    def of(cls, policy: Mapping[str, Any]) -> _RetryPolicy:
        if not policy:
            return cls(0, 0.0, 2.0, 0.0)
        duration = policy.get("backoffMaxDuration")
        return cls(
            max_retries=int(policy.get("maxRetryCount", 0) or 0),
            base=_parse_duration_seconds(policy.get("backoffDuration")),
            factor=float(policy.get("backoffFactor", 2.0) or 0.0),
            max_duration=_parse_duration_seconds(duration) if duration else 0,
        )

    def delay(self, number: int) -> float:
        """The backoff after attempt ``number``: ``duration * factor**(number-1)``."""
        return self.base * (self.factor ** (number - 1)) if self.base else 0.0


def _retry_refusal(
    attempt: AttemptResult, number: int, policy: _RetryPolicy, clock: float
) -> str | None:
    """Why Argo does not retry a failed attempt ("" when retries are simply used up), or None
    to retry. argo-workflows v3.6 workflow/controller/operator.go ``processNodeRetries``: past
    first start + ``maxDuration`` -> "Max duration limit exceeded"; the next start (this
    attempt's end + ``duration * factor**(n-1)``) past it -> "Backoff would exceed max duration
    limit"; then the retry policy: the KFP compiler sets none (argocompiler/container.go
    ``getTaskRetryStrategyFromInput``), so ``RetryPolicyActual`` (pkg/apis/workflow/v1alpha1/
    workflow_types.go) is OnFailure, which retries Failed nodes and not Error ones."""
    if not policy.max_retries:
        return ""
    limit = policy.max_duration
    if limit and clock > limit:
        return "Max duration limit exceeded"
    if limit and clock + policy.delay(number) > limit:
        return "Backoff would exceed max duration limit"
    if attempt.phase == "Error":
        return "Node not set to be retried after status: Error (retry policy OnFailure)"
    if number > policy.max_retries:
        return ""
    return None


class _NullParameter(Exception):
    """ErrResolvedParameterNull."""


# --- helpers -----------------------------------------------------------------------------------


def generate_output_uri(root: str, paths: Sequence[str], preserve_query: bool = False) -> str:
    """metadata.GenerateOutputURI: ``root/path/...`` keeping the scheme's ``//``."""
    query = ""
    parts = root.split("?")
    if len(parts) == 2:
        root = parts[0]
        if preserve_query:
            query = "?" + parts[1]
    joined = "/".join(p.strip("/") for p in paths if p)
    joined = os.path.normpath(joined) if joined else ""
    return f"{root.rstrip('/')}/{joined}{query}"


def local_path_for_uri(uri: str) -> str:
    """component.LocalPathForURI: the path an artifact has inside a pod."""
    for scheme, prefix in _LOCAL_PREFIXES.items():
        if uri.startswith(scheme):
            return prefix + uri[len(scheme) :]
    if uri.startswith("oci://"):
        return "/oci/" + uri[len("oci://") :].replace("/", "_") + "/models"
    raise ValueError(f"failed to generate local path for URI {uri}: unsupported storage scheme")


def _session_info(root: str) -> dict[str, Any]:
    """config.GetStoreSessionInfo with no provider config (a default install)."""
    provider = root.split("://", 1)[0]
    if not any(root.startswith(s) for s in _SUPPORTED_ROOTS) or not root.split("://", 1)[1]:
        raise ValueError(
            f"parse bucket config failed: unsupported Cloud bucket: {root!r}"
            if "://" in root
            else f"parse bucket config failed: unrecognized pipeline root format: {root!r}"
        )
    if provider == "minio" and "?" not in root:
        return {
            "Provider": "minio",
            "Params": {
                "accessKeyKey": "accesskey",
                "disableSSL": "true",
                "endpoint": "seaweedfs.kubeflow:9000",
                "fromEnv": "false",
                "maxRetries": "5",
                "region": "minio",
                "secretKeyKey": "secretkey",
                "secretName": "mlpipeline-minio-artifact",
            },
        }
    return {"Provider": provider, "Params": {"fromEnv": "true"}}


def _prefixed_bucket(run_root: str) -> str:
    """objectstore.Config.PrefixedBucket of the run root: ``scheme://bucket/prefix``."""
    scheme, _, rest = run_root.split("?")[0].partition("://")
    return f"{scheme}://{rest.rstrip('/')}"


def _k8s_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return name[:50] or "pipeline"


def _parse_duration_seconds(text: Any) -> int:
    """A protobuf Duration (``"30s"``) as the whole seconds the Argo compiler passes on."""
    if text is None or text == "":
        return 0
    if isinstance(text, int | float):
        return int(text)
    match = re.fullmatch(r"(-?\d+(?:\.\d+)?)s", str(text).strip())
    if not match:
        raise ValueError(f"not a protobuf Duration: {text!r}")
    return int(float(match.group(1)))


def _mlmd_value(value: Any) -> Any:
    """StructValueToMLMDValue then back through toRuntimeArtifact (see module docstring)."""
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


def _topological(tasks: Mapping[str, Any]) -> list[str]:
    """Task keys so that every task follows its ``dependentTasks`` (ties by name)."""
    pending = {k: set(tasks[k].get("dependentTasks", [])) & set(tasks) for k in tasks}
    order: list[str] = []
    while pending:
        ready = sorted(k for k, deps in pending.items() if not deps)
        if not ready:
            raise ValueError(f"dependency cycle among tasks {sorted(pending)}")
        for key in ready:
            order.append(key)
            del pending[key]
        for deps in pending.values():
            deps.difference_update(ready)
    return order


def _executor_input_json(executor_input: Mapping[str, Any]) -> str:
    """``protojson.Marshal(executorInput)`` as the component parses it."""
    return json.dumps(json_obj(executor_input), ensure_ascii=False, separators=(",", ":"))


# --- the runner --------------------------------------------------------------------------------


class BackendRunner:
    """Runs compiled KFP v2 pipelines the way the open-source backend does (see module doc).

    One runner holds the ML Metadata ids, the cache and the kill hooks; runs on the same runner
    share the cache, as runs on one cluster do."""

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
        honor_cache_key: bool = False,
        backoff_scale: float = 1.0,
        task_timeout_s: float | None = None,
        keep_pods: bool = False,
        poll_interval_s: float = 0.05,
        backend_version: str = LATEST_VERSION,
    ) -> None:
        if backend_version not in BACKEND_VERSIONS:
            raise ValueError(f"backend_version must be one of {', '.join(BACKEND_VERSIONS)}")
        self.backend_version = backend_version
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
        self.honor_cache_key = honor_cache_key
        self.backoff_scale = backoff_scale
        self.task_timeout_s = task_timeout_s
        self.keep_pods = keep_pods
        self.poll_interval_s = poll_interval_s
        self.runs: list[RunResult] = []
        self._cache: dict[tuple[str, str, str], list[_CacheEntry]] = {}
        self._hooks: list[_KillHook] = []
        self._next_execution = 0
        self._next_artifact = 0

    # --- public API ---------------------------------------------------------------------------

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
    ) -> _KillHook:
        """SIGKILLs an attempt of ``task`` (path, key or display name) once ``when(dirs,
        attempt)`` is true while it runs; only the given attempt numbers (default: the first).
        ``ran_for_s`` is how long the attempt counts as having run on Argo's clock (a
        preemption hours into training); ``phase`` is the node phase the kill leaves: "Failed"
        (the container was killed: OOM, eviction with the pod kept) or "Error" (the pod was
        deleted, e.g. its node was preempted -- operator.go ``podReconciliation``: "pod
        deleted"). Returns the hook; its ``fired`` lists the task paths killed."""
        if phase not in ("Failed", "Error"):
            raise ValueError(f"phase must be 'Failed' or 'Error', not {phase!r}")
        hook = _KillHook(
            task=task, when=when, attempts=tuple(attempts), ran_for_s=ran_for_s, phase=phase
        )
        self._hooks.append(hook)
        return hook

    def clear_hooks(self) -> None:
        """Removes every kill hook."""
        self._hooks.clear()

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
        refuse it."""
        ir = load_ir(pipeline)
        created = dt.datetime.now(dt.UTC).replace(microsecond=0)
        run_id = run_id or str(uuid.uuid4())
        suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        params = self._runtime_parameters(ir.spec, parameters or {}, run_id, created)
        root = pipeline_root or self.default_pipeline_root
        try:
            session, root_error = _session_info(root), None
        except ValueError as err:
            session, root_error = {}, str(err)
        run_root = generate_output_uri(root, [ir.name, run_id], preserve_query=True)
        result = RunResult(
            run_id=run_id,
            run_name=f"{_k8s_name(ir.name)}-{suffix}",
            display_name=display_name or ir.name,
            pipeline_name=ir.name,
            pipeline_root=root,
            run_root=run_root,
            parameters=params,
            platform_spec=ir.platform_spec,
        )
        self.runs.append(result)
        run_dir = self.workdir / f"run-{run_id}"
        run_dir.mkdir(parents=True, exist_ok=True)
        run = _Run(ir=ir, result=result, created=created, session_info=session, run_dir=run_dir)
        if root_error is not None:  # the root DAG driver fails: nothing runs
            result.state, result.error = (
                "FAILED",
                (
                    f"driver.RootDAG(pipelineName={ir.name}, runID={run_id}, runtimeConfig, "
                    f"componentSpec) failed: {root_error}"
                ),
            )
            if raise_on_failure:
                raise RunFailed(result)
            return result
        root_exec = _Exec(
            id=self._new_execution_id(),
            kind="root",
            name="",
            path="",
            component=ir.spec["root"],
            task={},
            parent=None,
            result=None,
            params=params,
        )
        self._run_dag_body(run, root_exec)
        result.state = "FAILED" if run.failed else "SUCCEEDED"
        if not run.failed and ir.spec["root"].get("dag", {}).get("outputs"):
            result.outputs = self._dag_outputs(run, root_exec)
        if run.failed and raise_on_failure:
            raise RunFailed(result)
        return result

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

    def at_least(self, version: str) -> bool:
        """Whether the emulated backend is ``version`` or newer."""
        return BACKEND_VERSIONS.index(self.backend_version) >= BACKEND_VERSIONS.index(version)

    def store_for(self, uri: str) -> ObjectStore:
        """The store serving ``uri``'s scheme."""
        for store in self.stores:
            if store.serves(uri):
                return store
        raise StoreError(f"no object store configured for {uri}")

    # --- submission ---------------------------------------------------------------------------

    def _runtime_parameters(
        self,
        spec: Mapping[str, Any],
        given: Mapping[str, Any],
        run_id: str,
        created: dt.datetime,
    ) -> dict[str, Any]:
        """API server macro formatting and validation, then the compiler's root defaults."""
        params = {k: to_pb(v) for k, v in given.items()}
        for key, value in params.items():
            if isinstance(value, str) and value:
                params[key] = _format_macros(value, run_id, created)
        declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
        invalid = "invalid pipeline job inputs: Invalid input error: "
        for name, pspec in declared.items():
            ptype = pspec.get("parameterType", "PARAMETER_TYPE_ENUM_UNSPECIFIED")
            if name not in params:
                if not pspec.get("isOptional") and "defaultValue" not in pspec:
                    raise SubmissionError(
                        f"{invalid}parameter {name} is not optional, yet has neither default "
                        "value nor user provided value"
                    )
                continue
            kind = kind_of(params[name])
            wanted = {
                "NUMBER_DOUBLE": ("number", "double or integer", "number value type"),
                "NUMBER_INTEGER": ("number", "double or integer", "number value type"),
                "STRING": ("string", "string", "string value type"),
                "BOOLEAN": ("bool", "bool", "bool value type"),
                "LIST": ("list", "list", "list value type"),
                "STRUCT": ("struct", "struct", "struct value type"),
            }.get(ptype)
            if ptype == "TASK_FINAL_STATUS":
                raise SubmissionError(
                    f"{invalid}input parameter {name} requires type TASK_FINAL_STATUS, which is "
                    "invalid for root component"
                )
            if wanted is None:
                raise SubmissionError(f"{invalid}input parameter {name} has unspecified type")
            if kind != wanted[0]:
                article = "the input parameter" if ptype != "NUMBER_DOUBLE" else "the parameter"
                if ptype in ("NUMBER_DOUBLE", "NUMBER_INTEGER"):
                    article = "the parameter value"
                raise SubmissionError(
                    f"{invalid}input parameter {name} requires type {wanted[1]}, but "
                    f"{article} is not of {wanted[2]}"
                )
            literals = pspec.get("literals")
            if literals and not any(to_pb(lit) == params[name] for lit in literals):
                raise SubmissionError(
                    f"{invalid}input parameter {name!r} value {params[name]!r} does not match "
                    f"any of the allowed literal values: {literals!r}"
                )
        extra = [name for name in params if name not in declared]
        if extra:
            raise SubmissionError(
                f"{invalid}parameter(s) provided are not required by pipeline: {', '.join(extra)}"
            )
        for name, pspec in declared.items():
            if name not in params:
                if "defaultValue" in pspec:
                    params[name] = to_pb(pspec["defaultValue"])
                elif pspec.get("isOptional"):
                    params[name] = None
        return params

    # --- scheduling ---------------------------------------------------------------------------

    def _run_dag_body(self, run: _Run, dag: _Exec) -> None:
        """Runs a DAG's tasks in dependency order with Argo's depends/failFast rules."""
        tasks = dag.dag_tasks()
        for key in _topological(tasks):
            task = tasks[key]
            exit_task = task.get("triggerPolicy", {}).get("strategy") == (
                "ALL_UPSTREAM_TASKS_COMPLETED"
            )
            deps = [d for d in task.get("dependentTasks", []) if d in tasks]
            if not exit_task and any(dag.argo.get(d) != "Succeeded" for d in deps):
                self._record_unrun(run, dag, key, task, "OMITTED")
                continue
            if run.failed and not exit_task:
                self._record_unrun(run, dag, key, task, "NOT_STARTED")
                continue
            comp = self._component(run, task)
            if "dag" in comp:
                self._drive_dag(run, dag, key, task, comp)
            else:
                self._drive_container(run, dag, key, task, comp)
        if dag.launched and dag.kind != "root":
            # On a cluster sibling drivers (fast) create their executions while the launchers
            # run, so the last launcher to finish sees every sibling: count again at the end.
            _recount(dag)

    def _component(self, run: _Run, task: Mapping[str, Any]) -> dict[str, Any]:
        name = task.get("componentRef", {}).get("name", "")
        try:
            return run.ir.spec["components"][name]
        except KeyError:
            raise DriverError(f"component spec for {name!r} not found") from None

    def _new_result(
        self, run: _Run, dag: _Exec, key: str, task: Mapping[str, Any], kind: str, path: str = ""
    ) -> TaskResult:
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
        run.result.tasks[path] = result
        return result

    def _record_unrun(
        self, run: _Run, dag: _Exec, key: str, task: Mapping[str, Any], state: str
    ) -> None:
        comp = run.ir.spec.get("components", {}).get(task.get("componentRef", {}).get("name"), {})
        kind = "container" if "dag" not in comp else ("loop" if _is_loop(task) else "dag")
        result = self._new_result(run, dag, key, task, kind)
        result.state = state
        dag.argo[key] = "Omitted" if state == "OMITTED" else "NotStarted"

    def _fail(self, run: _Run, result: TaskResult, dag: _Exec, error: str) -> None:
        result.state = "FAILED"
        result.error = error
        dag.argo[result.name] = "Failed"
        if not run.failed:
            run.failed = True
            run.result.failed_task = result.path
            run.result.error = error

    def _new_execution_id(self) -> int:
        self._next_execution += 1
        return self._next_execution

    def _new_artifact_id(self) -> int:
        self._next_artifact += 1
        return self._next_artifact

    def _info(
        self, run: _Run, kind: str, task: Mapping[str, Any], key: str, dag: _Exec, index: int | None
    ) -> str:
        """driver Options.info(): the prefix of every driver error."""
        msg = f"pipelineName={run.ir.name}, runID={run.result.run_id}"
        display = task.get("taskInfo", {}).get("name", "")
        if display:
            msg += f", taskDisplayName={json.dumps(display)}"
        if key:
            msg += f", taskName={json.dumps(key)}"
        comp_name = task.get("componentRef", {}).get("name", "")
        if comp_name:
            msg += f", component={json.dumps(comp_name)}"
        msg += f", dagExecutionID={dag.id}"
        if index is not None:
            msg += f", iterationIndex={index}"
        msg += ", componentSpec"
        comp = run.ir.spec.get("components", {}).get(comp_name, {})
        label = comp.get("executorLabel")
        if label and run.ir.kubernetes_executor_config(label) is not None:
            msg += ", KubernetesExecutorConfig"
        return f"driver.{kind}({msg}) failed: "

    # --- DAG driver ---------------------------------------------------------------------------

    def _drive_dag(
        self, run: _Run, dag: _Exec, key: str, task: dict[str, Any], comp: dict[str, Any]
    ) -> None:
        """driver.DAG for a sub-DAG, condition group or loop, then its tasks."""
        loop = _is_loop(task)
        result = self._new_result(run, dag, key, task, "loop" if loop else "dag")
        prefix = self._info(run, "DAG", task, key, dag, None)
        try:
            params, arts = self._resolve_inputs(run, dag, key, task, comp, None, "DAG")
            triggered = self._condition(task, params, result)
            count: int | None = None
            if task.get("artifactIterator") is not None:
                raise DriverError("ArtifactIterator is not implemented")
            if triggered and task.get("parameterIterator") is not None:
                count = _iteration_count(task["parameterIterator"], params)
                result.parallelism_limit = task.get("iteratorPolicy", {}).get("parallelismLimit")
        except (DriverError, CelError) as err:
            self._fail(run, result, dag, prefix + str(err))
            return
        node = _Exec(
            id=self._new_execution_id(),
            kind="loop" if loop else "dag",
            name=key,
            path=result.path,
            component=comp,
            task=task,
            parent=dag,
            result=result,
            state="RUNNING" if triggered else "CANCELED",
            params=params,
            artifacts={n: a.records for n, a in arts.items()},
            iteration_count=count,
        )
        dag.children[key] = node
        result.execution_id = node.id
        result.inputs = copy.deepcopy(params)
        result.input_artifacts = {n: _runtime_list(a) for n, a in arts.items()}
        result.iteration_count = count
        result.mlmd_state = node.state
        if not triggered:
            result.state = "SKIPPED"
            dag.argo[key] = "Skipped"
            return
        if loop:
            for index in range(count or 0):
                if not self._drive_iteration(run, node, key, task, comp, index):
                    break
            if node.launched:
                _recount(node)
        else:
            self._run_dag_body(run, node)
        failed = any(state == "Failed" for state in node.argo.values()) or any(
            it.result is not None and it.result.state == "FAILED" for it in node.iterations
        )
        result.mlmd_state = node.state
        if failed:
            result.state = "FAILED"
            result.error = result.error or "a task in this DAG failed"
            dag.argo[key] = "Failed"
            return
        result.state = "SUCCEEDED"
        dag.argo[key] = "Succeeded"
        if comp.get("dag", {}).get("outputs"):
            result.outputs = self._dag_outputs(run, node, result)

    def _drive_iteration(
        self,
        run: _Run,
        loop: _Exec,
        key: str,
        task: dict[str, Any],
        comp: dict[str, Any],
        index: int,
    ) -> bool:
        """The iteration driver (driver.DAG with an iteration index) and the iteration's tasks.
        Returns False when the run has failed and no further iteration may start."""
        if run.failed:
            return False
        path = f"{loop.path}[{index}]"
        result = self._new_result(run, loop, key, task, "iteration", path=path)
        result.iteration_index = index
        prefix = self._info(run, "DAG", task, key, loop, index)
        try:
            params, arts = self._resolve_inputs(run, loop, key, task, comp, index, "DAG")
            triggered = self._condition(task, params, result)
        except (DriverError, CelError) as err:
            self._fail(run, result, loop, prefix + str(err))
            return False
        node = _Exec(
            id=self._new_execution_id(),
            kind="iteration",
            name=key,
            path=path,
            component=comp,
            task=task,
            parent=loop,
            result=result,
            state="RUNNING" if triggered else "CANCELED",
            params=params,
            artifacts={n: a.records for n, a in arts.items()},
            iteration_index=index,
        )
        loop.iterations.append(node)
        result.execution_id = node.id
        result.inputs = copy.deepcopy(params)
        result.input_artifacts = {n: _runtime_list(a) for n, a in arts.items()}
        result.mlmd_state = node.state
        if not triggered:
            result.state = "SKIPPED"
            return True
        self._run_dag_body(run, node)
        result.mlmd_state = node.state
        if any(state == "Failed" for state in node.argo.values()):
            result.state = "FAILED"
            result.error = "a task in this iteration failed"
            return False
        result.state = "SUCCEEDED"
        return True

    def _condition(
        self, task: Mapping[str, Any], params: dict[str, Any], result: TaskResult
    ) -> bool:
        condition = task.get("triggerPolicy", {}).get("condition")
        if not condition:
            return True
        verdict = evaluate_condition(condition, params)
        result.condition_result = verdict
        return verdict

    # --- input resolution (resolve.go) ------------------------------------------------------

    def _resolve_inputs(
        self,
        run: _Run,
        dag: _Exec,
        key: str,
        task: Mapping[str, Any],
        comp: Mapping[str, Any],
        iteration_index: int | None,
        driver_type: str,
    ) -> tuple[dict[str, Any], dict[str, _ArtInput]]:
        """resolveInputs: the task's parameters and artifacts, type-checked as the driver does."""
        try:
            return self._resolve_inputs_inner(
                run, dag, key, task, comp, iteration_index, driver_type
            )
        except _NullParameter as err:
            raise DriverError(f"failed to resolve inputs: {err}") from None
        except DriverError as err:
            raise DriverError(f"failed to resolve inputs: {err}") from None

    def _resolve_inputs_inner(
        self,
        run: _Run,
        dag: _Exec,
        key: str,
        task: Mapping[str, Any],
        comp: Mapping[str, Any],
        iteration_index: int | None,
        driver_type: str,
    ) -> tuple[dict[str, Any], dict[str, _ArtInput]]:
        declared = comp.get("inputDefinitions", {}).get("parameters", {})
        params: dict[str, Any] = {}
        arts: dict[str, _ArtInput] = {}
        set_nil: set[str] = set()
        iterator = task.get("parameterIterator")
        if iteration_index is not None:
            params = copy.deepcopy(dag.params)
            arts = {n: _ArtInput(_read_back(dag, n), False) for n in dag.artifacts}
            if task.get("artifactIterator") is not None:
                raise DriverError("artifact iterator not implemented yet")
            if iterator is None:
                raise DriverError("bug: iteration_index>=0, but task iterator is empty")
            items_input = iterator.get("items", {}).get("inputParameter") or iterator.get(
                "itemInput"
            )
            if not items_input:
                raise DriverError("cannot retrieve parameter iterator")
            try:
                items = _get_items(params.get(items_input))
            except ValueError as err:
                raise DriverError(str(err)) from None
            if iteration_index >= len(items):
                raise DriverError(
                    f"bug: {len(items)} items found, but getting index {iteration_index}"
                )
            params.pop(items_input, None)
            params[iterator["itemInput"]] = items[iteration_index]
        else:
            if driver_type == "DAG":
                given = task.get("inputs", {}).get("parameters", {})
                for name, pspec in declared.items():
                    if name not in given and pspec.get("isOptional"):
                        if "defaultValue" in pspec:
                            params[name] = to_pb(pspec["defaultValue"])
                        else:
                            params[name] = None
                            set_nil.add(name)
            for name, binding in task.get("inputs", {}).get("parameters", {}).items():
                comp_param = declared.get(name)
                if comp_param is not None and comp_param.get("parameterType") == "TASK_CONFIG":
                    continue
                try:
                    value = self._resolve_parameter(run, dag, key, task, binding)
                except _NullParameter:
                    if comp_param is not None and comp_param.get("isOptional"):
                        continue
                    raise
                literals = (comp_param or {}).get("literals")
                if literals and not any(to_pb(lit) == value for lit in literals):
                    raise DriverError(
                        f"validating parameter {json.dumps(name)}: input parameter "
                        f"{json.dumps(name)} value {value!r} does not match any of the allowed "
                        f"literal values: {literals!r}"
                    )
                params[name] = value
            for name, binding in task.get("inputs", {}).get("artifacts", {}).items():
                arts[name] = self._resolve_artifact(run, dag, name, binding)
        for name in task.get("inputs", {}).get("parameters", {}):
            binding = task["inputs"]["parameters"][name]
            if binding.get("parameterExpressionSelector"):
                raise DriverError(
                    f"resolving parameter {json.dumps(name)}: parameterExpressionSelector is not "
                    "supported by this runner"
                )
        self._validate_types(task, declared, params, set_nil, iteration_index)
        return params, arts

    def _validate_types(
        self,
        task: Mapping[str, Any],
        declared: Mapping[str, Any],
        params: dict[str, Any],
        set_nil: set[str],
        iteration_index: int | None,
    ) -> None:
        """handleParamTypeValidationAndConversion."""
        iterator = task.get("parameterIterator")
        for name, spec in declared.items():
            if iterator is not None:
                if iteration_index is None and iterator.get("itemInput") == name:
                    continue
                items_input = iterator.get("items", {}).get("inputParameter")
                if iteration_index is not None and items_input == name:
                    continue
            ptype = spec.get("parameterType", "PARAMETER_TYPE_ENUM_UNSPECIFIED")
            has_value = name in params
            if not has_value and not spec.get("isOptional"):
                if "defaultValue" not in spec:
                    raise DriverError(
                        "neither value nor default value provided for non-optional parameter "
                        f"{json.dumps(name)}"
                    )
            elif not has_value:
                continue
            value = params.get(name)
            if ptype == "STRING":
                if not isinstance(value, str):
                    if name in set_nil:
                        continue
                    params[name] = pb_value_to_text(value)
                continue
            if not has_value:
                raise DriverError(f"parameter {name} has unknown protobuf.Value type: <nil>")
            kind = kind_of(value)
            if kind == "null":
                if name in set_nil:
                    continue
                raise DriverError(f"got null for input parameter {json.dumps(name)}")
            allowed = {
                "string": ("STRING",),
                "number": ("NUMBER_DOUBLE", "NUMBER_INTEGER"),
                "bool": ("BOOLEAN",),
                "list": ("LIST",),
                "struct": ("STRUCT", "TASK_FINAL_STATUS", "TASK_CONFIG"),
            }[kind]
            if ptype not in allowed:
                raise DriverError(
                    f"input parameter {json.dumps(name)} type mismatch: expect {ptype}, got {kind}"
                )

    def _resolve_parameter(
        self,
        run: _Run,
        dag: _Exec,
        key: str,
        task: Mapping[str, Any],
        binding: Mapping[str, Any],
    ) -> Any:
        """resolveInputParameter."""
        spec_text = json.dumps(binding, sort_keys=True)
        if "componentInputParameter" in binding:
            source = binding["componentInputParameter"]
            if not source:
                raise DriverError(f"resolving input parameter with spec {spec_text}: empty input")
            if source not in dag.params:
                raise DriverError(
                    f"resolving input parameter with spec {spec_text}: parent DAG does not have "
                    f"input parameter {source}"
                )
            value = dag.params[source]
            if value is None:
                raise _NullParameter(f"the resolved input parameter is null: {source}")
            return copy.deepcopy(value)
        if "taskOutputParameter" in binding:
            ref = binding["taskOutputParameter"]
            producer_key = ref.get("producerTask", "")
            output_key = ref.get("outputParameterKey", "")
            wrap = f"resolving input parameter with spec {spec_text}: "
            if not producer_key:
                raise DriverError(wrap + "producerTaskName is empty")
            if not output_key:
                raise DriverError(wrap + "output parameter key is empty")
            producer = dag.children.get(producer_key)
            if producer is None:
                raise DriverError(
                    wrap + f"producer task, {_mlmd_task_name(producer_key, dag)}, not in tasks"
                )
            try:
                return copy.deepcopy(self._output_of(producer, output_key, artifact=False))
            except DriverError as err:
                raise DriverError(wrap + str(err)) from None
        if "runtimeValue" in binding:
            constant = binding["runtimeValue"].get("constant")
            if isinstance(constant, str):
                if "{{$.workspace_path}}" in constant:
                    return constant.replace("{{$.workspace_path}}", "/kfp-workspace")
                if constant in _RUNTIME_PLACEHOLDERS:
                    return self._runtime_placeholder(run, dag, key, constant)
            return to_pb(constant)
        if "taskFinalStatus" in binding:
            deps = task.get("dependentTasks", [])
            name = task.get("taskInfo", {}).get("name", "")
            if not deps:
                raise DriverError(f"task {name} has no dependent tasks")
            producer = dag.children.get(deps[0])
            if producer is None:
                raise DriverError(f"producer task, {deps[0]}, not in tasks")
            status: dict[str, Any] = {"state": producer.state, "error": {}}
            if producer.name:
                status["pipelineTaskName"] = producer.name
            status["pipelineJobResourceName"] = run.result.run_name
            return status
        raise DriverError(f"parameter spec of type {sorted(binding)} not implemented yet")

    def _runtime_placeholder(self, run: _Run, dag: _Exec, key: str, constant: str) -> str:
        """The driver's values for the run/task placeholders (resolveInputParameter)."""
        return {
            "{{$.pipeline_job_name}}": run.result.display_name,
            "{{$.pipeline_job_resource_name}}": run.result.run_name,
            "{{$.pipeline_job_uuid}}": run.result.run_id,
            "{{$.pipeline_task_name}}": key,
            "{{$.pipeline_task_uuid}}": str(dag.id),
            "{{$.pipeline_job_create_time_utc}}": run.created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "{{$.pipeline_job_schedule_time_utc}}": "",
        }[constant]

    def _resolve_artifact(
        self, run: _Run, dag: _Exec, name: str, binding: Mapping[str, Any]
    ) -> _ArtInput:
        """resolveInputArtifact."""
        wrap = (
            f"failed to resolve input artifact {name} with spec "
            f"{json.dumps(binding, sort_keys=True)}: "
        )
        if "componentInputArtifact" in binding:
            source = binding["componentInputArtifact"]
            if not source:
                raise DriverError(wrap + "component input artifact key is empty")
            if source not in dag.artifacts:
                raise DriverError(wrap + f"parent DAG does not have input artifact {source}")
            return _ArtInput(_read_back(dag, source), False)
        if "taskOutputArtifact" in binding:
            ref = binding["taskOutputArtifact"]
            producer_key = ref.get("producerTask", "")
            if not producer_key:
                raise DriverError(wrap + "producer task is empty")
            producer = dag.children.get(producer_key)
            if producer is None:
                raise DriverError(
                    wrap + f'cannot find producer task "{_mlmd_task_name(producer_key, dag)}"'
                )
            try:
                found = self._output_of(producer, ref.get("outputArtifactKey", ""), artifact=True)
            except DriverError as err:
                raise DriverError(wrap + str(err)) from None
            return _ArtInput(list(found), True)
        raise DriverError(wrap + f"artifact spec of type {sorted(binding)} not implemented yet")

    def _output_of(self, producer: _Exec, key: str, *, artifact: bool) -> Any:
        """resolveUpstreamParameters / resolveUpstreamArtifacts from ``producer``'s output."""
        current = producer
        while True:
            if current.kind == "container":
                if artifact:
                    record = current.out_artifacts.get(key)
                    if record is None:
                        raise DriverError(
                            f"cannot find output artifact key {json.dumps(key)} in producer "
                            f"task {json.dumps(current.name)} (state {current.state})"
                        )
                    return [record]
                return current.out_params.get(key)
            if current.kind == "loop":
                collected = self._collect(current, key, artifact=artifact)
                return collected if artifact else list(collected)
            sub, key = self._producer_subtask(current, key, artifact=artifact)
            child = current.children.get(sub)
            if child is None:
                raise DriverError(f"subTaskName, {_mlmd_task_name(sub, current)}, not in tasks")
            current = child

    def _collect(self, node: _Exec, key: str, *, artifact: bool) -> list[Any]:
        """CollectInputs: every iteration's value (dsl.Collected), flattened across nesting."""
        if node.kind == "container":
            if artifact:
                record = node.out_artifacts.get(key)
                return [record] if record is not None else []
            return [node.out_params.get(key)]
        if node.kind == "loop":
            out: list[Any] = []
            for iteration in node.iterations:
                out.extend(self._collect(iteration, key, artifact=artifact))
            return out
        sub, sub_key = self._producer_subtask(node, key, artifact=artifact)
        child = node.children.get(sub)
        if child is None:
            raise DriverError(f"subTaskName, {_mlmd_task_name(sub, node)}, not in tasks")
        return self._collect(child, sub_key, artifact=artifact)

    def _producer_subtask(self, dag: _Exec, key: str, *, artifact: bool) -> tuple[str, str]:
        """GetProducerTask: the sub-task (and its output key) behind a DAG output."""
        outputs = dag.component.get("dag", {}).get("outputs", {})
        if artifact:
            spec = outputs.get("artifacts", {}).get(key)
            if spec is None:
                raise DriverError(
                    f"artifact output key {json.dumps(key)} not found in parent task "
                    f"{json.dumps(dag.name)} (dag ID {dag.id})"
                )
            selectors = spec.get("artifactSelectors", [])
            if len(selectors) == 1 or (selectors and not self.at_least("2.17")):
                # Before 2.17.0 an artifact OneOf takes the LAST selector, whichever branch ran
                # (2.16.0 resolve.go GetProducerTask; fixed by PR 13437).
                return selectors[-1]["producerSubtask"], selectors[-1]["outputArtifactKey"]
            keyname = "outputArtifactKey"
        else:
            spec = outputs.get("parameters", {}).get(key)
            if spec is None:
                raise DriverError(
                    f"parameter output key {json.dumps(key)} not found in parent task "
                    f"{json.dumps(dag.name)} (dag ID {dag.id})"
                )
            if "valueFromParameter" in spec:
                ref = spec["valueFromParameter"]
                return ref["producerSubtask"], ref["outputParameterKey"]
            selectors = spec.get("valueFromOneof", {}).get("parameterSelectors", [])
            keyname = "outputParameterKey"
        for selector in selectors:
            child = dag.children.get(selector["producerSubtask"])
            if child is not None and child.state in ("COMPLETE", "CACHED"):
                return selector["producerSubtask"], selector[keyname]
        raise DriverError(
            f"processing OneOf: No successful task found for output key {json.dumps(key)} in "
            f"parent task {json.dumps(dag.name)} (dag ID {dag.id})"
        )

    def _dag_outputs(
        self, run: _Run, node: _Exec, result: TaskResult | None = None
    ) -> dict[str, Any]:
        """The DAG's declared outputs as a consumer would resolve them (for the result)."""
        outputs = node.component.get("dag", {}).get("outputs", {})
        values: dict[str, Any] = {}
        for key in outputs.get("parameters", {}):
            try:
                values[key] = self._output_of(node, key, artifact=False)
            except DriverError as err:
                values[key] = f"<unresolved: {err}>"
        for key in outputs.get("artifacts", {}):
            try:
                records = self._output_of(node, key, artifact=True)
            except DriverError as err:
                values[key] = f"<unresolved: {err}>"
                continue
            if result is not None:
                result.collected_artifacts[key] = list(records)
                if len(records) == 1:
                    result.output_artifacts[key] = records[0]
            values[key] = [r.uri for r in records]
        return values

    # --- container driver + launcher ----------------------------------------------------------

    def _drive_container(
        self, run: _Run, dag: _Exec, key: str, task: dict[str, Any], comp: dict[str, Any]
    ) -> None:
        """driver.Container, then the launcher pods (with retries) unless skipped or cached."""
        result = self._new_result(run, dag, key, task, "container")
        prefix = self._info(run, "Container", task, key, dag, None)
        label = comp.get("executorLabel", "")
        executor = run.ir.spec.get("deploymentSpec", {}).get("executors", {}).get(label, {})
        container = executor.get("container")
        k8s = run.ir.kubernetes_executor_config(label)
        result.kubernetes_config = k8s
        if container is None:
            kind = next(iter(executor), "missing")
            self._fail(run, result, dag, prefix + f"{kind} executors are not supported here")
            return
        image = str(container.get("image", ""))
        result.image = image
        try:
            params, arts = self._resolve_inputs(run, dag, key, task, comp, None, "CONTAINER")
            triggered = self._condition(task, params, result)
            if image in _DUMMY_IMAGES:
                raise DriverError(f"{_DUMMY_IMAGES[image]} tasks are not supported by this runner")
            outputs = (
                self._provision_outputs(run, key, comp.get("outputDefinitions", {}))
                if triggered
                else None
            )
            executor_input: dict[str, Any] = {"inputs": _inputs_json(params, arts)}
            if outputs is not None:
                executor_input["outputs"] = outputs
            fingerprint, cached = None, None
            if not self.cache_disabled and triggered and _cache_enabled(task):
                fingerprint = self._fingerprint(task, comp, container, executor_input)
                entries = self._cache.get((fingerprint, f"pipeline/{run.ir.name}", self.namespace))
                cached = entries[-1] if entries else None
        except (DriverError, CelError) as err:
            self._fail(run, result, dag, prefix + str(err))
            return
        node = _Exec(
            id=self._new_execution_id(),
            kind="container",
            name=key,
            path=result.path,
            component=comp,
            task=task,
            parent=dag,
            result=result,
            state="RUNNING" if triggered else "CANCELED",
            params=params,
            artifacts={n: a.records for n, a in arts.items()},
        )
        dag.children[key] = node
        result.execution_id = node.id
        result.inputs = copy.deepcopy(params)
        result.input_artifacts = {n: _runtime_list(a) for n, a in arts.items()}
        result.fingerprint = fingerprint
        result.mlmd_state = node.state
        if not triggered:
            result.state = "SKIPPED"
            dag.argo[key] = "Skipped"
            return
        if cached is not None:
            self._take_cache_hit(run, dag, node, result, cached, prefix)
            return
        try:  # initPodSpecPatch and extendPodSpecPatch run only when the pod will be created
            result.pod_spec = {"resources": _pod_resources(container, executor_input)}
            if k8s is not None:
                result.pod_spec.update(self._k8s_pod_spec(run, dag, key, task, k8s))
            user_command = _resolve_container_args(
                [*container.get("command", []), *container.get("args", [])], executor_input
            )
        except DriverError as err:  # after CreateExecution: it stays RUNNING
            self._fail(run, result, dag, prefix + str(err))
            return
        self._launch(run, dag, node, result, executor_input, user_command, container, fingerprint)

    def _take_cache_hit(
        self,
        run: _Run,
        dag: _Exec,
        node: _Exec,
        result: TaskResult,
        cached: _CacheEntry,
        prefix: str,
    ) -> None:
        """A cache hit: the cached execution's outputs, no pod."""
        try:
            self._reuse_cache(node, cached, node.component)
        except DriverError as err:  # the execution stays RUNNING in ML Metadata
            self._fail(run, result, dag, prefix + str(err))
            return
        result.state = "CACHED"
        result.cache_hit = True
        result.outputs = copy.deepcopy(node.out_params)
        result.output_artifacts = dict(node.out_artifacts)
        result.mlmd_state = node.state
        dag.argo[node.name] = "Succeeded"

    def _provision_outputs(
        self, run: _Run, task_name: str, outputs_spec: Mapping[str, Any]
    ) -> dict[str, Any]:
        """provisionOutputs: output URIs under the run root, parameter files, output file."""
        task_root = generate_output_uri(run.result.run_root, [task_name, str(uuid.uuid4())])
        artifacts: dict[str, Any] = {}
        for name, spec in outputs_spec.get("artifacts", {}).items():
            runtime: dict[str, Any] = {
                "name": name,
                "uri": generate_output_uri(task_root, [name]),
                "type": copy.deepcopy(spec.get("artifactType", {})),
            }
            if spec.get("metadata"):
                runtime["metadata"] = to_pb(spec["metadata"])
            artifacts[name] = {"artifacts": [runtime]}
        parameters = {
            name: {"outputFile": f"{_OUTPUT_PARAMETER_DIR}/{name}"}
            for name in outputs_spec.get("parameters", {})
        }
        # 2.15.0 driver.go provisionOutputs moved it under the local task root; 2.14.0 has
        # component.OutputMetadataFilepath for every task.
        output_file = _LEGACY_OUTPUT_FILE
        if self.at_least("2.15"):
            with contextlib.suppress(ValueError):
                output_file = local_path_for_uri(task_root) + "/output_metadata.json"
        out: dict[str, Any] = {}
        if artifacts:
            out["artifacts"] = artifacts
        if parameters:
            out["parameters"] = parameters
        out["outputFile"] = output_file
        return out

    def _fingerprint(
        self,
        task: Mapping[str, Any],
        comp: Mapping[str, Any],
        container: Mapping[str, Any],
        executor_input: Mapping[str, Any],
    ) -> str:
        """getFingerPrint: sha256 of the CacheKey as GenerateFingerPrint serialises it."""
        custom = task.get("cachingOptions", {}).get("cacheKey", "")
        if custom and self.honor_cache_key:
            digest = hashlib.sha256()
            name = task.get("componentRef", {}).get("name", "")
            if name:
                digest.update(name.encode() + b"\0")
            digest.update(custom.encode())
            return digest.hexdigest()
        inputs = executor_input.get("inputs", {})
        outputs = executor_input.get("outputs", {})
        out_types = {
            n: s.get("parameterType", "PARAMETER_TYPE_ENUM_UNSPECIFIED")
            for n, s in comp.get("outputDefinitions", {}).get("parameters", {}).items()
        }
        key: dict[str, Any] = {}
        if inputs.get("artifacts"):
            key["inputArtifactNames"] = {
                name: {"artifactNames": [a["name"] for a in lst["artifacts"]]}
                for name, lst in inputs["artifacts"].items()
            }
        if outputs.get("artifacts"):
            spec: dict[str, Any] = {}
            for name, lst in outputs["artifacts"].items():
                art = lst["artifacts"][0]
                wiped = {"name": art["name"], "type": art.get("type", {})}
                if art.get("metadata"):
                    wiped["metadata"] = art["metadata"]
                spec[name] = wiped
            key["outputArtifactsSpec"] = spec
        if outputs.get("parameters"):
            key["outputParametersSpec"] = {n: out_types[n] for n in outputs["parameters"]}
        container_spec: dict[str, Any] = {}
        if container.get("image"):
            container_spec["image"] = container["image"]
        cmd_args = [*container.get("command", []), *container.get("args", [])]
        if cmd_args:
            container_spec["cmdArgs"] = cmd_args
        key["containerSpec"] = container_spec
        if inputs.get("parameterValues"):
            key["inputParameterValues"] = inputs["parameterValues"]
        return hashlib.sha256(go_json(key).encode("utf-8")).hexdigest()

    def _reuse_cache(self, node: _Exec, entry: _CacheEntry, comp: Mapping[str, Any]) -> None:
        """reuseCachedOutputs: the cached execution's parameters and the same artifacts."""
        for name in comp.get("outputDefinitions", {}).get("artifacts", {}):
            if name not in entry.out_artifacts:
                raise DriverError(f"unable to find artifact with name {name} in mlmd output")
        node.out_params = copy.deepcopy(entry.out_params)
        node.out_artifacts = dict(entry.out_artifacts)
        node.state = "CACHED"

    def _k8s_pod_spec(
        self, run: _Run, dag: _Exec, key: str, task: Mapping[str, Any], k8s: Mapping[str, Any]
    ) -> dict[str, Any]:
        """extendPodSpecPatch's node selector and tolerations (the rest is recorded only)."""
        pod: dict[str, Any] = {}
        selector = k8s.get("nodeSelector")
        if selector is not None:
            if selector.get("nodeSelectorJson") is not None:
                try:
                    value = self._resolve_parameter(
                        run, dag, key, task, selector["nodeSelectorJson"]
                    )
                except _NullParameter:
                    value = None
                except DriverError as err:
                    raise DriverError(
                        f"failed to resolve node selector: failed to resolve k8s parameter: {err}"
                    ) from None
                if value is not None:
                    struct = value if isinstance(value, dict) else {}
                    bad = {k: v for k, v in struct.items() if not isinstance(v, str)}
                    if bad:
                        kind = kind_of(next(iter(bad.values())))
                        raise DriverError(
                            "failed to resolve node selector: failed to unmarshal k8s Resource "
                            "json ensure that k8s Resource json correctly adheres to its "
                            f"respective k8s spec: json: cannot unmarshal {kind} into Go value "
                            "of type string"
                        )
                    pod["nodeSelector"] = dict(struct)
            else:
                pod["nodeSelector"] = dict(selector.get("labels", {}))
        tolerations = k8s.get("tolerations")
        if tolerations is not None:
            out: list[dict[str, Any]] = []
            for toleration in tolerations:
                if toleration.get("tolerationJson") is not None:
                    try:
                        value = self._resolve_parameter(
                            run, dag, key, task, toleration["tolerationJson"]
                        )
                    except _NullParameter:
                        continue
                    except DriverError as err:
                        raise DriverError(f"failed to resolve toleration: {err}") from None
                    if isinstance(value, dict):
                        if value:
                            out.append(_k8s_toleration(value, "single"))
                    elif isinstance(value, list):
                        out.extend(_k8s_toleration(v, "list") for v in value)
                    else:
                        raise DriverError(
                            "encountered unexpected toleration proto value, must be either "
                            "struct or list type"
                        )
                else:
                    fields = ("key", "operator", "value", "effect", "tolerationSeconds")
                    out.append({f: toleration[f] for f in fields if f in toleration})
            pod["tolerations"] = out
        return pod

    # --- launcher -----------------------------------------------------------------------------

    def _launch(
        self,
        run: _Run,
        dag: _Exec,
        node: _Exec,
        result: TaskResult,
        executor_input: dict[str, Any],
        user_command: list[str],
        container: Mapping[str, Any],
        fingerprint: str | None,
    ) -> None:
        """Launcher pods for one container execution, retried per ``retryPolicy``."""
        pod_root = run.run_dir / "pods" / f"{node.id}-{node.name}"
        with_defaults = _add_default_params(executor_input, node.component)
        local_input = _localize(with_defaults, pod_root)
        result.executor_input = _received_input(with_defaults, lambda p: p)
        result.local_executor_input = _received_input(
            local_input, lambda p: str(_pod_path(pod_root, p))
        )
        command = _compile_cmd_and_args(user_command, local_input, pod_root)
        result.command = command
        self._attempts(run, node, result, local_input, command, container, pod_root)
        if not self.keep_pods:
            shutil.rmtree(pod_root, ignore_errors=True)
        final = result.attempts[-1]
        if not final.succeeded:
            self._fail(run, result, dag, f"failed to execute component: {final.error}")
            return
        result.state = "SUCCEEDED"
        result.outputs = copy.deepcopy(node.out_params)
        result.output_artifacts = dict(node.out_artifacts)
        dag.argo[node.name] = "Succeeded"
        if fingerprint:
            self._cache.setdefault(
                (fingerprint, f"pipeline/{run.ir.name}", self.namespace), []
            ).append(
                _CacheEntry(
                    execution_id=node.id,
                    run_id=run.result.run_id,
                    task=result.path,
                    out_params=copy.deepcopy(node.out_params),
                    out_artifacts=dict(node.out_artifacts),
                )
            )

    def _attempts(
        self,
        run: _Run,
        node: _Exec,
        result: TaskResult,
        local_input: dict[str, Any],
        command: list[str],
        container: Mapping[str, Any],
        pod_root: pathlib.Path,
    ) -> None:
        """Attempts until one succeeds or Argo retries no more, on Argo's simulated clock."""
        policy = _RetryPolicy.of(node.task.get("retryPolicy") or {})
        clock = 0.0  # Argo's clock, seconds since the first attempt started (simulated)
        number = 0
        while True:
            number += 1
            attempt = self._attempt(
                run, node, result, local_input, command, container, pod_root, number
            )
            limit = policy.max_duration
            if number > 1 and limit and clock + attempt.simulated_s > limit:
                # workflowpod.go getDeadline: a retried pod's ARGO_DEADLINE is the first start
                # + maxDuration; argoexec stops the container there.
                attempt.error = attempt.error or "step exceeded its deadline"
                attempt.error = f"{attempt.error} (ARGO_DEADLINE: first start + {limit:g}s)"
                attempt.phase = "Failed"
                attempt.simulated_s = limit - clock
            clock += attempt.simulated_s
            result.attempts.append(attempt)
            node.state = "COMPLETE" if attempt.succeeded else "FAILED"
            result.mlmd_state = node.state
            _update_dag_states(node, recursive=self.at_least("2.17"))
            if attempt.succeeded:
                return
            stop = _retry_refusal(attempt, number, policy, clock)
            if stop is not None:
                if stop:
                    result.warnings.append(stop)
                return
            delay = policy.delay(number)
            result.retry_delays_s.append(delay)
            time.sleep(delay * self.backoff_scale)
            clock += delay

    def _pod_env(
        self,
        run: _Run,
        node: _Exec,
        container: Mapping[str, Any],
        pod_root: pathlib.Path,
        attempt: int,
    ) -> dict[str, str]:
        env = dict(self.base_env)
        for item in container.get("env", []) or []:
            env[str(item.get("name"))] = str(item.get("value", ""))
        path = env.get("PATH", _DEFAULT_PATH)
        env["PATH"] = f"{self.python_bin}{os.pathsep}{path}"
        python_path = env.get("PYTHONPATH", "")
        env["PYTHONPATH"] = str(_SHIM_DIR) + (os.pathsep + python_path if python_path else "")
        env["KFP_BACKEND_RUNNER_POD_ROOT"] = str(pod_root)
        env["TMPDIR"] = str(pod_root / "tmp")
        env.setdefault("HOME", str(pod_root / "home"))
        env["KFP_POD_NAME"] = f"{run.result.run_name}-system-container-impl-{node.id}"
        env["KFP_POD_UID"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{node.id}/{attempt}"))
        if node.task.get("retryPolicy"):
            env["KFP_RETRY_INDEX"] = str(attempt - 1)
        return env

    def _attempt(
        self,
        run: _Run,
        node: _Exec,
        result: TaskResult,
        local_input: dict[str, Any],
        command: list[str],
        container: Mapping[str, Any],
        pod_root: pathlib.Path,
        number: int,
    ) -> AttemptResult:
        """One launcher pod: fresh file system, downloads, the command, outputs, uploads."""
        shutil.rmtree(pod_root, ignore_errors=True)
        cwd = pod_root / "work"
        for folder in (cwd, pod_root / "tmp", pod_root / "home"):
            folder.mkdir(parents=True, exist_ok=True)
        log_path = run.run_dir / "logs" / f"{node.id}-{node.name}-attempt{number}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        attempt = AttemptResult(
            number=number,
            exit_code=None,
            signal=None,
            killed_by_hook=False,
            error=None,
            log="",
            pod_root=str(pod_root),
            started_at=time.time(),
            duration_s=0.0,
        )
        started = time.monotonic()
        try:
            self._download_inputs(local_input, pod_root, attempt)
            _prepare_output_folders(local_input, pod_root)
            dirs = _task_dirs(result.path, local_input, pod_root, cwd)
            env = self._pod_env(run, node, container, pod_root, number)
            hooks = [h for h in self._hooks if _hook_matches(h, result) and number in h.attempts]
            with open(log_path, "wb") as log:
                try:
                    proc = subprocess.Popen(
                        command,
                        cwd=cwd,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                except OSError as err:
                    raise LauncherError(f'exec: "{command[0]}": {err.strerror}') from None
                code = self._wait(proc, hooks, dirs, number, attempt)
            attempt.log = log_path.read_text(encoding="utf-8", errors="replace")
            if code < 0:
                attempt.signal = -code
                attempt.exit_code = 128 - code
                name = signal.Signals(-code).name.removeprefix("SIG").lower()
                raise LauncherError(f"signal: {'killed' if name == 'kill' else name}")
            attempt.exit_code = code
            if code != 0:
                raise LauncherError(f"exit status {code}")
            self._collect_outputs(run, node, local_input, pod_root, attempt)
        except (LauncherError, StoreError) as err:
            attempt.error = str(err)
            if not attempt.killed_by_hook:
                attempt.phase = "Failed"
        finally:
            attempt.duration_s = time.monotonic() - started
            attempt.simulated_s += attempt.duration_s
            if not attempt.log and log_path.exists():
                attempt.log = log_path.read_text(encoding="utf-8", errors="replace")
        return attempt

    def _wait(
        self,
        proc: subprocess.Popen[bytes],
        hooks: list[_KillHook],
        dirs: TaskDirs,
        number: int,
        attempt: AttemptResult,
    ) -> int:
        deadline = time.monotonic() + self.task_timeout_s if self.task_timeout_s else None
        while True:
            code = proc.poll()
            if code is not None:
                return code
            for hook in hooks:
                try:
                    fire = hook.when(dirs, number)
                except Exception:  # a condition on files that are half written: try again
                    fire = False
                if fire:
                    hook.fired.append(dirs.task)
                    attempt.killed_by_hook = True
                    attempt.phase = hook.phase
                    attempt.simulated_s += hook.ran_for_s
                    _kill_group(proc)
                    return proc.wait()
            if deadline is not None and time.monotonic() > deadline:
                attempt.warnings.append(f"killed after task_timeout_s={self.task_timeout_s}")
                _kill_group(proc)
                return proc.wait()
            time.sleep(self.poll_interval_s)

    def _download_inputs(
        self, executor_input: Mapping[str, Any], pod_root: pathlib.Path, attempt: AttemptResult
    ) -> None:
        """downloadArtifacts."""
        for name, lst in executor_input.get("inputs", {}).get("artifacts", {}).items():
            for artifact in lst.get("artifacts", []):
                uri = artifact.get("uri", "")
                if artifact.get("metadata", {}).get("_kfp_workspace") is True:
                    continue
                try:
                    backend_path = local_path_for_uri(uri)
                except ValueError:
                    attempt.warnings.append(
                        f"Input Artifact {json.dumps(name)} does not have a recognized storage "
                        f"URI {json.dumps(uri)}. Skipping downloading to local path."
                    )
                    continue
                if uri.startswith("oci://"):
                    raise LauncherError(f"OCI artifacts are not supported here: {uri}")
                local = _pod_path(pod_root, backend_path)
                try:
                    files = self.store_for(uri).download_dir(uri, local)
                except StoreError as err:
                    raise LauncherError(
                        f"failed to download input artifact {json.dumps(name)} from remote "
                        f"storage URI {json.dumps(uri)}: {err}"
                    ) from None
                attempt.downloaded.setdefault(name, []).extend(str(f) for f in files)

    def _collect_outputs(
        self,
        run: _Run,
        node: _Exec,
        local_input: Mapping[str, Any],
        pod_root: pathlib.Path,
        attempt: AttemptResult,
    ) -> None:
        """getExecutorOutputFile, collectOutputParameters, uploadOutputArtifacts."""
        outputs = local_input.get("outputs", {})
        executor_output = _read_executor_output(outputs.get("outputFile", ""))
        params = _output_parameters(node, outputs, executor_output, pod_root)
        reported = executor_output.get("artifacts", {})
        records: dict[str, ArtifactRecord] = {}
        for name, lst in outputs.get("artifacts", {}).items():
            for provisioned in lst.get("artifacts", []):
                artifact = copy.deepcopy(provisioned)
                user = (reported.get(name) or {}).get("artifacts") or []
                if user:
                    _merge_runtime_artifact(user[0], artifact)
                records[name] = self._upload_output(run, node, name, artifact, pod_root, attempt)
        node.out_params = params
        node.out_artifacts = records

    def _upload_output(
        self,
        run: _Run,
        node: _Exec,
        name: str,
        artifact: dict[str, Any],
        pod_root: pathlib.Path,
        attempt: AttemptResult,
    ) -> ArtifactRecord:
        """uploadOutputArtifacts and RecordArtifact for one output artifact."""
        run_prefix = _prefixed_bucket(run.result.run_root)
        uri = artifact.get("uri", "")
        custom = artifact.get("customPath") or artifact.get("custom_path")
        local: str | None = None
        backend_local: str | None = None
        uploaded: list[str] = []
        try:
            backend_local = custom or local_path_for_uri(uri)
            local = str(_pod_path(pod_root, backend_local))
        except ValueError:
            attempt.warnings.append(
                f"Output Artifact {json.dumps(name)} does not have a recognized storage "
                f"URI {json.dumps(uri)}. Skipping uploading to remote storage."
            )
        if local is not None and not uri.startswith("oci://"):
            if not uri.startswith(run_prefix) or not uri[len(run_prefix) :].strip("/"):
                raise LauncherError(
                    f"failed to upload output artifact {json.dumps(name)}: URI "
                    f"{json.dumps(uri)} does not have expected bucket prefix "
                    f"{json.dumps(run_prefix)}"
                )
            try:
                uploaded = self.store_for(uri).upload_dir(local, uri)
            except FileNotFoundError:
                attempt.warnings.append(
                    f"Local filepath {json.dumps(backend_local)} does not exist"
                )
            except StoreError as err:
                raise LauncherError(
                    f"failed to upload output artifact {json.dumps(name)} to remote "
                    f"storage URI {json.dumps(uri)}: {err}"
                ) from None
        metadata = to_pb(artifact.get("metadata") or {})
        try:
            properties = {k: _mlmd_value(v) for k, v in metadata.items()}
        except ValueError as err:
            raise LauncherError(
                f"unable to produce MLMD artifact for output {json.dumps(name)}: failed "
                f"to convert RuntimeArtifact to MLMD artifact: {err}"
            ) from None
        properties.setdefault("display_name", name)
        properties.setdefault("store_session_info", go_json(run.session_info))
        artifact_type = artifact.get("type", {})
        return ArtifactRecord(
            id=self._new_artifact_id(),
            output_name=name,
            uri=uri,
            schema_title=artifact_type.get("schemaTitle", ""),
            schema_version=artifact_type.get("schemaVersion", ""),
            metadata=metadata,
            mlmd_properties=properties,
            local_path=local,
            backend_local_path=backend_local,
            producer=node.path,
            uploaded=uploaded,
        )


# --- module-level helpers used by the runner ---------------------------------------------------


def _iteration_count(iterator: Mapping[str, Any], params: dict[str, Any]) -> int:
    """A ParallelFor's iteration count from its ``parameterIterator`` (an input parameter, or
    ``raw`` JSON, which becomes the item input) -- dag.go."""
    items_spec = iterator.get("items", {})
    report = f"iterating on item input {json.dumps(iterator.get('itemInput'))} failed: "
    if "inputParameter" in items_spec:
        if items_spec["inputParameter"] not in params:
            raise DriverError(report + "cannot find input parameter")
        value = params[items_spec["inputParameter"]]
    elif "raw" in items_spec:
        try:
            value = to_pb(json.loads(items_spec["raw"]))
        except json.JSONDecodeError as err:
            raise DriverError(f"error unmarshall raw string: {str(err)!r}") from None
        params[iterator["itemInput"]] = value
    else:
        raise DriverError("cannot find parameter iterator")
    try:
        return len(_get_items(value))
    except ValueError as err:
        raise DriverError(report + str(err)) from None


def _output_parameters(
    node: _Exec,
    outputs: Mapping[str, Any],
    executor_output: Mapping[str, Any],
    pod_root: pathlib.Path,
) -> dict[str, Any]:
    """collectOutputParameters: the executor output's values, the rest read from their output
    files and parsed with the declared type."""
    params = {k: to_pb(v) for k, v in executor_output.get("parameterValues", {}).items()}
    declared = node.component.get("outputDefinitions", {}).get("parameters", {})
    for name, spec in outputs.get("parameters", {}).items():
        if name in params:
            continue
        if name not in declared:
            raise LauncherError(
                f"failed to find output parameter name={json.dumps(name)} in component spec"
            )
        ptype = declared[name].get("parameterType", "")
        path = spec["outputFile"]
        where = (
            f"failed to read output parameter name={json.dumps(name)} "
            f"type={json.dumps(ptype)} path={json.dumps(_unpod(pod_root, path))}: "
        )
        try:
            text = pathlib.Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise LauncherError(
                where + f"open {_unpod(pod_root, path)}: {err.strerror.lower()}"
            ) from None
        try:
            params[name] = text_to_pb(text, ptype)
        except ValueError as err:
            raise LauncherError(where + str(err)) from None
    return params


def _is_loop(task: Mapping[str, Any]) -> bool:
    return task.get("parameterIterator") is not None or task.get("artifactIterator") is not None


def _cache_enabled(task: Mapping[str, Any]) -> bool:
    return bool(task.get("cachingOptions", {}).get("enableCache"))


def _mlmd_task_name(key: str, dag: _Exec) -> str:
    """How the driver names a task in its errors: ``name_<dag id>[_idx_<i>]``."""
    name = f"{key}_{dag.id}"
    if dag.iteration_index is not None:
        name += f"_idx_{dag.iteration_index}"
    return name


def _get_items(value: Any) -> list[Any]:
    """driver util.getItems: a list, or a JSON string holding one."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"proto: syntax error: {err}") from None
        return to_pb(decoded) if isinstance(decoded, list) else []
    kind = "<nil>" if value is None else f"*structpb.Value_{kind_of(value).title()}Value"
    raise ValueError(f"value of type {kind} cannot be iterated")


def _runtime_list(art: _ArtInput) -> list[dict[str, Any]]:
    return [r.runtime_artifact(typed=art.typed) for r in art.records]


def _inputs_json(params: Mapping[str, Any], arts: Mapping[str, _ArtInput]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if params:
        out["parameterValues"] = copy.deepcopy(dict(params))
    if arts:
        out["artifacts"] = {n: {"artifacts": _runtime_list(a)} for n, a in arts.items()}
    return out


def _format_macros(value: str, run_id: str, created: dt.datetime) -> str:
    """ParameterFormatter.Format for a one-off run (no scheduled time, no index)."""

    def substitute(match: re.Match[str]) -> str:
        text = match.group(0)
        if text.startswith("[[RunUUID]]"):
            return run_id
        if text.startswith("[[CurrentTime]]"):
            return created.strftime("%Y%m%d%H%M%S")
        prefix = "{{$.currentTime.strftime('"
        if text.startswith(prefix) and text.endswith("')}}"):
            return created.strftime(text[len(prefix) : -len("')}}")])
        return text

    return re.sub(r"\[\[(.*?)\]\]|\{\{\$\.(.*?)\}\}", substitute, value)


def _resolve_container_args(args: Sequence[str], executor_input: Mapping[str, Any]) -> list[str]:
    """driver util.resolveContainerArgs (command and args alike)."""
    values = executor_input.get("inputs", {}).get("parameterValues", {})

    def substitute(text: str) -> str:
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in values:
                raise DriverError(
                    "failed to resolve container args: failed to resolve input parameters: "
                    f"parameter {json.dumps(name)} not found in executor input"
                )
            return pb_value_to_string(values[name])

        return _INPUT_PARAMETER_RE.sub(one, text)

    out: list[str] = []
    for arg in args:
        if "$.outputs" in arg:
            out.append(arg)
        elif arg.strip().startswith('{"IfPresent":'):
            try:
                clause = json.loads(arg)["IfPresent"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise DriverError(
                    f"failed to resolve container args: failed to resolve condition: failed to "
                    f"parse IfPresent JSON: {err}"
                ) from None
            present = values.get(clause.get("InputName")) is not None
            chosen = clause.get("Then") if present else clause.get("Else")
            if chosen is None:
                continue
            for item in [chosen] if isinstance(chosen, str) else chosen:
                out.append(substitute(item))
        else:
            out.append(substitute(arg))
    return out


def _add_default_params(
    executor_input: Mapping[str, Any], component: Mapping[str, Any]
) -> dict[str, Any]:
    """addDefaultParams: component defaults for absent inputs (in a copy)."""
    out = copy.deepcopy(dict(executor_input))
    values = out.setdefault("inputs", {}).setdefault("parameterValues", {})
    for name, spec in component.get("inputDefinitions", {}).get("parameters", {}).items():
        if "defaultValue" in spec and name not in values:
            values[name] = to_pb(spec["defaultValue"])
    if not values:
        del out["inputs"]["parameterValues"]
    return out


def _pod_path(pod_root: pathlib.Path, backend_path: str) -> pathlib.Path:
    """A pod's absolute path, re-rooted under the pod root folder."""
    if backend_path.startswith(str(pod_root)):
        return pathlib.Path(backend_path)
    return pod_root / backend_path.lstrip("/")


def _unpod(pod_root: pathlib.Path, path: str) -> str:
    prefix = str(pod_root)
    return path[len(prefix) :] if path.startswith(prefix) else path


def _localize(executor_input: Mapping[str, Any], pod_root: pathlib.Path) -> dict[str, Any]:
    """The executor input with the backend's fixed pod paths re-rooted under ``pod_root``."""
    out = copy.deepcopy(dict(executor_input))
    outputs = out.get("outputs", {})
    if "outputFile" in outputs:
        outputs["outputFile"] = str(_pod_path(pod_root, outputs["outputFile"]))
    for spec in outputs.get("parameters", {}).values():
        spec["outputFile"] = str(_pod_path(pod_root, spec["outputFile"]))
    return out


def _placeholders(
    executor_input: Mapping[str, Any], to_path: Callable[[str], str]
) -> dict[str, str]:
    """getPlaceholders: artifact URIs/paths, input parameter texts, output parameter files;
    ``to_path`` maps a pod path (``/minio/…``) to the path used here."""
    placeholders: dict[str, str] = {}
    inputs = executor_input.get("inputs", {})
    for name, lst in inputs.get("artifacts", {}).items():
        if not lst.get("artifacts"):
            continue
        art = lst["artifacts"][0]
        placeholders[f"{{{{$.inputs.artifacts['{name}'].uri}}}}"] = art.get("uri", "")
        try:
            path = local_path_for_uri(art.get("uri", ""))
        except ValueError:
            continue
        placeholders[f"{{{{$.inputs.artifacts['{name}'].path}}}}"] = to_path(path)
    outputs = executor_input.get("outputs", {})
    for name, lst in outputs.get("artifacts", {}).items():
        art = lst["artifacts"][0]
        placeholders[f"{{{{$.outputs.artifacts['{name}'].uri}}}}"] = art.get("uri", "")
        try:
            path = local_path_for_uri(art.get("uri", ""))
        except ValueError:
            return {}  # getPlaceholders fails and compileCmdAndArgs drops its error: no map
        placeholders[f"{{{{$.outputs.artifacts['{name}'].path}}}}"] = to_path(path)
    for name, value in inputs.get("parameterValues", {}).items():
        if value is None:
            return {}  # "unknown PipelineSpec Value type", dropped the same way
        text = pb_value_to_text(value)  # FormatFloat 'f', FormatBool, json.Marshal
        placeholders[f"{{{{$.inputs.parameters['{name}']}}}}"] = text
    for name, spec in outputs.get("parameters", {}).items():
        placeholders[f"{{{{$.outputs.parameters['{name}'].output_file}}}}"] = spec["outputFile"]
    return placeholders


def _replace_all(text: str, placeholders: Mapping[str, str]) -> str:
    for placeholder, replacement in placeholders.items():
        text = text.replace(placeholder, replacement)
    return text


def _compile_cmd_and_args(
    command: Sequence[str], executor_input: Mapping[str, Any], pod_root: pathlib.Path
) -> list[str]:
    """compileCmdAndArgs: ``{{$}}`` first, then the placeholders -- also inside the executor
    input JSON just inserted (so a parameter whose value is another input's placeholder, as
    the compiler writes for resource settings, arrives resolved). The command's first word
    gets ``{{$}}`` only."""
    if not command:
        raise DriverError("container has no command")
    payload = _executor_input_json(executor_input)
    placeholders = _placeholders(executor_input, lambda p: str(_pod_path(pod_root, p)))
    first = command[0].replace("{{$}}", payload)
    return [first, *(_replace_all(a.replace("{{$}}", payload), placeholders) for a in command[1:])]


def _received_input(
    executor_input: Mapping[str, Any], to_path: Callable[[str], str]
) -> dict[str, Any]:
    """The executor input JSON as a component reading ``{{$}}`` receives it."""
    text = _executor_input_json(executor_input)
    try:
        return json.loads(_replace_all(text, _placeholders(executor_input, to_path)))
    except json.JSONDecodeError:
        return json.loads(text)


def _prepare_output_folders(executor_input: Mapping[str, Any], pod_root: pathlib.Path) -> None:
    """prepareOutputFolders: the parent folders of output files and artifact paths (only
    the parents: an output artifact's own path does not exist when the command starts)."""
    outputs = executor_input.get("outputs", {})
    for spec in outputs.get("parameters", {}).values():
        pathlib.Path(spec["outputFile"]).parent.mkdir(parents=True, exist_ok=True)
    for name, lst in outputs.get("artifacts", {}).items():
        for art in lst.get("artifacts", []):
            try:
                path = local_path_for_uri(art.get("uri", ""))
            except ValueError as err:
                raise LauncherError(
                    f"failed to generate local storage path for output artifact "
                    f"{json.dumps(name)}: {err}"
                ) from None
            _pod_path(pod_root, path).parent.mkdir(parents=True, exist_ok=True)


def _task_dirs(
    path: str, executor_input: Mapping[str, Any], pod_root: pathlib.Path, cwd: pathlib.Path
) -> TaskDirs:
    outputs: dict[str, pathlib.Path] = {}
    for name, lst in executor_input.get("outputs", {}).get("artifacts", {}).items():
        uri = lst["artifacts"][0].get("uri", "")
        try:
            outputs[name] = _pod_path(pod_root, local_path_for_uri(uri))
        except ValueError:
            continue
    inputs: dict[str, list[pathlib.Path]] = {}
    for name, lst in executor_input.get("inputs", {}).get("artifacts", {}).items():
        for art in lst.get("artifacts", []):
            try:
                inputs.setdefault(name, []).append(
                    _pod_path(pod_root, local_path_for_uri(art.get("uri", "")))
                )
            except ValueError:
                continue
    files = {
        n: pathlib.Path(s["outputFile"])
        for n, s in executor_input.get("outputs", {}).get("parameters", {}).items()
    }
    return TaskDirs(path, pod_root, cwd, outputs, inputs, files)


def _hook_matches(hook: _KillHook, result: TaskResult) -> bool:
    return hook.task in (result.path, result.name, result.display_name)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


_EXECUTOR_OUTPUT_FIELDS = {"parameters", "artifacts", "parameterValues", "parameter_values"}
_RUNTIME_ARTIFACT_FIELDS = {
    "name",
    "type",
    "uri",
    "properties",
    "customProperties",
    "custom_properties",
    "metadata",
    "customPath",
    "custom_path",
}


def _read_executor_output(path: str) -> dict[str, Any]:
    """getExecutorOutputFile: missing -> empty; protojson.Unmarshal rejects unknown fields."""
    if not path or not os.path.exists(path):
        return {}
    text = pathlib.Path(path).read_text(encoding="utf-8")
    where = f"failed to unmarshall ExecutorOutput in file {json.dumps(path)}: "
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise LauncherError(where + f"proto: syntax error: {err}") from None
    if not isinstance(data, dict):
        raise LauncherError(where + "proto: syntax error: expected object")
    unknown = set(data) - _EXECUTOR_OUTPUT_FIELDS
    if unknown:
        raise LauncherError(where + f"proto: unknown field {json.dumps(sorted(unknown)[0])}")
    if "parameter_values" in data:
        data.setdefault("parameterValues", data.pop("parameter_values"))
    for lst in (data.get("artifacts") or {}).values():
        for art in (lst or {}).get("artifacts", []):
            bad = set(art) - _RUNTIME_ARTIFACT_FIELDS
            if bad:
                raise LauncherError(where + f"proto: unknown field {json.dumps(sorted(bad)[0])}")
    return data


def _merge_runtime_artifact(src: Mapping[str, Any], dst: dict[str, Any]) -> None:
    """mergeRuntimeArtifacts: URI if set, metadata field by field, custom path if set."""
    if src.get("uri"):
        dst["uri"] = src["uri"]
    if src.get("metadata") is not None:
        if not dst.get("metadata"):
            dst["metadata"] = copy.deepcopy(src["metadata"])
        else:
            dst["metadata"].update(copy.deepcopy(src["metadata"]))
    custom = src.get("customPath") or src.get("custom_path")
    if custom:
        dst["customPath"] = custom


def _k8s_toleration(value: Any, shape: str) -> dict[str, Any]:
    """json.Unmarshal into a k8s Toleration (string fields, int64 seconds)."""
    if not isinstance(value, dict):
        raise DriverError(f"failed to marshal {shape} toleration to json: not an object")
    out: dict[str, Any] = {}
    for name in ("key", "operator", "value", "effect"):
        if name in value:
            if not isinstance(value[name], str):
                raise DriverError(
                    f"failed to marshal {shape} toleration to json: json: cannot unmarshal "
                    f"{kind_of(value[name])} into Go struct field Toleration.{name} of type string"
                )
            out[name] = value[name]
    if "tolerationSeconds" in value:
        seconds = value["tolerationSeconds"]
        if not isinstance(seconds, float | int) or isinstance(seconds, bool):
            raise DriverError(
                f"failed to marshal {shape} toleration to json: json: cannot unmarshal "
                f"{kind_of(seconds)} into Go struct field Toleration.tolerationSeconds of type "
                "int64"
            )
        if not math.isfinite(seconds) or not float(seconds).is_integer():
            raise DriverError(
                f"failed to marshal {shape} toleration to json: json: cannot unmarshal number "
                f"{seconds} into Go struct field Toleration.tolerationSeconds of type int64"
            )
        out["tolerationSeconds"] = int(seconds)
    return out


def _pod_placeholder(value: str, executor_input: Mapping[str, Any]) -> str:
    """resolve.go ``resolvePodSpecInputRuntimeParameter``: a ``{{$.inputs.parameters['x']}}``
    channel (util.go ``inputPipelineChannelPattern``, unanchored) becomes x's value read with
    ``GetStringValue()`` -- "" for a number, a bool or a struct, however it was declared; a
    name missing from the executor input fails; anything else is a constant."""
    match = _POD_CHANNEL_RE.search(value)
    if match is None:
        return value
    values = executor_input.get("inputs", {}).get("parameterValues", {})
    if match.group(1) not in values:
        raise DriverError(
            "failed to init podSpecPatch: executorInput did not contain container Image input "
            "parameter"
        )
    found = values[match.group(1)]
    return found if isinstance(found, str) else ""


def _pod_resources(container: Mapping[str, Any], executor_input: Mapping[str, Any]) -> dict:
    """driver.go ``initPodSpecPatch``: the main container's limits and requests. CPU and memory
    from the new string fields (``resourceCpuLimit``…, placeholders resolved) or the old
    numbers (``cpuLimit``…; memory as ``%vG``), each parsed as a Kubernetes quantity, so an
    empty value fails (``getPodResource``); the accelerator limit only when both its type and
    count resolve to non-empty text -- a count that came out "" drops the limit silently."""
    spec = container.get("resources", {})
    out: dict[str, dict[str, str]] = {"limits": {}, "requests": {}}
    for kind, field_ in (("limits", "Limit"), ("requests", "Request")):
        for resource, unit in (("memory", "G"), ("cpu", "")):
            new = spec.get(f"resource{resource.capitalize()}{field_}", "")
            old = spec.get(f"{resource}{field_}", 0)
            if new:
                text = _pod_placeholder(str(new), executor_input)
            elif old:
                text = f"{pb_value_to_text(old)}{unit}"
            else:
                continue
            out[kind][resource] = _quantity(text)
    accelerator = spec.get("accelerator")
    if accelerator:
        kind = accelerator.get("resourceType", "")
        kind = _pod_placeholder(kind, executor_input) if kind else accelerator.get("type", "")
        count = accelerator.get("resourceCount", "")
        if count:
            count = _pod_placeholder(str(count), executor_input)
        elif int(accelerator.get("count", 0) or 0) > 0:
            count = str(accelerator["count"])
        if kind and count:
            out["limits"][kind] = _quantity(count)
    return out


def _quantity(text: str) -> str:
    """k8s ``resource.ParseQuantity`` (the forms bittune and the SDK write)."""
    if not _QUANTITY_RE.fullmatch(text):
        raise DriverError(
            f"failed to init podSpecPatch: quantities must match the regular expression "
            f"'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {text!r}"
        )
    return text


def _update_dag_states(node: _Exec, *, recursive: bool) -> None:
    """UpdateDAGExecutionsState after a launcher: the parent DAG, and from 2.17.0 (PR 13322,
    recursive DAG state propagation) its parents up to the root as each completes."""
    dag = node.parent
    while dag is not None and dag.kind != "root":
        dag.launched = True
        if not _recount(dag) or not recursive:
            return
        dag = dag.parent


def _read_back(dag: _Exec, name: str) -> list[ArtifactRecord]:
    """A DAG's input artifact as its children's drivers read it back from ML Metadata: ONE
    artifact per input name, however many the DAG's driver recorded (metadata/client.go
    ``GetInputArtifactsByExecutionID`` builds ``inputs[name] = {Artifacts: [one]}`` per input
    event, the last one winning; resolve.go ``resolveInputs`` uses it for every task inside a
    DAG and for iterations). So a ``dsl.Collected`` list passed into a sub-pipeline or a
    condition branch arrives as one artifact: kubeflow/pipelines issue 13900 (PR 13901, not
    merged as of 2.17.0 and master)."""
    records = dag.artifacts.get(name, [])
    return list(records[-1:])


def _recount(dag: _Exec) -> bool:
    """One DAG's UpdateDAGExecutionsState step; False while it is still running."""
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
