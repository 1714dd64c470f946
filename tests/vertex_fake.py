"""A fake Vertex AI Pipelines REST API (v1) on loopback, for tests of ``PipelineJob.submit()``.

Implements ``pipelineJobs`` create / get / list / cancel under
``/v1/projects/{project}/locations/{location}``, with the request checks the real service (or
its proto) makes that a test can trip over: unknown fields, a missing or malformed pipeline
spec, a pipeline root that is not ``gs://``, parameter values that the pipeline does not declare
or whose JSON type does not match the declared ``parameterType``, and accelerator names that are
not Vertex ``AcceleratorType`` values (constant, or bound to a root parameter). Stdlib only.
Field names follow ``google.cloud.aiplatform_v1.types.PipelineJob``; error bodies follow
Google's JSON error format, so google-api-core raises ``BadRequest``/``NotFound``/``Conflict``.
"""

from __future__ import annotations

import datetime
import itertools
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# PipelineJob's JSON names (aiplatform_v1); the output-only ones are ignored on input
JOB_FIELDS = {
    "name",
    "displayName",
    "createTime",
    "startTime",
    "endTime",
    "updateTime",
    "pipelineSpec",
    "state",
    "jobDetail",
    "error",
    "labels",
    "runtimeConfig",
    "encryptionSpec",
    "serviceAccount",
    "network",
    "reservedIpRanges",
    "pscInterfaceConfig",
    "templateUri",
    "templateMetadata",
    "scheduleName",
    "preflightValidations",
}
OUTPUT_ONLY = {
    "name",
    "createTime",
    "startTime",
    "endTime",
    "updateTime",
    "state",
    "jobDetail",
    "error",
    "templateMetadata",
    "scheduleName",
}
RUNTIME_FIELDS = {
    "parameters",
    "gcsOutputDirectory",
    "parameterValues",
    "failurePolicy",
    "inputArtifacts",
}
SPEC_FIELDS = {
    "pipelineInfo",
    "deploymentSpec",
    "sdkVersion",
    "schemaVersion",
    "components",
    "root",
    "defaultPipelineRoot",
}  # kfp-pipeline-spec PipelineSpec
ACCELERATORS = {  # aiplatform_v1 AcceleratorType, less UNSPECIFIED
    "NVIDIA_TESLA_K80",
    "NVIDIA_TESLA_P100",
    "NVIDIA_TESLA_V100",
    "NVIDIA_TESLA_P4",
    "NVIDIA_TESLA_T4",
    "NVIDIA_TESLA_A100",
    "NVIDIA_A100_80GB",
    "NVIDIA_L4",
    "NVIDIA_H100_80GB",
    "NVIDIA_H100_MEGA_80GB",
    "NVIDIA_H200_141GB",
    "NVIDIA_B200",
    "NVIDIA_GB200",
    "NVIDIA_RTX_PRO_6000",
    "TPU_V2",
    "TPU_V3",
    "TPU_V4_POD",
    "TPU_V5_LITEPOD",
}
STATES = [
    "PIPELINE_STATE_UNSPECIFIED",
    "PIPELINE_STATE_QUEUED",
    "PIPELINE_STATE_PENDING",
    "PIPELINE_STATE_RUNNING",
    "PIPELINE_STATE_SUCCEEDED",
    "PIPELINE_STATE_FAILED",
    "PIPELINE_STATE_CANCELLING",
    "PIPELINE_STATE_CANCELLED",
    "PIPELINE_STATE_PAUSED",
]
FAILURE_POLICIES = [
    "PIPELINE_FAILURE_POLICY_UNSPECIFIED",
    "PIPELINE_FAILURE_POLICY_FAIL_SLOW",
    "PIPELINE_FAILURE_POLICY_FAIL_FAST",
]
JOB_ID = re.compile(r"^[a-z][-a-z0-9]{0,127}$")
GCS_DIR = re.compile(r"^gs://[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9](/.*)?$")
LABEL_KEY, LABEL_VALUE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$"), re.compile(r"^[a-z0-9_-]{0,63}$")
PLACEHOLDER = re.compile(r"^\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}$")
PARENT = r"/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/pipelineJobs"
CUSTOM_JOBS = PARENT.removesuffix("pipelineJobs") + "customJobs"
# Vertex AI Experiments live in the default metadata store as system.Experiment contexts; a
# pipeline run joins one as a child context (aiplatform_v1 MetadataService: GetMetadataStore,
# GetContext, CreateContext, AddContextChildren).
STORE = PARENT.removesuffix("pipelineJobs") + "metadataStores/default"
# aiplatform_v1 CustomJob / CustomJobSpec / WorkerPoolSpec / MachineSpec fields a create may set
# (google/cloud/aiplatform/v1/custom_job.proto, machine_resources.proto), as JSON names.
CUSTOM_JOB_FIELDS = {"displayName", "jobSpec", "labels", "encryptionSpec"}
JOB_SPEC_FIELDS = {
    "workerPoolSpecs", "scheduling", "serviceAccount", "network", "reservedIpRanges",
    "baseOutputDirectory", "tensorboard", "enableWebAccess", "enableDashboardAccess",
    "persistentResourceId", "protectedArtifactLocationId", "experiment", "experimentRun",
    "models", "pscInterfaceConfig",
}  # fmt: skip
POOL_FIELDS = {"containerSpec", "pythonPackageSpec", "machineSpec", "replicaCount", "nfsMounts",
               "diskSpec"}  # fmt: skip
MACHINE_FIELDS = {"machineType", "acceleratorType", "acceleratorCount", "tpuTopology",
                  "reservationAffinity"}  # fmt: skip
# Which machines carry which accelerators, read from Google's pages (as of 2026-12):
# https://cloud.google.com/vertex-ai/docs/training/configure-compute (the GPU compatibility
# table; TPU VMs: "TPU v2 and v3", "TPU v5e", "TPU v6e") and, for GPUs attached to N1,
# https://cloud.google.com/compute/docs/gpus#n1-gpus (vCPU and memory bounds per GPU count).
FIXED_GPU_MACHINES = {  # machine type -> (accelerator, count): the machine comes with them
    **{f"g2-standard-{n}": ("NVIDIA_L4", 1) for n in (4, 8, 12, 16, 32)},
    "g2-standard-24": ("NVIDIA_L4", 2), "g2-standard-48": ("NVIDIA_L4", 4),
    "g2-standard-96": ("NVIDIA_L4", 8),
    **{f"a2-highgpu-{n}g": ("NVIDIA_TESLA_A100", n) for n in (1, 2, 4, 8)},
    "a2-megagpu-16g": ("NVIDIA_TESLA_A100", 16),
    **{f"a2-ultragpu-{n}g": ("NVIDIA_A100_80GB", n) for n in (1, 2, 4, 8)},
    **{f"a3-highgpu-{n}g": ("NVIDIA_H100_80GB", n) for n in (1, 2, 4, 8)},
    "a3-megagpu-8g": ("NVIDIA_H100_MEGA_80GB", 8), "a3-ultragpu-8g": ("NVIDIA_H200_141GB", 8),
    "a4-highgpu-8g": ("NVIDIA_B200", 8), "a4x-highgpu-4g": ("NVIDIA_GB200", 4),
}  # fmt: skip
N1_GPU_BOUNDS = {  # accelerator -> {count: (most vCPUs, most GB)}
    "NVIDIA_TESLA_T4": {1: (48, 312), 2: (48, 312), 4: (96, 624)},
    "NVIDIA_TESLA_P4": {1: (24, 156), 2: (48, 312), 4: (96, 624)},
    "NVIDIA_TESLA_V100": {1: (12, 78), 2: (24, 156), 4: (48, 312), 8: (96, 624)},
    "NVIDIA_TESLA_P100": {1: (16, 104), 2: (32, 208), 4: (96, 624)},
}
N1_MEMORY_PER_CPU = {"standard": 3.75, "highmem": 6.5, "highcpu": 0.9}
# The API takes a ct6e (TPU v6e) job; bittune refuses v6e itself, for the framework (no
# TensorFlow on v6e), which a create request does not show.
TPU_VM_CHIPS = {  # machine type -> chips on one host; these take tpuTopology, no accelerator
    "ct5lp-hightpu-1t": 1, "ct5lp-hightpu-4t": 4, "ct5lp-hightpu-8t": 8,
    "ct6e-standard-1t": 1, "ct6e-standard-4t": 4, "ct6e-standard-8t": 8,
}  # fmt: skip
# DiskSpec.boot_disk_type (aiplatform_v1 machine_resources.py): "Valid values: "pd-ssd" ...,
# "pd-standard" ... or "hyperdisk-balanced""; A3 Ultra's default is hyperdisk-balanced (the
# same docstring) and, as this fake reads it, A3 Ultra and A4 boot from Hyperdisk only.
BOOT_DISK_TYPES = {"pd-ssd", "pd-standard", "hyperdisk-balanced"}
HYPERDISK_ONLY = re.compile(r"^(a3-ultragpu|a4-highgpu)-")
GPU_COUNTS: dict[str, set[int]] = {}  # accelerator -> the counts any machine carries
for _kind, _count in FIXED_GPU_MACHINES.values():
    GPU_COUNTS.setdefault(_kind, set()).add(_count)
for _kind, _bounds in N1_GPU_BOUNDS.items():
    GPU_COUNTS[_kind] = set(_bounds)
ROUTES = [
    ("POST", re.compile(PARENT + r"$"), "create"),
    ("GET", re.compile(PARENT + r"$"), "list"),
    ("GET", re.compile(PARENT + r"/(?P<id>[^/:]+)$"), "get"),
    ("POST", re.compile(PARENT + r"/(?P<id>[^/:]+):cancel$"), "cancel"),
    ("POST", re.compile(CUSTOM_JOBS + r"$"), "create_custom_job"),
    ("GET", re.compile(STORE + r"$"), "get_store"),
    ("GET", re.compile(STORE + r"/contexts/(?P<id>[^/:]+)$"), "get_context"),
    ("POST", re.compile(STORE + r"/contexts$"), "create_context"),
    ("POST", re.compile(STORE + r"/contexts/(?P<id>[^/:]+):addContextChildren$"), "add_children"),
    ("GET", re.compile(CUSTOM_JOBS + r"/(?P<id>[^/:]+)$"), "get_custom_job"),
]
TYPE_CHECKS: dict[str, tuple[str, Any]] = {
    "STRING": ("a string", lambda v: isinstance(v, str)),
    "BOOLEAN": ("a boolean", lambda v: isinstance(v, bool)),
    "NUMBER_DOUBLE": ("a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool)),
    "NUMBER_INTEGER": (
        "an integer",
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and float(v).is_integer(),
    ),
    "LIST": ("a list", lambda v: isinstance(v, list)),
    "STRUCT": ("an object", lambda v: isinstance(v, dict)),
}


class ApiError(Exception):
    """An error answered as Google's JSON error body."""

    STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
              409: "ALREADY_EXISTS"}  # fmt: skip

    def __init__(self, code: int, message: str, status: str = "") -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.status = status or self.STATUS.get(code, "UNKNOWN")

    def body(self) -> dict[str, Any]:
        """The ``{"error": {...}}`` document."""
        return {"error": {"code": self.code, "message": self.message, "status": self.status}}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ApiError(400, message)


def check_spec(spec: Any) -> dict[str, Any]:
    """Check the pipeline spec's shape; return the root's declared parameters."""
    _require(isinstance(spec, dict), "pipeline_spec is required and must be an object")
    unknown = set(spec) - SPEC_FIELDS
    _require(
        not unknown,
        f"pipeline_spec has unknown fields {sorted(unknown)} (one YAML "
        "document only: a Kubernetes platform spec is not accepted)",
    )
    _require(
        isinstance(spec.get("pipelineInfo", {}).get("name"), str),
        "pipeline_spec.pipelineInfo.name is required",
    )
    _require(
        str(spec.get("schemaVersion", "")).startswith("2."),
        "pipeline_spec.schemaVersion must be 2.x",
    )
    root, components = spec.get("root"), spec.get("components", {})
    _require(
        isinstance(root, dict) and isinstance(root.get("dag"), dict),
        "pipeline_spec.root.dag is required",
    )
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    for name, comp in components.items():
        label = comp.get("executorLabel")
        _require(
            label is None or label in executors,
            f"component {name} names executor {label}, which deploymentSpec lacks",
        )
    for task_name, task in root["dag"].get("tasks", {}).items():
        ref = task.get("componentRef", {}).get("name")
        _require(ref in components, f"task {task_name} refers to unknown component {ref}")
    return root.get("inputDefinitions", {}).get("parameters", {})


def check_parameters(values: Any, declared: dict[str, Any]) -> None:
    """Parameter values: declared names only, JSON types matching ``parameterType``."""
    _require(isinstance(values, dict), "runtime_config.parameter_values must be an object")
    for name, value in values.items():
        _require(name in declared, f"parameter {name} is not an input of the pipeline")
        kind = declared[name].get("parameterType", "")
        what, ok = TYPE_CHECKS.get(kind, ("?", lambda v: False))
        _require(ok(value), f"parameter {name} is {kind}: expected {what}, got {value!r}")
    for name, spec in declared.items():
        _require(
            name in values or "defaultValue" in spec or spec.get("isOptional", False),
            f"required parameter {name} has no value",
        )


def _resolve(raw: Any, scope: dict[str, Any]) -> Any:
    """A resource value: a constant, or a placeholder of an input the scope knows (None: known
    only at run time, e.g. an upstream task's output)."""
    match = PLACEHOLDER.match(str(raw))
    return scope.get(match.group(1)) if match else raw


def _task_scope(task: dict[str, Any], scope: dict[str, Any]) -> dict[str, Any]:
    """The values of a task's input parameters, from its parent's scope or constants."""
    values = {}
    for name, binding in task.get("inputs", {}).get("parameters", {}).items():
        if "componentInputParameter" in binding:
            values[name] = scope.get(binding["componentInputParameter"])
        elif "runtimeValue" in binding:
            values[name] = _resolve(binding["runtimeValue"].get("constant"), scope)
    return values


def check_resources(spec: dict[str, Any], values: dict[str, Any], declared: dict[str, Any]) -> None:
    """Accelerators must be Vertex names with a count >= 1; limits within Vertex's maxima; every
    container task of every DAG, its placeholders resolved through the DAGs above it."""
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    components = spec.get("components", {})
    root_scope = {n: d.get("defaultValue") for n, d in declared.items()}
    root_scope.update(values)

    def walk(dag: dict[str, Any], scope: dict[str, Any], where: str) -> None:
        for task_name, task in dag.get("tasks", {}).items():
            component = components.get(task.get("componentRef", {}).get("name"), {})
            inner = _task_scope(task, scope)
            if "dag" in component:
                walk(component["dag"], inner, f"{where}{task_name}/")
                continue
            container = executors.get(component.get("executorLabel"), {}).get("container", {})
            check_task(container.get("resources", {}), inner, f"{where}{task_name}")

    walk(spec["root"]["dag"], root_scope, "")


def check_task(resources: dict[str, Any], scope: dict[str, Any], task: str) -> None:
    """One container task's resources: limits (cpuLimit in CPUs and memoryLimit in GB when
    constant; resourceCpuLimit / resourceMemoryLimit as Kubernetes quantities when from a
    parameter) and the accelerator."""
    cpu = _resolve(resources.get("resourceCpuLimit", resources.get("cpuLimit", 0)), scope)
    if isinstance(cpu, str) and cpu.endswith("m"):
        cpu = float(cpu[:-1]) / 1000
    _require(cpu is None or float(cpu) <= 96, f"task {task}: at most 96 CPUs")
    memory = _resolve(resources.get("resourceMemoryLimit", ""), scope)
    gigabytes = _gigabytes(memory) if memory else resources.get("memoryLimit", 0)
    _require(memory is None or gigabytes <= 624, f"task {task}: at most 624 GB of memory")
    accel = resources.get("accelerator")
    if not accel:
        return
    name = _resolve(accel.get("type") or accel.get("resourceType") or "", scope)
    _require(
        name is None or name in ACCELERATORS,
        f"task {task}: accelerator type {name!r} is not a Vertex AI "
        f"AcceleratorType ({', '.join(sorted(ACCELERATORS))})",
    )
    count = _resolve(accel.get("count", accel.get("resourceCount", "1")), scope)
    _require(
        count is None or float(count) >= 1,
        f"task {task}: accelerator count must be >= 1 when a type is set",
    )
    counts = GPU_COUNTS.get(name) if name is not None else None
    _require(
        count is None or counts is None or int(float(count)) in counts,
        f"task {task}: no machine carries {count} x {name} (counts {sorted(counts or ())})",
    )


def _gigabytes(quantity: Any) -> float:
    """A Kubernetes memory quantity in GB."""
    text = str(quantity)
    units = {"G": 1, "Gi": 2**30 / 1e9, "M": 1e-3, "Mi": 2**20 / 1e9, "T": 1e3}
    for unit, scale in sorted(units.items(), key=lambda u: -len(u[0])):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text) / 1e9


def check_job(job: Any) -> dict[str, Any]:
    """Validate a create request's PipelineJob; return it without output-only fields."""
    _require(isinstance(job, dict), "the request body must be a PipelineJob object")
    unknown = set(job) - JOB_FIELDS
    _require(not unknown, f"Invalid JSON payload received. Unknown name(s) {sorted(unknown)}")
    job = {k: v for k, v in job.items() if k not in OUTPUT_ONLY}
    _require(len(job.get("displayName", "")) <= 128, "display_name is over 128 characters")
    for key, value in (job.get("labels") or {}).items():
        _require(
            isinstance(value, str)
            and bool(LABEL_KEY.match(key))
            and bool(LABEL_VALUE.match(value)),
            f"invalid label {key}={value!r}",
        )
    account = job.get("serviceAccount", "")
    _require(not account or "@" in account, f"service_account {account!r} is not an e-mail")
    declared = check_spec(job.get("pipelineSpec"))
    runtime = job.get("runtimeConfig")
    _require(isinstance(runtime, dict), "runtime_config is required")
    unknown = set(runtime) - RUNTIME_FIELDS
    _require(not unknown, f"Invalid JSON payload received. Unknown name(s) {sorted(unknown)}")
    _require(
        not runtime.get("parameters"),
        "runtime_config.parameters is for schema 2.0.0 pipelines; use parameter_values",
    )
    _require(
        bool(GCS_DIR.match(runtime.get("gcsOutputDirectory", ""))),
        "runtime_config.gcs_output_directory must be a gs:// path, got "
        f"{runtime.get('gcsOutputDirectory')!r}",
    )
    policy = runtime.get("failurePolicy", 0)
    _require(
        policy in FAILURE_POLICIES or policy in range(len(FAILURE_POLICIES)),
        f"unknown failure_policy {policy!r}",
    )
    values = runtime.get("parameterValues", {})
    check_parameters(values, declared)
    check_resources(job["pipelineSpec"], values, declared)
    return job


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _unknown(given: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(given) - allowed)
    _require(not extra, f"Invalid JSON payload received. Unknown name(s) {extra} in {where}")


def _topology_chips(topology: str) -> int:
    chips = 1
    for side in topology.split("x"):
        chips *= int(side)
    return chips


def check_machine(machine: dict[str, Any], replicas: int, pools: int, where: str) -> None:
    """A worker pool's machine against Google's tables (:data:`FIXED_GPU_MACHINES`,
    :data:`N1_GPU_BOUNDS`, :data:`TPU_VM_CHIPS`): the accelerator a machine comes with and its
    count, N1's bounds for the GPUs attached, a TPU VM's topology ("required for TPU v5
    versions": python-aiplatform google/cloud/aiplatform/jobs.py ``CustomJob.
    from_local_script``) and its one worker pool; ``cloud-tpu`` with TPU v2/v3 cores."""
    kind = machine.get("acceleratorType", "ACCELERATOR_TYPE_UNSPECIFIED")
    count, name = int(machine.get("acceleratorCount", 0)), machine["machineType"]
    topology = machine.get("tpuTopology", "")
    if name in TPU_VM_CHIPS:
        _require(bool(topology), f"{where}: machine type {name} needs a tpu_topology")
        _require(
            re.fullmatch(r"\d+x\d+", topology) is not None
            and _topology_chips(topology) == TPU_VM_CHIPS[name] * replicas,
            f"{where}: tpu_topology {topology!r} is not a slice of {replicas} x {name}",
        )
        _require(pools == 1, f"{where}: a TPU VM job takes one worker pool")
        return
    _require(not topology, f"{where}: tpu_topology is for TPU VM machine types")
    if name == "cloud-tpu":
        _require(
            kind in ("TPU_V2", "TPU_V3") and (count == 8 or count % 32 == 0),
            f"{where}: cloud-tpu takes TPU_V2 or TPU_V3 with 8 cores (32n: a pod)",
        )
        _require(pools == 1 and replicas == 1, f"{where}: a TPU job takes one replica")
        return
    if name in FIXED_GPU_MACHINES:
        _require(
            (kind, count) == FIXED_GPU_MACHINES[name],
            f"{where}: machine type {name} comes with "
            f"{FIXED_GPU_MACHINES[name][1]} x {FIXED_GPU_MACHINES[name][0]}, not "
            f"{count} x {kind}",
        )
        return
    _require(
        kind == "ACCELERATOR_TYPE_UNSPECIFIED" or kind in N1_GPU_BOUNDS,
        f"{where}: {kind} does not attach to machine type {name}",
    )
    if kind in N1_GPU_BOUNDS:
        series = re.fullmatch(r"n1-(standard|highmem|highcpu)-(\d+)", name)
        _require(series is not None, f"{where}: {kind} attaches to N1 machines, not {name}")
        _require(
            count in N1_GPU_BOUNDS[kind],
            f"{where}: {kind} comes {sorted(N1_GPU_BOUNDS[kind])} to an N1 machine, not {count}",
        )
        cpus = int(series.group(2))
        most_cpus, most_memory = N1_GPU_BOUNDS[kind][count]
        _require(
            cpus <= most_cpus and cpus * N1_MEMORY_PER_CPU[series.group(1)] <= most_memory,
            f"{where}: {name} is too large for {count} x {kind} (at most {most_cpus} vCPUs,"
            f" {most_memory} GB)",
        )


def check_disk(disk: dict[str, Any], machine_type: str, where: str) -> None:
    """A pool's boot disk: a valid type (:data:`BOOT_DISK_TYPES`), Hyperdisk on the machines
    that boot from nothing else (:data:`HYPERDISK_ONLY`)."""
    kind = disk.get("bootDiskType", "")
    _require(not kind or kind in BOOT_DISK_TYPES, f"{where}: boot_disk_type {kind!r} is not valid")
    _require(
        not kind or kind == "hyperdisk-balanced" or not HYPERDISK_ONLY.match(machine_type),
        f"{where}: machine type {machine_type} does not support boot disk type {kind}",
    )


def check_custom_job(job: Any) -> dict[str, Any]:
    """Validate a create request's CustomJob (v1): the fields, the pools (pool 0 is the chief:
    one replica), machines with valid accelerators, a service account that is an e-mail, and
    no placeholder left for the service to resolve (Vertex resolves none inside a CustomJob)."""
    _require(isinstance(job, dict), "the request body must be a CustomJob object")
    _unknown(job, CUSTOM_JOB_FIELDS, "CustomJob")
    _require(bool(job.get("displayName")), "display_name is required")
    leftover = [v for v in _strings(job) if "{{$" in v]
    if leftover:
        raise ApiError(400, f"unresolved placeholder in the CustomJob: {leftover[0][:120]}")
    spec = job.get("jobSpec")
    _require(isinstance(spec, dict), "job_spec is required")
    _unknown(spec, JOB_SPEC_FIELDS, "CustomJobSpec")
    pools = spec.get("workerPoolSpecs") or []
    _require(bool(pools), "job_spec.worker_pool_specs must not be empty")
    for index, pool in enumerate(pools):
        _unknown(pool, POOL_FIELDS, f"worker_pool_specs[{index}]")
        machine = pool.get("machineSpec") or {}
        _unknown(machine, MACHINE_FIELDS, f"worker_pool_specs[{index}].machine_spec")
        _require(bool(machine.get("machineType")), f"worker_pool_specs[{index}]: machine_type "
                 "is required")  # fmt: skip
        kind = machine.get("acceleratorType", "ACCELERATOR_TYPE_UNSPECIFIED")
        if isinstance(kind, int):  # $alt=json;enum-encoding=int: the enum's number
            from google.cloud.aiplatform_v1 import types

            kind = machine["acceleratorType"] = types.AcceleratorType(kind).name
        _require(kind == "ACCELERATOR_TYPE_UNSPECIFIED" or kind in ACCELERATORS,
                 f"{kind!r} is not an AcceleratorType")  # fmt: skip
        if kind in ACCELERATORS:
            _require(int(machine.get("acceleratorCount", 0)) >= 1, "accelerator count must be >= 1")
        replicas = int(pool.get("replicaCount", 0))
        _require(replicas >= 1, f"worker_pool_specs[{index}].replica_count must be >= 1")
        check_machine(machine, replicas, len(pools), f"worker_pool_specs[{index}]")
        check_disk(
            pool.get("diskSpec") or {}, machine["machineType"], f"worker_pool_specs[{index}]"
        )
        _require(index != 0 or replicas == 1, "the first worker pool (the chief) takes 1 replica")
        _require(bool((pool.get("containerSpec") or {}).get("imageUri")),
                 f"worker_pool_specs[{index}]: container_spec.image_uri is required")  # fmt: skip
    account = spec.get("serviceAccount", "")
    _require(not account or "@" in account, f"service_account {account!r} is not an e-mail")
    return job


@dataclass
class FakeVertex:
    """The server and its state: jobs by resource name, and every request received."""

    final_state: str = "PIPELINE_STATE_SUCCEEDED"
    custom_job_state: str = "JOB_STATE_SUCCEEDED"
    custom_job_error: dict[str, Any] | None = None  # a google.rpc.Status for ended jobs
    refuse_experiment_runs: bool = False  # addContextChildren answers PERMISSION_DENIED
    refuse_experiments: bool = False  # creating a context (an Experiment) answers the same
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    custom_jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    contexts: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count = field(default_factory=itertools.count)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: pass as ``aiplatform.init(api_endpoint=...)``."""
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeVertex:
        """Serve on an ephemeral loopback port from a daemon thread."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                fake._dispatch(self)

            do_POST = do_PATCH = do_DELETE = do_GET

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-vertex", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeVertex:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _dispatch(self, handler: BaseHTTPRequestHandler) -> None:
        parsed = urllib.parse.urlsplit(handler.path)
        query = urllib.parse.parse_qs(parsed.query)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        with self._lock:
            self.requests.append(
                {
                    "method": handler.command,
                    "path": parsed.path,
                    "query": query,
                    "body": raw.decode(errors="replace"),
                }
            )
        ints = "json;enum-encoding=int" in query.get("$alt", [""])[0]
        try:
            for method, pattern, action in ROUTES:
                match = pattern.match(parsed.path)
                if match and method == handler.command:
                    body = json.loads(raw) if raw else {}
                    result = getattr(self, "_" + action)(match.groupdict(), query, body)
                    return self._reply(handler, 200, self._encode(result, ints))
            raise ApiError(404, f"no such method: {handler.command} {parsed.path}")
        except json.JSONDecodeError as exc:
            self._reply(handler, 400, ApiError(400, f"invalid JSON: {exc}").body())
        except ApiError as exc:
            self._reply(handler, exc.code, exc.body())

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json; charset=UTF-8")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    @staticmethod
    def _encode(result: dict[str, Any], ints: bool) -> dict[str, Any]:
        """Enums as numbers when the client asked ``$alt=json;enum-encoding=int``."""

        def one(job: dict[str, Any]) -> dict[str, Any]:
            if ints and job.get("state") in STATES:
                return {**job, "state": STATES.index(job["state"])}
            return job

        if "pipelineJobs" in result:
            return {**result, "pipelineJobs": [one(j) for j in result["pipelineJobs"]]}
        return one(result)

    def _create(
        self, where: dict[str, str], query: dict[str, list[str]], body: dict[str, Any]
    ) -> dict[str, Any]:
        job = check_job(body)
        job_id = query.get("pipelineJobId", [""])[0] or f"job-{next(self._ids)}"
        _require(
            bool(JOB_ID.match(job_id)), f"pipeline_job_id {job_id!r} must match {JOB_ID.pattern}"
        )
        name = f"projects/{where['project']}/locations/{where['location']}/pipelineJobs/{job_id}"
        now = _now()
        job.update(name=name, state="PIPELINE_STATE_PENDING", createTime=now, updateTime=now)
        store = f"projects/{where['project']}/locations/{where['location']}/metadataStores/default"
        job["jobDetail"] = {
            "pipelineRunContext": {
                "name": f"{store}/contexts/{job_id}",
                "schemaTitle": "system.PipelineRun",
            }
        }
        with self._lock:
            if name in self.jobs:
                raise ApiError(409, f"PipelineJob {name} already exists")
            self.jobs[name] = job
        return job

    @staticmethod
    def _store(where: dict[str, str]) -> str:
        return f"projects/{where['project']}/locations/{where['location']}/metadataStores/default"

    def _get_store(self, where: dict[str, str], query: Any, body: Any) -> dict[str, Any]:
        return {"name": self._store(where), "createTime": _now()}

    def _get_context(self, where: dict[str, str], query: Any, body: Any) -> dict[str, Any]:
        name = f"{self._store(where)}/contexts/{where['id']}"
        if name not in self.contexts:
            raise ApiError(404, f"Context {name} not found")
        return dict(self.contexts[name])

    def _create_context(self, where: dict[str, str], query: Any, body: Any) -> dict[str, Any]:
        context_id = query.get("contextId", [""])[0]
        _require(bool(JOB_ID.match(context_id)), f"context_id {context_id!r} is not valid")
        _require(bool(body.get("schemaTitle")), "context.schema_title is required")
        if self.refuse_experiments:
            raise ApiError(403, "Permission 'aiplatform.metadataStores.write' denied")
        name = f"{self._store(where)}/contexts/{context_id}"
        with self._lock:
            if name in self.contexts:
                raise ApiError(409, f"Context {name} already exists")
            self.contexts[name] = {**body, "name": name, "createTime": _now(), "etag": "1"}
            return dict(self.contexts[name])

    def _add_children(self, where: dict[str, str], query: Any, body: Any) -> dict[str, Any]:
        context = self._get_context(where, query, body)
        if self.refuse_experiment_runs:
            raise ApiError(403, "Permission 'aiplatform.metadataStores.write' denied")
        children = body.get("childContexts") or []
        _require(bool(children), "child_contexts must not be empty")
        with self._lock:
            self.contexts[context["name"]].setdefault("children", []).extend(children)
        return {}

    def _create_custom_job(self, where: dict[str, str], query: Any, body: Any) -> dict[str, Any]:
        job = check_custom_job(body)
        name = f"projects/{where['project']}/locations/{where['location']}/customJobs/"
        name += str(1000 + next(self._ids))
        job.update(name=name, state=self.custom_job_state, createTime=_now())
        if self.custom_job_error:
            job["error"] = dict(self.custom_job_error)
        with self._lock:
            self.custom_jobs[name] = job
        return job

    def _get_custom_job(self, where: dict[str, str], query: Any, body: Any) -> dict[str, Any]:
        name = f"projects/{where['project']}/locations/{where['location']}/customJobs/{where['id']}"
        if name not in self.custom_jobs:
            raise ApiError(404, f"CustomJob {name} not found")
        return dict(self.custom_jobs[name])

    def _lookup(self, where: dict[str, str]) -> dict[str, Any]:
        parent = f"projects/{where['project']}/locations/{where['location']}"
        name = f"{parent}/pipelineJobs/{where['id']}"
        if name not in self.jobs:
            raise ApiError(404, f"PipelineJob {name} not found")
        return self.jobs[name]

    def _get(self, where: dict[str, str], query: Any, body: Any) -> dict[str, Any]:
        """Each read moves a job on: PENDING -> RUNNING -> ``final_state``."""
        with self._lock:
            job = self._lookup(where)
            nxt = {
                "PIPELINE_STATE_PENDING": "PIPELINE_STATE_RUNNING",
                "PIPELINE_STATE_RUNNING": self.final_state,
                "PIPELINE_STATE_CANCELLING": "PIPELINE_STATE_CANCELLED",
            }.get(job["state"])
            if nxt:
                job.update(state=nxt, updateTime=_now())
                job.setdefault("startTime", job["updateTime"])
                if nxt in STATES[4:8]:
                    job["endTime"] = job["updateTime"]
            return dict(job)

    def _list(self, where: dict[str, str], query: Any, body: Any) -> dict[str, Any]:
        prefix = f"projects/{where['project']}/locations/{where['location']}/pipelineJobs/"
        with self._lock:
            return {"pipelineJobs": [dict(j) for n, j in self.jobs.items() if n.startswith(prefix)]}

    def _cancel(self, where: dict[str, str], query: Any, body: Any) -> dict[str, Any]:
        with self._lock:
            job = self._lookup(where)
            if job["state"] in STATES[4:8]:
                raise ApiError(
                    400,
                    f"PipelineJob {job['name']} is already {job['state']}",
                    "FAILED_PRECONDITION",
                )
            job.update(state="PIPELINE_STATE_CANCELLING", updateTime=_now())
        return {}
