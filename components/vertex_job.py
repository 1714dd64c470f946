"""Training on several machines on Vertex AI: the training component run as a CustomJob.

Vertex AI runs a multi-machine job as a CustomJob with worker pools: pool 0 is the chief (one
replica), pool 1 the other workers; each replica gets ``CLUSTER_SPEC`` (and ``TF_CONFIG``) and
bittune's training turns it into MultiWorkerMirroredStrategy. :func:`custom_job` wraps the
training component the way Google Cloud Pipeline Components' ``create_custom_training_job_
from_component`` does (same inputs and outputs, plus ``worker_pool_specs`` and
``gcp_resources``): its container is the GCPC launcher image, which creates the CustomJob from
a payload, waits for it and reports it; the pools run the training component's own command and
arguments, its executor input JSON-escaped into the payload (``{{$.json_escape[1]}}``). The
pools' sizes are pipeline parameters, so :func:`worker_pools` builds them at run time.
"""

# (no `from __future__ import annotations`: KFP reads the component annotations as types)

import copy
import json

import yaml
from google.protobuf import json_format
from kfp import components

from components.component import component
from components.image import BITTUNE_IMAGE

LAUNCHER_IMAGE = "gcr.io/ml-pipeline/google-cloud-pipeline-components:2.22.0"
LAUNCHER = [
    "python3",
    "-u",
    "-m",
    "google_cloud_pipeline_components.container.v1.custom_job.launcher",
]
# Placeholders in the pools' command travel through worker_pools encoded, so that its own
# launcher does not fill them in: they are the CustomJob task's to fill.
OPEN, CLOSE = "[[bittune:", ":bittune]]"


@component(
    BITTUNE_IMAGE,
    "Build a training CustomJob's worker pools: one chief and the other replicas, all on the "
    "same machine and accelerators.",
    {
        "command": "The training component's command and arguments, placeholders encoded.",
        "image": "The training image.",
    },
    returns="The CustomJob's worker_pool_specs.",
)
def worker_pools(
    command: str,
    image: str,
    training_replicas: int,
    training_machine_type: str,
    accelerator_type: str,
    accelerator_count: int,
) -> list:
    from components.bit.errors import exit_on_error

    exit_on_error()
    import json

    from components.bit import params

    params.require_inputs(locals())
    if params.accelerator_kind(accelerator_type, accelerator_count) == "tpu":
        raise params.ParameterError(
            "training_replicas > 1 runs on GPU machines; a TPU slice trains on one machine"
        )
    from components.vertex_job import CLOSE, OPEN

    decoded = json.loads(command.replace(OPEN, "{{").replace(CLOSE, "}}"))
    machine = {"machine_type": training_machine_type}
    if accelerator_count:
        machine.update(accelerator_type=accelerator_type, accelerator_count=accelerator_count)
    pool = {
        "machine_spec": machine,
        "replica_count": 1,
        "disk_spec": {"boot_disk_type": "pd-ssd", "boot_disk_size_gb": 100},
        "container_spec": {"image_uri": image, **decoded},
    }
    return [pool, {**pool, "replica_count": training_replicas - 1}]


def _encoded(value: list[str]) -> list[str]:
    """The executor input placeholder JSON-escaped (it goes inside the payload's JSON)."""
    return [v.replace("{{$}}", "{{$.json_escape[1]}}") for v in value]


def custom_job(training):
    """``training`` (a lightweight component) as a Vertex AI CustomJob component, and the
    encoded command its worker pools run (the input of :func:`worker_pools`)."""
    spec = json_format.MessageToDict(training.pipeline_spec)
    (name,) = spec["deploymentSpec"]["executors"]
    container = spec["deploymentSpec"]["executors"][name]["container"]
    run = {"command": _encoded(container["command"]), "args": _encoded(container["args"])}
    encoded = json.dumps(run).replace("{{", OPEN).replace("}}", CLOSE)
    job = copy.deepcopy(spec)
    (component_name,) = job["components"]
    definition = job["components"][component_name]
    definition["inputDefinitions"]["parameters"]["worker_pool_specs"] = {"parameterType": "LIST"}
    outputs = definition.setdefault("outputDefinitions", {}).setdefault("parameters", {})
    outputs["gcp_resources"] = {"parameterType": "STRING"}
    payload = (
        '{"display_name": "bittune-training-{{$.pipeline_job_uuid}}", "job_spec": '
        '{"worker_pool_specs": {{$.inputs.parameters[\'worker_pool_specs\']}}, "scheduling": '
        '{"timeout": "172800s", "restart_job_on_worker_restart": true}}, '
        '"labels": {"app": "bittune"}}'
    )
    job["deploymentSpec"]["executors"][name]["container"] = {
        "image": LAUNCHER_IMAGE,
        "command": LAUNCHER,
        "args": [
            "--type", "CustomJob", "--payload", payload,
            "--project", "{{$.pipeline_google_cloud_project_id}}",
            "--location", "{{$.pipeline_google_cloud_location}}",
            "--gcp_resources", "{{$.outputs.parameters['gcp_resources'].output_file}}",
        ],
    }  # fmt: skip
    (task,) = job["root"]["dag"]["tasks"].values()
    task["inputs"]["parameters"]["worker_pool_specs"] = {
        "componentInputParameter": "worker_pool_specs"
    }
    job["root"]["inputDefinitions"]["parameters"]["worker_pool_specs"] = {"parameterType": "LIST"}
    wrapped = components.load_component_from_text(yaml.safe_dump(job))
    wrapped.component_spec.name = f"{training.component_spec.name}-as-custom-job"
    return wrapped, encoded
