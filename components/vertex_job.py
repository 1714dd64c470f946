"""Training on several machines on Vertex AI: the training component run as a CustomJob.

Vertex AI runs a multi-machine job as a CustomJob with worker pools: pool 0 is the chief (one
replica), pool 1 the other workers; each replica gets ``CLUSTER_SPEC`` (and ``TF_CONFIG``) and
bittune's training turns it into MultiWorkerMirroredStrategy. :func:`custom_job` wraps the
training component the way Google Cloud Pipeline Components' ``create_custom_training_job_
from_component`` does (same inputs and outputs, plus ``worker_pool_specs`` and
``gcp_resources``): its container is the GCPC launcher image, which creates the CustomJob from
a payload, waits for it and reports it; the pools run the training component's own command and
arguments, its executor input JSON-escaped into the payload (``{{$.json_escape[1]}}``).

The worker pools are fixed when the pipeline is compiled (machine type, accelerators, replica
count: :class:`components.bit.machines.TrainingMachine`), so the payload is complete in the
compiled YAML and only Vertex's own placeholders remain in it -- in the compile-time default
of an input, where GCPC puts them too. The job runs as the pipeline's service account and on
its network with its encryption key (``service_account``, ``network`` and
``encryption_spec_key_name`` inputs, defaulting to the run's, as GCPC's ``custom_job``
component takes them).
"""

# (no `from __future__ import annotations`: KFP reads the component annotations as types)

import copy
import inspect
import json

import yaml
from google.protobuf import json_format
from kfp import components

from components.bit.machines import TrainingMachine, boot_disk_type, vertex_machine_spec

LAUNCHER_IMAGE = "gcr.io/ml-pipeline/google-cloud-pipeline-components:2.22.0"
# The job's identity: the run's service account, network and encryption key unless a task sets
# its own (GCPC 2.22.0's placeholders, google_cloud_pipeline_components/_placeholders.py).
JOB_IDENTITY = {
    "service_account": "{{$.pipeline_service_account}}",
    "network": "{{$.pipeline_network}}",
    "encryption_spec_key_name": "{{$.pipeline_encryption_key_name}}",
}
LAUNCHER_MODULE = "google_cloud_pipeline_components.container.v1.custom_job.launcher"


def forget_failed_job(gcp_resources: str, location: str, api_endpoint: str = "") -> str:
    """Before the GCPC launcher starts: if ``gcp_resources`` (kept from an earlier attempt of
    this task) names a CustomJob the launcher would not see succeed, set the file aside, so
    that the launcher creates a new job (which resumes from the checkpoints) instead of
    taking up the old one again (GCPC 2.22.0 container/v1/gcp_launcher/job_remote_runner.py
    ``check_if_job_exists``).

    Which states, as GCPC 2.22.0 has them (job_remote_runner.py ``JobRemoteRunner.poll_job``
    with ``_JOB_ERROR_STATES``): FAILED, CANCELLED and PAUSED fail the launcher at once, so a
    retry would fail again on the same job; EXPIRED is in no list, so the launcher polls it,
    and since an expired job never changes state it would poll until the task is stopped.
    Those four are set aside. Any other state (queued, pending, running, cancelling,
    updating) is kept: the launcher polls it, as after its own pod was restarted. Returns what
    it did. Runs in the GCPC image: standard library and google-cloud-aiplatform only."""
    import json
    import os
    import time

    if not os.path.exists(gcp_resources) or os.path.getsize(gcp_resources) == 0:
        return "no earlier job"
    with open(gcp_resources, encoding="utf-8") as f:
        uri = json.load(f)["resources"][0]["resourceUri"]
    name = uri.split("/v1/", 1)[1]
    from google.api_core.client_options import ClientOptions
    from google.cloud import aiplatform_v1

    endpoint = api_endpoint or f"{location}-aiplatform.googleapis.com"
    options = {"client_options": ClientOptions(api_endpoint=endpoint)}
    if endpoint.startswith("http://"):  # a local stand-in of the API
        from google.auth.credentials import AnonymousCredentials

        options.update(credentials=AnonymousCredentials(), transport="rest")
    state = aiplatform_v1.JobServiceClient(**options).get_custom_job(name=name).state.name
    ended = ("JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_PAUSED", "JOB_STATE_EXPIRED")
    if state in ended:
        os.replace(gcp_resources, f"{gcp_resources}.{state.lower()}-{int(time.time())}")
        return f"{name} ended {state}: a new job starts"
    return f"{name} is {state}: polling it"


# The launcher pod's program: forget a failed job of an earlier attempt, then run GCPC's
# launcher with the same arguments.
RETRY_AWARE_LAUNCHER = (
    inspect.getsource(forget_failed_job)
    + """
import os, sys
args = sys.argv[1:]
print(forget_failed_job(args[args.index("--gcp_resources") + 1],
                        args[args.index("--location") + 1],
                        os.environ.get("BITTUNE_VERTEX_API_ENDPOINT", "")), flush=True)
os.execvp(sys.executable, [sys.executable, "-u", "-m", LAUNCHER_MODULE, *args])
"""
)


def _encoded(value: list[str]) -> list[str]:
    """The executor input placeholder JSON-escaped (it goes inside the payload's JSON)."""
    return [v.replace("{{$}}", "{{$.json_escape[1]}}") for v in value]


def worker_pool_specs(command: dict, image: str, machine: TrainingMachine) -> list[dict]:
    """The CustomJob's pools: pool 0 the chief (one replica), pool 1 the other replicas, all
    on the same machine (CustomJobSpec.worker_pool_specs, v1; a TPU VM's with its
    ``tpu_topology``: :func:`components.bit.machines.vertex_machine_spec`); a 100 GB boot
    disk of the type the machine takes (:func:`components.bit.machines.boot_disk_type`)."""
    pool = {
        "machine_spec": vertex_machine_spec(machine),
        "replica_count": 1,
        "disk_spec": {
            "boot_disk_type": boot_disk_type(machine.training_machine_type),
            "boot_disk_size_gb": 100,
        },
        "container_spec": {"image_uri": image, **command},
    }
    if machine.training_replicas == 1:
        return [pool]
    return [pool, {**pool, "replica_count": machine.training_replicas - 1}]


def training_job(training, machine: TrainingMachine, image: str):
    """``training`` (a lightweight component) as a Vertex AI CustomJob component on
    ``machine``: the same inputs and outputs plus the job identity (:data:`JOB_IDENTITY`) and
    ``gcp_resources``; the payload, worker pools included, fixed at compile time."""
    spec = json_format.MessageToDict(training.pipeline_spec)
    (name,) = spec["deploymentSpec"]["executors"]
    container = spec["deploymentSpec"]["executors"][name]["container"]
    command = {"command": _encoded(container["command"]), "args": _encoded(container["args"])}
    job = copy.deepcopy(spec)
    (component_name,) = job["components"]
    definition = job["components"][component_name]
    inputs = definition["inputDefinitions"]["parameters"]
    for key, default in JOB_IDENTITY.items():
        inputs[key] = {"parameterType": "STRING", "defaultValue": default, "isOptional": True}
    outputs = definition.setdefault("outputDefinitions", {}).setdefault("parameters", {})
    outputs["gcp_resources"] = {"parameterType": "STRING"}
    payload = {
        "display_name": "bittune-training-{{$.pipeline_job_uuid}}",
        "job_spec": {
            "worker_pool_specs": worker_pool_specs(command, image, machine),
            "scheduling": {"timeout": "172800s", "restart_job_on_worker_restart": True},
            "service_account": "{{$.inputs.parameters['service_account']}}",
            "network": "{{$.inputs.parameters['network']}}",
        },
        "labels": {"app": "bittune"},
        "encryption_spec": {"kms_key_name": "{{$.inputs.parameters['encryption_spec_key_name']}}"},
    }
    job["deploymentSpec"]["executors"][name]["container"] = {
        "image": LAUNCHER_IMAGE,
        "command": ["python3", "-c", f"LAUNCHER_MODULE = {LAUNCHER_MODULE!r}\n"
                    + RETRY_AWARE_LAUNCHER],
        "args": [
            "--type", "CustomJob", "--payload", json.dumps(payload, sort_keys=True),
            "--project", "{{$.pipeline_google_cloud_project_id}}",
            "--location", "{{$.pipeline_google_cloud_location}}",
            "--gcp_resources", "{{$.outputs.parameters['gcp_resources'].output_file}}",
        ],
    }  # fmt: skip
    (task,) = job["root"]["dag"]["tasks"].values()
    root_inputs = job["root"]["inputDefinitions"]["parameters"]
    for key, default in JOB_IDENTITY.items():
        task["inputs"]["parameters"][key] = {"componentInputParameter": key}
        root_inputs[key] = {"parameterType": "STRING", "defaultValue": default, "isOptional": True}
    wrapped = components.load_component_from_text(yaml.safe_dump(job))
    wrapped.component_spec.name = f"{training.component_spec.name}-as-custom-job"
    return wrapped
