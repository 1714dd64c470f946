"""The driver's input resolution (backend/src/v2/driver/resolve.go): a task's parameters and
artifacts from its parent DAG, its producers (through sub-DAG outputs, ParallelFor collection
and ``dsl.OneOf``) and runtime constants, type-checked as the driver does."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from . import releases
from .cluster import Cluster, Run
from .metadata import Execution
from .results import ArtifactRecord, DriverError, TaskResult
from .values import kind_of, pb_value_to_text, to_pb

__all__ = ["ArtInput", "NullParameter", "dag_outputs", "resolve_inputs", "resolve_parameter"]

_RUNTIME_PLACEHOLDERS = (
    "{{$.pipeline_job_name}}",
    "{{$.pipeline_job_resource_name}}",
    "{{$.pipeline_job_uuid}}",
    "{{$.pipeline_task_name}}",
    "{{$.pipeline_task_uuid}}",
)
_KIND_TYPES = {
    "string": ("STRING",),
    "number": ("NUMBER_DOUBLE", "NUMBER_INTEGER"),
    "bool": ("BOOLEAN",),
    "list": ("LIST",),
    "struct": ("STRUCT",),
}


class NullParameter(Exception):
    """resolve.go ``ErrResolvedParameterNull``."""


class ArtInput(NamedTuple):
    """A resolved input artifact list."""

    records: list[ArtifactRecord]
    typed: bool  # a producer output (type instanceSchema "") or a DAG input (no type)

    def runtime_artifacts(self) -> list[dict[str, Any]]:
        """As the executor input holds them (``toRuntimeArtifact``)."""
        return [r.runtime_artifact(typed=self.typed) for r in self.records]


def resolve_inputs(
    cluster: Cluster,
    run: Run,
    dag: Execution,
    key: str,
    task: Mapping[str, Any],
    iteration_index: int | None,
    driver_type: str,
) -> tuple[dict[str, Any], dict[str, ArtInput]]:
    """``resolveInputs``: the task's parameters and artifacts, type-checked as the driver does.
    An iteration driver (``iteration_index`` set) copies the loop DAG's inputs instead."""
    comp = run.ir.component(task)
    declared = comp.get("inputDefinitions", {}).get("parameters", {})
    set_nil: set[str] = set()
    try:
        if iteration_index is not None:
            params, arts = _iteration_inputs(dag, task, iteration_index)
        else:
            params = {}
            if driver_type == "DAG":
                set_nil = _dag_defaults(declared, task, params)
            arts = _bind_inputs(cluster, run, dag, key, task, params)
        for name, binding in task.get("inputs", {}).get("parameters", {}).items():
            if binding.get("parameterExpressionSelector"):
                raise DriverError(
                    f"resolving parameter {json.dumps(name)}: parameterExpressionSelector is "
                    "not supported by this runner"
                )
        validate_types(task, declared, params, set_nil, iteration_index)
    except (NullParameter, DriverError) as err:
        raise DriverError(f"failed to resolve inputs: {err}") from None
    return params, arts


def _iteration_inputs(
    loop: Execution, task: Mapping[str, Any], index: int
) -> tuple[dict[str, Any], dict[str, ArtInput]]:
    """An iteration driver's inputs (driver/dag.go): the loop DAG's inputs, read back from ML
    Metadata (one artifact per name), with the items input replaced by ``itemInput`` =
    ``items[index]``."""
    iterator = task["parameterIterator"]
    params = copy.deepcopy(loop.params)
    arts = {n: ArtInput(loop.read_back(n), False) for n in loop.artifacts}
    items_input = iterator.get("items", {}).get("inputParameter") or iterator["itemInput"]
    items = get_items(params.pop(items_input, None))
    params[iterator["itemInput"]] = items[index]
    return params, arts


def _dag_defaults(
    declared: Mapping[str, Any], task: Mapping[str, Any], params: dict[str, Any]
) -> set[str]:
    """A DAG driver gives optional DAG inputs not passed by the task their default, or null;
    returns the names set to null."""
    given = task.get("inputs", {}).get("parameters", {})
    set_nil: set[str] = set()
    for name, pspec in declared.items():
        if name not in given and pspec.get("isOptional"):
            if "defaultValue" in pspec:
                params[name] = to_pb(pspec["defaultValue"])
            else:
                params[name] = None
                set_nil.add(name)
    return set_nil


def _bind_inputs(
    cluster: Cluster,
    run: Run,
    dag: Execution,
    key: str,
    task: Mapping[str, Any],
    params: dict[str, Any],
) -> dict[str, ArtInput]:
    """The task's own bindings: parameters into ``params`` (a null one is skipped when the
    component input is optional; ``literals`` are enforced from 2.16,
    ``releases.validates_literals``), artifacts returned."""
    declared = run.ir.component(task).get("inputDefinitions", {}).get("parameters", {})
    for name, binding in task.get("inputs", {}).get("parameters", {}).items():
        comp_param = declared.get(name) or {}
        try:
            value = resolve_parameter(cluster, run, dag, key, binding)
        except NullParameter:
            if comp_param.get("isOptional"):
                continue
            raise
        literals = comp_param.get("literals") if releases.validates_literals(cluster) else None
        if literals and not any(to_pb(lit) == value for lit in literals):
            raise DriverError(
                f"validating parameter {json.dumps(name)}: input parameter "
                f"{json.dumps(name)} value {value!r} does not match any of the allowed "
                f"literal values: {literals!r}"
            )
        params[name] = value
    return {
        name: _resolve_artifact(cluster, dag, name, binding)
        for name, binding in task.get("inputs", {}).get("artifacts", {}).items()
    }


def validate_types(
    task: Mapping[str, Any],
    declared: Mapping[str, Any],
    params: dict[str, Any],
    set_nil: set[str],
    iteration_index: int | None,
) -> None:
    """``resolveInputs`` -> ``handleParamTypeValidationAndConversion``, for the component's
    declared inputs only: a STRING input takes any value, converted with ``PbValueToText``
    (2.0 -> "2", lists/structs -> JSON); any other type must match the value's kind, else
    "input parameter %q type mismatch: expect %s, got %s". NUMBER_INTEGER and NUMBER_DOUBLE
    both accept any number -- there is no integrality check (2.0 and 2.5 both pass for an
    ``int``). A loop DAG's item input and an iteration's items input are not checked."""
    iterator = task.get("parameterIterator")
    for name, spec in declared.items():
        if iterator is not None:
            if iteration_index is None and iterator.get("itemInput") == name:
                continue
            items_input = iterator.get("items", {}).get("inputParameter")
            if iteration_index is not None and items_input == name:
                continue
        ptype = spec.get("parameterType", "PARAMETER_TYPE_ENUM_UNSPECIFIED")
        if name not in params:
            if not spec.get("isOptional") and "defaultValue" not in spec:
                raise DriverError(
                    "neither value nor default value provided for non-optional parameter "
                    f"{json.dumps(name)}"
                )
            if spec.get("isOptional"):
                continue
            if ptype != "STRING":
                raise DriverError(f"parameter {name} has unknown protobuf.Value type: <nil>")
        value = params.get(name)
        if name in set_nil and value is None:
            continue
        if ptype == "STRING":
            if not isinstance(value, str):
                params[name] = pb_value_to_text(value)
            continue
        kind = kind_of(value)
        if kind == "null":
            raise DriverError(f"got null for input parameter {json.dumps(name)}")
        if ptype not in _KIND_TYPES[kind]:
            raise DriverError(
                f"input parameter {json.dumps(name)} type mismatch: expect {ptype}, got {kind}"
            )


def resolve_parameter(
    cluster: Cluster, run: Run, dag: Execution, key: str, binding: Mapping[str, Any]
) -> Any:
    """``resolveInputParameter``: from the parent DAG's inputs (null -> ``NullParameter``, "the
    resolved input parameter is null"), a producer's output, or a runtime constant."""
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
            raise NullParameter(f"the resolved input parameter is null: {source}")
        return copy.deepcopy(value)
    if "taskOutputParameter" in binding:
        ref = binding["taskOutputParameter"]
        wrap = f"resolving input parameter with spec {spec_text}: "
        if not ref.get("producerTask", ""):
            raise DriverError(wrap + "producerTaskName is empty")
        if not ref.get("outputParameterKey", ""):
            raise DriverError(wrap + "output parameter key is empty")
        producer = dag.children.get(ref["producerTask"])
        if producer is None:
            name = dag.mlmd_task_name(ref["producerTask"])
            raise DriverError(wrap + f"producer task, {name}, not in tasks")
        try:
            return copy.deepcopy(output_of(cluster, producer, ref["outputParameterKey"], False))
        except DriverError as err:
            raise DriverError(wrap + str(err)) from None
    if "runtimeValue" in binding:
        constant = binding["runtimeValue"].get("constant")
        if isinstance(constant, str) and constant in releases.JOB_TIME_PLACEHOLDERS:
            return releases.job_time_placeholder(cluster, constant, run.created)
        if isinstance(constant, str) and constant in _RUNTIME_PLACEHOLDERS:
            return _runtime_placeholder(run, dag, key, constant)
        return to_pb(constant)
    raise DriverError(f"parameter spec of type {sorted(binding)} not implemented yet")


def _runtime_placeholder(run: Run, dag: Execution, key: str, constant: str) -> str:
    """The driver's values for the run/task placeholders (``resolveInputParameter``), substituted
    only when they are the whole constant: ``{{$.pipeline_job_name}}`` (run display name),
    ``{{$.pipeline_job_resource_name}}`` (workflow name), ``{{$.pipeline_job_uuid}}`` (run id),
    ``{{$.pipeline_task_name}}`` (task name), ``{{$.pipeline_task_uuid}}`` (the PARENT DAG's
    execution id). The create/schedule times differ by release
    (``releases.job_time_placeholder``)."""
    return {
        "{{$.pipeline_job_name}}": run.result.display_name,
        "{{$.pipeline_job_resource_name}}": run.result.run_name,
        "{{$.pipeline_job_uuid}}": run.result.run_id,
        "{{$.pipeline_task_name}}": key,
        "{{$.pipeline_task_uuid}}": str(dag.id),
    }[constant]


def _resolve_artifact(
    cluster: Cluster, dag: Execution, name: str, binding: Mapping[str, Any]
) -> ArtInput:
    """``resolveInputArtifact``: a DAG input (read back from ML Metadata, see
    ``Execution.read_back``) or a producer's output artifact."""
    spec_text = json.dumps(binding, sort_keys=True)
    wrap = f"failed to resolve input artifact {name} with spec {spec_text}: "
    if "componentInputArtifact" in binding:
        source = binding["componentInputArtifact"]
        if not source:
            raise DriverError(wrap + "component input artifact key is empty")
        if source not in dag.artifacts:
            raise DriverError(wrap + f"parent DAG does not have input artifact {source}")
        return ArtInput(dag.read_back(source), False)
    if "taskOutputArtifact" in binding:
        ref = binding["taskOutputArtifact"]
        producer_key = ref.get("producerTask", "")
        if not producer_key:
            raise DriverError(wrap + "producer task is empty")
        producer = dag.children.get(producer_key)
        if producer is None:
            raise DriverError(
                wrap + f'cannot find producer task "{dag.mlmd_task_name(producer_key)}"'
            )
        try:
            found = output_of(cluster, producer, ref.get("outputArtifactKey", ""), True)
        except DriverError as err:
            raise DriverError(wrap + str(err)) from None
        return ArtInput(list(found), True)
    raise DriverError(wrap + f"artifact spec of type {sorted(binding)} not implemented yet")


def output_of(cluster: Cluster, producer: Execution, key: str, artifact: bool) -> Any:
    """``resolveUpstreamParameters`` / ``resolveUpstreamArtifacts``: ``producer``'s output,
    following sub-DAG outputs (``valueFromParameter``, ``artifactSelectors``) down to a
    container; a ParallelFor's output is the list of every iteration's value."""
    current = producer
    while True:
        if current.kind == "container":
            if not artifact:
                return current.out_params.get(key)
            record = current.out_artifacts.get(key)
            if record is None:
                raise DriverError(
                    f"cannot find output artifact key {json.dumps(key)} in producer "
                    f"task {json.dumps(current.name)} (state {current.state})"
                )
            return [record]
        if current.kind == "loop":
            return collect(cluster, current, key, artifact)
        sub, key = _producer_subtask(cluster, current, key, artifact)
        child = current.children.get(sub)
        if child is None:
            raise DriverError(f"subTaskName, {current.mlmd_task_name(sub)}, not in tasks")
        current = child


def collect(cluster: Cluster, node: Execution, key: str, artifact: bool) -> list[Any]:
    """``CollectInputs``: every iteration's value (``dsl.Collected``), flattened across
    nesting."""
    if node.kind == "container":
        if artifact:
            record = node.out_artifacts.get(key)
            return [record] if record is not None else []
        return [node.out_params.get(key)]
    if node.kind == "loop":
        out: list[Any] = []
        for iteration in node.iterations:
            out.extend(collect(cluster, iteration, key, artifact))
        return out
    sub, sub_key = _producer_subtask(cluster, node, key, artifact)
    child = node.children.get(sub)
    if child is None:
        raise DriverError(f"subTaskName, {node.mlmd_task_name(sub)}, not in tasks")
    return collect(cluster, child, sub_key, artifact)


def _producer_subtask(
    cluster: Cluster, dag: Execution, key: str, artifact: bool
) -> tuple[str, str]:
    """``GetProducerTask``: the sub-task (and its output key) behind a DAG output. A
    ``dsl.OneOf`` takes the first selector whose sub-task is COMPLETE or CACHED in ML
    Metadata; before 2.17.0 an artifact OneOf takes the LAST selector, whichever branch ran
    (2.16.0 driver/resolve.go ``GetProducerTask``; fixed by PR 13437)."""
    outputs = dag.component.get("dag", {}).get("outputs", {})
    kind = "artifact" if artifact else "parameter"
    spec = outputs.get(f"{kind}s", {}).get(key)
    if spec is None:
        raise DriverError(
            f"{kind} output key {json.dumps(key)} not found in parent task "
            f"{json.dumps(dag.name)} (dag ID {dag.id})"
        )
    if artifact:
        selectors = spec.get("artifactSelectors", [])
        if len(selectors) == 1 or (selectors and not cluster.at_least("2.17")):
            return selectors[-1]["producerSubtask"], selectors[-1]["outputArtifactKey"]
        keyname = "outputArtifactKey"
    else:
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


def dag_outputs(
    cluster: Cluster, node: Execution, result: TaskResult | None = None
) -> dict[str, Any]:
    """The DAG's declared outputs as a consumer would resolve them (for the result)."""
    outputs = node.component.get("dag", {}).get("outputs", {})
    values: dict[str, Any] = {}
    for key in outputs.get("parameters", {}):
        try:
            values[key] = output_of(cluster, node, key, False)
        except DriverError as err:
            values[key] = f"<unresolved: {err}>"
    for key in outputs.get("artifacts", {}):
        try:
            records = output_of(cluster, node, key, True)
        except DriverError as err:
            values[key] = f"<unresolved: {err}>"
            continue
        if result is not None:
            result.collected_artifacts[key] = list(records)
            if len(records) == 1:
                result.output_artifacts[key] = records[0]
        values[key] = [r.uri for r in records]
    return values


def get_items(value: Any) -> list[Any]:
    """driver/util.go ``getItems``: a list, or a JSON string holding one."""
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


def executor_inputs(params: Mapping[str, Any], arts: Mapping[str, ArtInput]) -> dict[str, Any]:
    """The ``inputs`` of the executor input: parameter values and runtime artifacts."""
    out: dict[str, Any] = {}
    if params:
        out["parameterValues"] = copy.deepcopy(dict(params))
    if arts:
        out["artifacts"] = {n: {"artifacts": a.runtime_artifacts()} for n, a in arts.items()}
    return out
