"""The compiled pipeline (IR YAML) and a static check of its parameter bindings."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import yaml

__all__ = ["Binding", "PipelineIR", "binding_problems", "load_ir", "parameter_bindings"]

IRSource = str | os.PathLike[str] | Mapping[str, Any]


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

    def component(self, task: Mapping[str, Any]) -> dict[str, Any]:
        """The component a task refers to (empty when it is missing)."""
        name = task.get("componentRef", {}).get("name", "")
        return self.spec.get("components", {}).get(name, {})

    def executor(self, component: Mapping[str, Any]) -> dict[str, Any]:
        """The deployment spec's executor of a container component (empty when missing)."""
        executors = self.spec.get("deploymentSpec", {}).get("executors", {})
        return executors.get(component.get("executorLabel", ""), {})

    def kubernetes_executor_config(self, executor_label: str) -> dict[str, Any] | None:
        """The platform spec's config for ``executor_label``, if any."""
        platforms = (self.platform_spec or {}).get("platforms", {})
        executors = platforms.get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
        return executors.get(executor_label)


def is_loop(task: Mapping[str, Any]) -> bool:
    """Whether a DAG task is a ParallelFor (``parameterIterator`` or ``artifactIterator``)."""
    return task.get("parameterIterator") is not None or task.get("artifactIterator") is not None


def load_ir(source: IRSource | PipelineIR) -> PipelineIR:
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


def _declared_type(definitions: Mapping[str, Any], name: str) -> str:
    return definitions.get("parameters", {}).get(name, {}).get("parameterType", "UNDECLARED")


def _producer(
    ir: PipelineIR,
    dag: Mapping[str, Any],
    binding: Mapping[str, Any],
    where: tuple[str, str],
    consumer_type: str,
) -> tuple[str, str]:
    """A binding's producer (described) and its declared type; ``where`` is the DAG's task
    path prefix and label."""
    prefix, label = where
    if "componentInputParameter" in binding:
        source = binding["componentInputParameter"]
        producer_type = _declared_type(dag.get("inputDefinitions", {}), source)
        if source.endswith("-loop-item") or "loop-item-param" in source:
            return f"{label} loop item {source!r}", producer_type
        return f"{label} input {source!r}", producer_type
    if "taskOutputParameter" in binding:
        ref = binding["taskOutputParameter"]
        producer_task = dag.get("dag", {}).get("tasks", {}).get(ref.get("producerTask", ""), {})
        outputs = ir.component(producer_task).get("outputDefinitions", {})
        key = ref.get("outputParameterKey", "")
        producer = f"{prefix}{ref.get('producerTask')}.outputs[{key!r}]"
        return producer, _declared_type(outputs, key)
    if "runtimeValue" in binding:
        value = binding["runtimeValue"].get("constant")
        return f"constant {json.dumps(value)}", _constant_type(value, consumer_type)
    return f"unsupported binding {sorted(binding)}", "UNKNOWN"


def parameter_bindings(spec: IRSource | PipelineIR) -> list[Binding]:
    """Every input parameter binding of every task (walking sub-DAGs from the root), with the
    producer's declared type and the consumer's declared type.

    Producers: a DAG input (for a loop item, the loop component's declared item type), another
    task's output, or a constant (its JSON kind; a number takes the consumer's number type when
    it fits). The driver accepts a mismatch only for a STRING consumer (it converts) and between
    the two number types."""
    ir = load_ir(spec)
    out: list[Binding] = []

    def walk(dag: Mapping[str, Any], prefix: str, label: str) -> None:
        tasks = dag.get("dag", {}).get("tasks", {})
        for key in sorted(tasks):
            comp = ir.component(tasks[key])
            path = f"{prefix}{key}"
            for name, binding in sorted(tasks[key].get("inputs", {}).get("parameters", {}).items()):
                consumer_type = _declared_type(comp.get("inputDefinitions", {}), name)
                producer, producer_type = _producer(
                    ir, dag, binding, (prefix, label), consumer_type
                )
                out.append(Binding(path, name, producer, producer_type, consumer_type))
            if "dag" in comp:
                walk(comp, f"{path}/", path)

    walk(ir.spec["root"], "", "pipeline")
    return out


def binding_problems(spec: IRSource | PipelineIR) -> list[Binding]:
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
