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

One table (:data:`VERTEX_ACCELERATORS`) says which counts each Vertex AI accelerator comes in,
which machine types carry them and, for TPU VMs, the slice topology; every check of a Vertex
setting reads it, and every row cites the Google page it was read from (the pages as of
2026-12; :data:`PAGES`). No TensorFlow, no KFP.
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

PAGES = {
    # Vertex AI: the machine types custom training runs on, the GPU compatibility table and
    # the TPU VM configurations (machine type, accelerator, count, tpuTopology).
    "vertex": "https://cloud.google.com/vertex-ai/docs/training/configure-compute",
    # Vertex AI: "you can specify TPU v2, TPU v3, or TPU v5e VMs"; "TPU v5e supports ...
    # TensorFlow 2.15+", "TPU v6e supports ... JAX 0.4.37+, and PyTorch 2.1+" (no TensorFlow);
    # v4 is not listed. The page's current copy (Agent Platform) says it outright: "Starting
    # with TPU v6e, TensorFlow isn't supported for training" (PAGES["agent-tpu"]).
    "vertex-tpu": "https://cloud.google.com/vertex-ai/docs/training/training-with-tpu-vm",
    "agent-tpu": (
        "https://docs.cloud.google.com/gemini-enterprise-agent-platform/machine-learning/"
        "training/training-with-tpu-vm"
    ),
    # Compute Engine: GPU machine types; N1 with attached GPUs bounds vCPUs and memory per
    # GPU count (section "N1 general-purpose machine series").
    "gpus": "https://cloud.google.com/compute/docs/gpus",
}


def _n1_types() -> dict[str, tuple[int, float]]:
    """Vertex AI's N1 training machine types (PAGES["vertex"], "Compute Engine machine
    types"): name -> (vCPUs, GB of memory); memory per vCPU as Compute Engine's N1 series
    has it (standard 3.75 GB, highmem 6.5 GB, highcpu 0.9 GB)."""
    sizes = {
        "standard": ((4, 8, 16, 32, 64, 96), 3.75),
        "highmem": ((2, 4, 8, 16, 32, 64, 96), 6.5),
        "highcpu": ((16, 32, 64, 96), 0.9),
    }
    return {f"n1-{kind}-{n}": (n, n * per) for kind, (ns, per) in sizes.items() for n in ns}


VERTEX_N1 = _n1_types()


@dataclasses.dataclass(frozen=True)
class VertexAccelerator:
    """A Vertex AI accelerator as bittune may ask for it: its family, the machine types that
    carry each count (the first the default), and the page the row was read from.

    ``n1_limits`` (GPUs on N1): count -> (most vCPUs, most GB) Compute Engine attaches that
    many to. ``topologies`` (TPU VMs): count -> the ``tpu_topology`` the job must carry.
    ``names_type``: whether the job's machine spec names ``accelerator_type``/``_count``
    (python-aiplatform tests/unit/aiplatform/constants.py ``TrainingJobConstants``: the v3
    spec names them on ``cloud-tpu``; the v5e spec names only the machine type and
    ``tpu_topology``)."""

    name: str
    family: str
    machines: Mapping[int, tuple[str, ...]]
    source: str
    n1_limits: Mapping[int, tuple[int, float]] = dataclasses.field(default_factory=dict)
    topologies: Mapping[int, str] = dataclasses.field(default_factory=dict)
    names_type: bool = True


def _on_n1(name: str, limits: Mapping[int, tuple[int, float]]) -> VertexAccelerator:
    """A GPU attached to N1 machines: every Vertex N1 type within the bounds, for each count
    (default: the largest n1-standard within them, at most 8 vCPUs a GPU)."""
    machines = {}
    for count, (cpus, memory) in limits.items():
        fits = [m for m, (c, gb) in VERTEX_N1.items() if c <= cpus and gb <= memory]
        standard = [
            m for m in fits if m.startswith("n1-standard-") and VERTEX_N1[m][0] <= 8 * count
        ]
        default = max(standard, key=lambda m: VERTEX_N1[m][0])
        machines[count] = (default, *[m for m in fits if m != default])
    return VertexAccelerator(name, "gpu", machines, PAGES["gpus"] + "#n1-gpus", n1_limits=limits)


def _tpu_vm(name: str, machines: Mapping[int, str], topologies: Mapping[int, str]):
    pairs = {n: (m,) for n, m in machines.items()}
    return VertexAccelerator(
        name, "tpu", pairs, PAGES["vertex"] + "#tpu", topologies=topologies, names_type=False
    )


_SINGLE_HOST = {1: "1x1", 4: "2x2", 8: "2x4"}  # TPU v5e single-host slices
VERTEX_ACCELERATORS: dict[str, VertexAccelerator] = {
    a.name: a
    for a in (
        # G2: one L4 on g2-standard-4/8/12/16/32, 2 on -24, 4 on -48, 8 on -96.
        VertexAccelerator("NVIDIA_L4", "gpu", {
            1: ("g2-standard-8", "g2-standard-4", "g2-standard-12", "g2-standard-16",
                "g2-standard-32"),
            2: ("g2-standard-24",), 4: ("g2-standard-48",), 8: ("g2-standard-96",),
        }, PAGES["vertex"] + "#gpu-compatibility-table"),
        # N1 + GPU bounds (vCPUs, GB) per count, Compute Engine's N1 table.
        _on_n1("NVIDIA_TESLA_T4", {1: (48, 312), 2: (48, 312), 4: (96, 624)}),
        _on_n1("NVIDIA_TESLA_P4", {1: (24, 156), 2: (48, 312), 4: (96, 624)}),
        _on_n1("NVIDIA_TESLA_V100", {1: (12, 78), 2: (24, 156), 4: (48, 312), 8: (96, 624)}),
        _on_n1("NVIDIA_TESLA_P100", {1: (16, 104), 2: (32, 208), 4: (96, 624)}),
        # A2 Standard / Ultra, A3 High / Mega / Ultra, A4: the GPU count is the machine's.
        VertexAccelerator("NVIDIA_TESLA_A100", "gpu", {
            1: ("a2-highgpu-1g",), 2: ("a2-highgpu-2g",), 4: ("a2-highgpu-4g",),
            8: ("a2-highgpu-8g",), 16: ("a2-megagpu-16g",),
        }, PAGES["vertex"] + "#gpu-compatibility-table"),
        VertexAccelerator("NVIDIA_A100_80GB", "gpu", {
            1: ("a2-ultragpu-1g",), 2: ("a2-ultragpu-2g",), 4: ("a2-ultragpu-4g",),
            8: ("a2-ultragpu-8g",),
        }, PAGES["vertex"] + "#gpu-compatibility-table"),
        VertexAccelerator("NVIDIA_H100_80GB", "gpu", {
            1: ("a3-highgpu-1g",), 2: ("a3-highgpu-2g",), 4: ("a3-highgpu-4g",),
            8: ("a3-highgpu-8g",),
        }, PAGES["vertex"] + "#gpu-compatibility-table"),
        VertexAccelerator("NVIDIA_H100_MEGA_80GB", "gpu", {8: ("a3-megagpu-8g",)},
                          PAGES["vertex"] + "#gpu-compatibility-table"),
        VertexAccelerator("NVIDIA_H200_141GB", "gpu", {8: ("a3-ultragpu-8g",)},
                          PAGES["vertex"] + "#gpu-compatibility-table"),
        VertexAccelerator("NVIDIA_B200", "gpu", {8: ("a4-highgpu-8g",)},
                          PAGES["vertex"] + "#gpu-compatibility-table"),
        # TPU v2 / v3 VMs: machine type cloud-tpu, 8 cores on one host (32 and more: pods).
        VertexAccelerator("TPU_V2", "tpu", {8: ("cloud-tpu",)}, PAGES["vertex"] + "#tpu"),
        VertexAccelerator("TPU_V3", "tpu", {8: ("cloud-tpu",)}, PAGES["vertex"] + "#tpu"),
        # TPU v5e VMs, single host: 1, 4 or 8 chips, topology 1x1, 2x2, 2x4. (v6e: refused,
        # VERTEX_UNSUPPORTED: no TensorFlow on v6e.)
        _tpu_vm("TPU_V5_LITEPOD", {1: "ct5lp-hightpu-1t", 4: "ct5lp-hightpu-4t",
                                   8: "ct5lp-hightpu-8t"}, _SINGLE_HOST),
    )
}  # fmt: skip
# Vertex AI accelerators bittune refuses, with the reason (one line each).
VERTEX_UNSUPPORTED = {
    "TPU_V4_POD": f"is not among the TPU VMs Vertex AI training lists (v2, v3, v5e: "
                  f"{PAGES['vertex-tpu']})",
    # v6e (ct6e-standard-*t) has no AcceleratorType value; bittune calls it TPU_V6E.
    "TPU_V6E": f"trains JAX and PyTorch on Vertex AI, not TensorFlow (\"Starting with TPU v6e, "
               f"TensorFlow isn't supported for training\": {PAGES['agent-tpu']}); use "
               f"TPU_V5_LITEPOD",
    "NVIDIA_GB200": "runs on A4X (a4x-highgpu-4g), Arm machines; bittune's images are x86-64",
    "NVIDIA_TESLA_K80": "has reached end of support (https://cloud.google.com/compute/docs/"
                        "eol/k80-eol)",
    "NVIDIA_RTX_PRO_6000": f"is not in Vertex AI's training GPU table ({PAGES['vertex']})",
}  # fmt: skip
VERTEX_CPU_MACHINE = r"(n1|n2|n2d|e2|c2|c2d)-(standard|highmem|highcpu)-\d+"
VERTEX_DEFAULT_TYPES = {"gpu": "NVIDIA_L4", "tpu": "TPU_V5_LITEPOD"}
VERTEX_CPU_DEFAULT = "n1-standard-8"
# Machine series whose boot disk is Hyperdisk, not Persistent Disk: A3 Ultra (a3-ultragpu-*,
# H200; aiplatform_v1 ``DiskSpec.boot_disk_type``, google/cloud/aiplatform_v1/types/
# machine_resources.py: "For non-A3U machines, the default value is "pd-ssd", for A3U machines,
# the default value is "hyperdisk-balanced"") and A4 (a4-highgpu-*, B200), whose Compute
# Engine series boots from Hyperdisk only by the second reading's recollection (not verified
# from a page here: docs/vertex.md, "Not verified"); "hyperdisk-balanced" is one of DiskSpec's
# valid values either way.
HYPERDISK_BOOT = ("a3-ultragpu-", "a4-highgpu-")


def boot_disk_type(machine_type: str) -> str:
    """The CustomJob's ``disk_spec.boot_disk_type`` for ``machine_type``: ``hyperdisk-balanced``
    on :data:`HYPERDISK_BOOT` machines, else ``pd-ssd`` (DiskSpec's valid values)."""
    return "hyperdisk-balanced" if machine_type.startswith(HYPERDISK_BOOT) else "pd-ssd"


def vertex_machine_spec(machine: TrainingMachine) -> dict[str, Any]:
    """A resolved Vertex machine's CustomJob ``machine_spec`` (aiplatform_v1 MachineSpec):
    the machine type; the accelerator type and count unless the machine type names them (TPU
    v5e VMs); and a TPU VM's ``tpu_topology``, which python-aiplatform's
    ``CustomJob.from_local_script`` docstring (google/cloud/aiplatform/jobs.py) says "is
    required for TPU v5 versions"."""
    spec: dict[str, Any] = {"machine_type": machine.training_machine_type}
    if machine.accelerator not in ("gpu", "tpu"):
        return spec
    row = VERTEX_ACCELERATORS[machine.accelerator_type]
    if row.names_type:
        spec.update(accelerator_type=machine.accelerator_type,
                    accelerator_count=machine.accelerator_count)  # fmt: skip
    if row.topologies:
        spec["tpu_topology"] = row.topologies[machine.accelerator_count]
    return spec


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
        :class:`params.ParameterError` naming every problem. On Vertex AI a machine type is
        filled in only for a CustomJob (:meth:`custom_job`): one GPU or CPU machine without
        one is a plain pipeline task, which Vertex sizes from its limits."""
        found = self.problems(target)
        if found:
            raise params.ParameterError("invalid training machine: " + "; ".join(found))
        custom = self.custom_job(target)
        if target == "local" or self.accelerator == "cpu":
            machine = (self.training_machine_type or VERTEX_CPU_DEFAULT) if custom else ""
            return dataclasses.replace(self, accelerator_type="", accelerator_count=0,
                                       training_machine_type=machine)  # fmt: skip
        if target == "kubeflow":
            kind = self.accelerator_type or KUBERNETES_RESOURCES[self.accelerator]
            return dataclasses.replace(self, accelerator_type=kind, training_machine_type="")
        kind = self.accelerator_type or VERTEX_DEFAULT_TYPES[self.accelerator]
        default = VERTEX_ACCELERATORS[kind].machines[self.accelerator_count][0]
        machine = (self.training_machine_type or default) if custom else ""
        return dataclasses.replace(self, accelerator_type=kind, training_machine_type=machine)

    def custom_job(self, target: str) -> bool:
        """Whether training runs as a Vertex AI CustomJob: several machines, a TPU VM (whose
        machine type must be named), or a machine type asked for (honoured: a plain
        pipeline task cannot name one, Vertex picks it from the task's limits)."""
        return target == "vertex" and (self.training_replicas > 1 or self.accelerator == "tpu"
                                       or bool(self.training_machine_type))  # fmt: skip

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
        return [f"accelerator_type {kind} {VERTEX_UNSUPPORTED[kind]}"]
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
        more = (
            " (more is a multi-host slice; bittune trains on one TPU host)"
            if (accelerator.family == "tpu" and machine.accelerator_count > max(counts))
            else ""
        )
        found.append(f"{kind} comes {allowed} to a machine, not {machine.accelerator_count}"
                     f"{more} ({accelerator.source})")  # fmt: skip
    elif machine.training_machine_type:
        found += _machine_type_problems(machine, kind, accelerator)
    if accelerator.family == "tpu" and machine.training_replicas != 1:
        found.append("training_replicas > 1 trains on GPU machines; a TPU host trains alone "
                     "(training_replicas 1)")  # fmt: skip
    return found


def _machine_type_problems(machine: TrainingMachine, kind: str, row: VertexAccelerator):
    """The machine type asked for against the row: one that carries the count, and on N1 one
    within Compute Engine's vCPU and memory bounds for that many GPUs."""
    count, chosen = machine.accelerator_count, machine.training_machine_type
    allowed = row.machines[count]
    if chosen in allowed:
        return []
    if row.n1_limits and chosen in VERTEX_N1:
        cpus, memory = VERTEX_N1[chosen]
        most_cpus, most_memory = row.n1_limits[count]
        return [f"training_machine_type {chosen} has {cpus} vCPUs and {memory:g} GB; Compute "
                f"Engine attaches {count} x {kind} to at most {most_cpus} vCPUs and "
                f"{most_memory:g} GB (e.g. {allowed[0]}; {row.source})"]  # fmt: skip
    return [f"training_machine_type {chosen} does not carry {count} x {kind} (e.g. "
            f"{allowed[0]}; {row.source})"]  # fmt: skip
