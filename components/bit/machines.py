"""Where training runs, chosen when the pipeline is compiled: the accelerator family (gpu, tpu,
cpu), its type and count, and on Vertex AI the machine type and the number of machines.

Compile-time, not run-time, because what released backends do with run-time values here is
wrong or version-dependent (kubeflow/pipelines, tags 2.14.0-2.17.0):

* pod-spec placeholders are resolved as strings only (backend/src/v2/driver/resolve.go,
  ``resolvePodSpecInputRuntimeParameter``: ``GetStringValue()``), so a NUMBER_INTEGER
  accelerator count becomes "" and ``initPodSpecPatch`` (driver.go) adds no GPU limit;
* choosing the TPU or the GPU image at run time needs an artifact ``dsl.OneOf``, which takes
  the last branch before 2.17.0 (resolve.go, ``GetProducerTask``), and a condition branch,
  whose driver keeps one artifact per input name (metadata/client.go,
  ``GetInputArtifactsByExecutionID``), so the collected shard lists lose all but one.

One table (:data:`VERTEX_ACCELERATORS`) says which counts each Vertex AI accelerator comes in
and which machine types carry it (https://cloud.google.com/vertex-ai/docs/training/
configure-compute#gpu-compatibility-table, .../training/training-with-tpu-vm); every check of a
Vertex setting reads it. No TensorFlow, no KFP.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from components.bit import params

FAMILIES = ("gpu", "tpu", "cpu")
KUBERNETES_RESOURCES = {"gpu": "nvidia.com/gpu", "tpu": "google.com/tpu"}
_RESOURCE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*)$")
_N1 = r"n1-(standard|highmem|highcpu)-(4|8|16|32|64|96)"


@dataclasses.dataclass(frozen=True)
class VertexAccelerator:
    """A Vertex AI accelerator: its family, and for each count the machine types that carry
    that many (a regular expression) with the default one."""

    name: str
    family: str
    machines: Mapping[int, tuple[str, str]]  # count -> (machine type pattern, default)


def _fixed(pairs: Mapping[int, str]) -> dict[int, tuple[str, str]]:
    return {count: (re.escape(machine), machine) for count, machine in pairs.items()}


def _n1(*counts: int) -> dict[int, tuple[str, str]]:
    sizes = {1: "n1-standard-8", 2: "n1-standard-16", 4: "n1-standard-32", 8: "n1-standard-64"}
    return {count: (_N1, sizes[count]) for count in counts}


VERTEX_ACCELERATORS: dict[str, VertexAccelerator] = {
    a.name: a
    for a in (
        VertexAccelerator("NVIDIA_L4", "gpu", {
            1: (r"g2-standard-(4|8|12|16|32)", "g2-standard-8"),
            **_fixed({2: "g2-standard-24", 4: "g2-standard-48", 8: "g2-standard-96"}),
        }),
        VertexAccelerator("NVIDIA_TESLA_T4", "gpu", _n1(1, 2, 4)),
        VertexAccelerator("NVIDIA_TESLA_V100", "gpu", _n1(1, 2, 4, 8)),
        VertexAccelerator("NVIDIA_TESLA_P100", "gpu", _n1(1, 2, 4)),
        VertexAccelerator("NVIDIA_TESLA_A100", "gpu", _fixed({
            1: "a2-highgpu-1g", 2: "a2-highgpu-2g", 4: "a2-highgpu-4g", 8: "a2-highgpu-8g",
            16: "a2-megagpu-16g",
        })),
        VertexAccelerator("NVIDIA_A100_80GB", "gpu", _fixed({
            1: "a2-ultragpu-1g", 2: "a2-ultragpu-2g", 4: "a2-ultragpu-4g", 8: "a2-ultragpu-8g",
        })),
        VertexAccelerator("NVIDIA_H100_80GB", "gpu", _fixed({8: "a3-highgpu-8g"})),
        # TPU v5e, single host: 1, 4 or 8 chips (ct5lp-hightpu-1t/4t/8t).
        VertexAccelerator("TPU_V5_LITEPOD", "tpu", _fixed({
            1: "ct5lp-hightpu-1t", 4: "ct5lp-hightpu-4t", 8: "ct5lp-hightpu-8t",
        })),
    )
}  # fmt: skip
# Vertex AI accelerators bittune refuses, with the reason (one line each).
VERTEX_UNSUPPORTED = {
    "TPU_V2": "runs on a legacy TPU node set-up (cloud-tpu machine type) bittune does not support",
    "TPU_V3": "runs on a legacy TPU node set-up (cloud-tpu machine type) bittune does not support",
    "TPU_V4_POD": "is a multi-host slice; bittune trains on one TPU host",
}
VERTEX_CPU_MACHINE = r"(n1|n2|n2d|e2|c2|c2d)-(standard|highmem|highcpu)-\d+"
VERTEX_DEFAULT_TYPES = {"gpu": "NVIDIA_L4", "tpu": "TPU_V5_LITEPOD"}
VERTEX_CPU_DEFAULT = "n1-standard-8"


@dataclasses.dataclass(frozen=True)
class TrainingMachine:
    """Training's accelerator and machines, fixed in the compiled pipeline. Empty fields take
    the target's default (:meth:`resolved`)."""

    accelerator: str = "gpu"
    accelerator_type: str = ""
    accelerator_count: int = 1
    training_replicas: int = 1
    training_machine_type: str = ""

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> TrainingMachine:
        """From the table's compile-time parameters (missing ones take their defaults)."""
        names = [f.name for f in dataclasses.fields(cls)]
        given = {n: values[n] for n in names if values.get(n) is not None}
        return cls(**given)

    def problems(self, target: str) -> list[str]:
        """One line per problem with this machine for ``target`` (kubeflow, vertex, local)."""
        found = params.problems({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        if found:
            return found
        if target == "local":
            return []
        if self.accelerator not in FAMILIES:
            return [f"accelerator must be gpu, tpu or cpu on a cluster, got {self.accelerator!r}"]
        if target == "vertex":
            return _vertex_problems(self)
        return _kubernetes_problems(self)

    def resolved(self, target: str) -> TrainingMachine:
        """This machine with the target's defaults filled in; raises
        :class:`params.ParameterError` naming every problem."""
        found = self.problems(target)
        if found:
            raise params.ParameterError("invalid training machine: " + "; ".join(found))
        if target == "local" or self.accelerator == "cpu":
            return dataclasses.replace(self, accelerator_type="", accelerator_count=0,
                                       training_machine_type=self._cpu_machine(target))  # fmt: skip
        if target == "kubeflow":
            kind = self.accelerator_type or KUBERNETES_RESOURCES[self.accelerator]
            return dataclasses.replace(self, accelerator_type=kind, training_machine_type="")
        kind = self.accelerator_type or VERTEX_DEFAULT_TYPES[self.accelerator]
        _, default = VERTEX_ACCELERATORS[kind].machines[self.accelerator_count]
        machine = self.training_machine_type or default
        return dataclasses.replace(self, accelerator_type=kind, training_machine_type=machine)

    def _cpu_machine(self, target: str) -> str:
        return (self.training_machine_type or VERTEX_CPU_DEFAULT) if target == "vertex" else ""

    def describe(self) -> str:
        """One line, e.g. ``2 x NVIDIA_L4 on g2-standard-24, 3 machines``."""
        if self.accelerator != "gpu" and self.accelerator != "tpu":
            what = "CPU only" if self.accelerator == "cpu" else "whatever the machine has"
        else:
            what = f"{self.accelerator_count} x {self.accelerator_type}"
        where = f" on {self.training_machine_type}" if self.training_machine_type else ""
        many = f", {self.training_replicas} machines" if self.training_replicas > 1 else ""
        return what + where + many


def _kubernetes_problems(machine: TrainingMachine) -> list[str]:
    found = []
    if machine.training_replicas != 1:
        found.append(
            "training_replicas > 1 needs Vertex AI Pipelines (bittune compile --target vertex); "
            "on Kubeflow Pipelines train on one machine (see docs: Kubeflow Trainer)"
        )
    kind = machine.accelerator_type
    if machine.accelerator != "cpu" and kind and not _RESOURCE_NAME.match(kind):
        example = KUBERNETES_RESOURCES[machine.accelerator]
        found.append(
            f"accelerator_type {kind!r} is not a Kubernetes resource name; on Kubeflow "
            f"Pipelines it is e.g. {example}"
        )
    if machine.training_machine_type:
        found.append("training_machine_type applies to Vertex AI only (Kubernetes picks nodes "
                     "by training_node_selector)")  # fmt: skip
    return found


def _vertex_problems(machine: TrainingMachine) -> list[str]:
    if machine.accelerator == "cpu":
        chosen = machine.training_machine_type or VERTEX_CPU_DEFAULT
        if not re.fullmatch(VERTEX_CPU_MACHINE, chosen):
            return [f"training_machine_type {chosen!r} is not a CPU machine type (e.g. "
                    f"{VERTEX_CPU_DEFAULT})"]  # fmt: skip
        return []
    kind = machine.accelerator_type or VERTEX_DEFAULT_TYPES[machine.accelerator]
    if kind in VERTEX_UNSUPPORTED:
        return [f"accelerator_type {kind} {VERTEX_UNSUPPORTED[kind]}; use TPU_V5_LITEPOD"]
    accelerator = VERTEX_ACCELERATORS.get(kind)
    if accelerator is None:
        known = ", ".join(VERTEX_ACCELERATORS)
        return [f"accelerator_type {kind!r} is not a Vertex AI accelerator bittune supports "
                f"(use one of {known})"]  # fmt: skip
    found = []
    if accelerator.family != machine.accelerator:
        found.append(f"accelerator_type {kind} is a {accelerator.family.upper()}: compile with "
                     f"--accelerator {accelerator.family}")  # fmt: skip
    counts = accelerator.machines
    if machine.accelerator_count not in counts:
        *most, last = [str(c) for c in counts]
        allowed = f"{', '.join(most)} or {last}" if most else last
        found.append(f"{kind} comes {allowed} to a machine, not {machine.accelerator_count}")
    elif machine.training_machine_type:
        pattern, default = counts[machine.accelerator_count]
        if not re.fullmatch(pattern, machine.training_machine_type):
            found.append(
                f"training_machine_type {machine.training_machine_type} does not carry "
                f"{machine.accelerator_count} x {kind} (e.g. {default})"
            )
    if accelerator.family == "tpu" and machine.training_replicas != 1:
        found.append("training_replicas > 1 trains on GPU machines; a TPU host trains alone "
                     "(training_replicas 1)")  # fmt: skip
    return found
