"""The KFP driver: one per task, before any pod (backend/src/v2/driver/driver.go, dag.go,
container.go, root_dag.go). It resolves the task's inputs, evaluates its condition, creates
its ML Metadata execution and, for a container, provisions the outputs, checks the cache and
builds the pod spec before handing over to the launcher."""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import uuid
from collections.abc import Mapping
from typing import Any, NamedTuple

from . import argo, cache, launcher, pod, podspec, releases
from .cel import CelError, evaluate_condition
from .cluster import Cluster, Run
from .ir import is_loop
from .metadata import CacheEntry, Execution, generate_output_uri, recount
from .resolve import ArtInput, dag_outputs, executor_inputs, get_items, resolve_inputs
from .results import DriverError, TaskResult
from .values import to_pb

__all__ = ["drive_task", "session_info"]

_SUPPORTED_ROOTS = ("gs://", "s3://", "minio://", "mem://")
_OUTPUT_PARAMETER_DIR = "/tmp/kfp/outputs"
_LEGACY_OUTPUT_FILE = "/tmp/kfp_outputs/output_metadata.json"


def session_info(root: str) -> dict[str, Any]:
    """The root DAG driver's check of the pipeline root (driver/root_dag.go ``RootDAG``) and
    config.GetStoreSessionInfo with no provider config (a default install). The root is the
    run's ``pipeline_root`` or the launcher config default; the IR's ``defaultPipelineRoot`` is
    NOT used by this backend (config/env.go ``DefaultPipelineRoot``, ``GetStoreSessionInfo``)."""
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


def drive_task(cluster: Cluster, run: Run, dag: Execution, key: str, task: dict[str, Any]) -> None:
    """Runs one task of ``dag``: a sub-DAG, condition group or loop, or a container."""
    name = task.get("componentRef", {}).get("name", "")
    if name not in run.ir.spec.get("components", {}):
        raise DriverError(f"component spec for {name!r} not found")
    if "dag" in run.ir.spec["components"][name]:
        _drive_dag(cluster, run, dag, key, task)
    else:
        _drive_container(cluster, run, dag, key, task)


def _error_prefix(
    run: Run, kind: str, task: Mapping[str, Any], key: str, dag: Execution, index: int | None
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
    label = run.ir.component(task).get("executorLabel")
    if label and run.ir.kubernetes_executor_config(label) is not None:
        msg += ", KubernetesExecutorConfig"
    return f"driver.{kind}({msg}) failed: "


def _condition(task: Mapping[str, Any], params: dict[str, Any], result: TaskResult) -> bool:
    """``triggerPolicy.condition``: CEL over the resolved inputs (expression/expression.go
    ``Condition``; see cel.py). A false condition records a CANCELED execution and runs
    nothing below it."""
    condition = task.get("triggerPolicy", {}).get("condition")
    if not condition:
        return True
    verdict = evaluate_condition(condition, params)
    result.condition_result = verdict
    return verdict


def _record_execution(
    cluster: Cluster,
    run: Run,
    parent: Execution,
    result: TaskResult,
    task: dict[str, Any],
    inputs: tuple[dict[str, Any], dict[str, ArtInput]],
    triggered: bool,
    **extra: Any,
) -> Execution:
    """CreateExecution: RUNNING, or CANCELED when the condition is false; the result records
    its id and resolved inputs."""
    params, arts = inputs
    node = Execution(
        id=cluster.metadata.new_execution_id(),
        kind=result.kind,
        name=result.name,
        path=result.path,
        component=run.ir.component(task),
        task=task,
        parent=parent,
        result=result,
        state="RUNNING" if triggered else "CANCELED",
        params=params,
        artifacts={n: a.records for n, a in arts.items()},
        **extra,
    )
    result.execution_id = node.id
    result.inputs = copy.deepcopy(params)
    result.input_artifacts = {n: a.runtime_artifacts() for n, a in arts.items()}
    result.mlmd_state = node.state
    if not triggered:
        result.state = "SKIPPED"
    return node


def _drive_dag(cluster: Cluster, run: Run, dag: Execution, key: str, task: dict[str, Any]) -> None:
    """driver.DAG for a sub-DAG, condition group or loop, then its tasks (or iterations). The
    execution is recorded under the task key, a loop's before 2.16 under its display name
    (``releases.loop_record_name``).

    A loop's iterations run in order; after a failure the remaining ones never start. An
    ``artifactIterator`` fails as in dag.go: "ArtifactIterator is not implemented"."""
    loop = is_loop(task)
    result = run.new_result(dag, key, task, "loop" if loop else "dag")
    prefix = _error_prefix(run, "DAG", task, key, dag, None)
    try:
        params, arts = resolve_inputs(cluster, run, dag, key, task, None, "DAG")
        triggered = _condition(task, params, result)
        count: int | None = None
        if task.get("artifactIterator") is not None:
            raise DriverError("ArtifactIterator is not implemented")
        if triggered and task.get("parameterIterator") is not None:
            count = _iteration_count(task["parameterIterator"], params)
            result.parallelism_limit = task.get("iteratorPolicy", {}).get("parallelismLimit")
    except (DriverError, CelError) as err:
        run.fail(result, dag, prefix + str(err))
        return
    node = _record_execution(
        cluster, run, dag, result, task, (params, arts), triggered, iteration_count=count
    )
    dag.children[releases.loop_record_name(cluster, key, task) if loop else key] = node
    result.iteration_count = count
    if not triggered:
        dag.argo[key] = "Skipped"
        return
    if loop:
        for index in range(count or 0):
            if not _drive_iteration(cluster, run, node, key, task, index):
                break
        if node.launched:
            recount(node)
    else:
        argo.run_dag(run, node, functools.partial(drive_task, cluster))
    result.mlmd_state = node.state
    failed = any(state == "Failed" for state in node.argo.values()) or any(
        it.result is not None and it.result.state == "FAILED" for it in node.iterations
    )
    if failed:
        result.state = "FAILED"
        result.error = result.error or "a task in this DAG failed"
        dag.argo[key] = "Failed"
        return
    result.state = "SUCCEEDED"
    dag.argo[key] = "Succeeded"
    if run.ir.component(task).get("dag", {}).get("outputs"):
        result.outputs = dag_outputs(cluster, node, result)


def _iteration_count(iterator: Mapping[str, Any], params: dict[str, Any]) -> int:
    """A ParallelFor's iteration count (driver/dag.go): the ``parameterIterator`` items are an
    input parameter (a list or a JSON string) or ``raw`` JSON, which becomes the item input."""
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
        return len(get_items(value))
    except ValueError as err:
        raise DriverError(report + str(err)) from None


def _drive_iteration(
    cluster: Cluster, run: Run, loop: Execution, key: str, task: dict[str, Any], index: int
) -> bool:
    """The iteration driver (driver.DAG with an iteration index) and the iteration's tasks.
    Each iteration copies the loop DAG's inputs, removes the items input, sets ``itemInput`` to
    ``items[index]`` and validates it against the loop component's declared item type (``->
    list`` declares STRING items, so a number item becomes the string "1" and an ``int``
    consumer then fails; ``-> List[int]`` declares NUMBER_INTEGER). Returns False when the run
    has failed and no further iteration may start."""
    if run.failed:
        return False
    result = run.new_result(loop, key, task, "iteration", path=f"{loop.path}[{index}]")
    result.iteration_index = index
    try:
        params, arts = resolve_inputs(cluster, run, loop, key, task, index, "DAG")
        triggered = _condition(task, params, result)
    except (DriverError, CelError) as err:
        run.fail(result, loop, _error_prefix(run, "DAG", task, key, loop, index) + str(err))
        return False
    node = _record_execution(
        cluster, run, loop, result, task, (params, arts), triggered, iteration_index=index
    )
    loop.iterations.append(node)
    if not triggered:
        return True
    argo.run_dag(run, node, functools.partial(drive_task, cluster))
    result.mlmd_state = node.state
    if any(state == "Failed" for state in node.argo.values()):
        result.state = "FAILED"
        result.error = "a task in this iteration failed"
        return False
    result.state = "SUCCEEDED"
    return True


class _Prepared(NamedTuple):
    """What the container driver settled before deciding whether a pod runs."""

    params: dict[str, Any]
    arts: dict[str, ArtInput]
    triggered: bool
    executor_input: dict[str, Any]
    fingerprint: str | None
    cached: CacheEntry | None


def _prepare_container(
    cluster: Cluster, run: Run, dag: Execution, key: str, task: dict[str, Any], result: TaskResult
) -> _Prepared:
    """Inputs, condition, outputs, executor input and cache lookup of driver.Container."""
    comp = run.ir.component(task)
    container = run.ir.executor(comp).get("container", {})
    params, arts = resolve_inputs(cluster, run, dag, key, task, None, "CONTAINER")
    triggered = _condition(task, params, result)
    executor_input: dict[str, Any] = {"inputs": executor_inputs(params, arts)}
    if triggered:
        executor_input["outputs"] = _provision_outputs(
            cluster, run, key, comp.get("outputDefinitions", {})
        )
    fingerprint, cached = None, None
    if not cluster.cache_disabled and triggered and cache.enabled(task):
        fingerprint = cache.fingerprint(comp, container, executor_input)
        cached = cluster.metadata.cached(fingerprint, run.ir.name, cluster.namespace)
    return _Prepared(params, arts, triggered, executor_input, fingerprint, cached)


def _drive_container(
    cluster: Cluster, run: Run, dag: Execution, key: str, task: dict[str, Any]
) -> None:
    """driver.Container, then the launcher pods (with retries) unless skipped or cached. The pod
    spec (driver.go ``initPodSpecPatch``, k8s.go ``extendPodSpecPatch``) is built only when the
    pod will be created, after the cache check; a failure there leaves the execution RUNNING."""
    result = run.new_result(dag, key, task, "container")
    prefix = _error_prefix(run, "Container", task, key, dag, None)
    comp = run.ir.component(task)
    executor = run.ir.executor(comp)
    container = executor.get("container")
    k8s = run.ir.kubernetes_executor_config(comp.get("executorLabel", ""))
    result.kubernetes_config = k8s
    if container is None:
        kind = next(iter(executor), "missing")
        run.fail(result, dag, prefix + f"{kind} executors are not supported here")
        return
    result.image = str(container.get("image", ""))
    try:
        prepared = _prepare_container(cluster, run, dag, key, task, result)
    except (DriverError, CelError) as err:
        run.fail(result, dag, prefix + str(err))
        return
    node = _record_execution(
        cluster, run, dag, result, task, (prepared.params, prepared.arts), prepared.triggered
    )
    dag.children[key] = node
    result.fingerprint = prepared.fingerprint
    if not prepared.triggered:
        dag.argo[key] = "Skipped"
        return
    if prepared.cached is not None:
        _take_cache_hit(run, dag, node, result, prepared.cached, prefix)
        return
    try:
        result.pod_spec = podspec.pod_spec(
            cluster, run, dag, key, container, prepared.executor_input, k8s
        )
        user_command = [*container.get("command", []), *container.get("args", [])]
        if releases.driver_resolves_container_args(cluster):
            user_command = podspec.resolve_container_args(user_command, prepared.executor_input)
    except DriverError as err:
        run.fail(result, dag, prefix + str(err))
        return
    launcher.launch(
        cluster, run, node, prepared.executor_input, user_command, container, prepared.fingerprint
    )


def _take_cache_hit(
    run: Run, dag: Execution, node: Execution, result: TaskResult, cached: CacheEntry, prefix: str
) -> None:
    """A cache hit: the cached execution's output parameters and the SAME artifacts (ids, URIs);
    no pod runs, and the task counts as Succeeded."""
    try:
        cache.reuse(node, cached)
    except DriverError as err:  # the execution stays RUNNING in ML Metadata
        run.fail(result, dag, prefix + str(err))
        return
    result.state = "CACHED"
    result.cache_hit = True
    result.outputs = copy.deepcopy(node.out_params)
    result.output_artifacts = dict(node.out_artifacts)
    result.mlmd_state = node.state
    dag.argo[node.name] = "Succeeded"


def _provision_outputs(
    cluster: Cluster, run: Run, task_name: str, outputs_spec: Mapping[str, Any]
) -> dict[str, Any]:
    """driver.go ``provisionOutputs``: artifact URIs ``<run root>/<task name>/<uuid>/<output
    name>``, output parameters in ``/tmp/kfp/outputs/<name>``, and the executor output file
    ``<local task root>/output_metadata.json`` (2.15.0 moved it there; 2.14.0 has
    component.OutputMetadataFilepath, ``/tmp/kfp_outputs/output_metadata.json``, for every
    task)."""
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
    output_file = _LEGACY_OUTPUT_FILE
    if cluster.at_least("2.15"):
        with contextlib.suppress(ValueError):
            output_file = pod.local_path_for_uri(task_root) + "/output_metadata.json"
    out: dict[str, Any] = {}
    if artifacts:
        out["artifacts"] = artifacts
    if parameters:
        out["parameters"] = parameters
    out["outputFile"] = output_file
    return out
