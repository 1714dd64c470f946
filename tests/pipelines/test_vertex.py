"""Vertex AI Pipelines: the compiled flavour, and submission through google-cloud-aiplatform.

The Vertex API cannot run here: tests/vertex_fake.py follows its REST contract (the
``aiplatform_v1`` PipelineJob fields, accelerator names, parameter types) on loopback; the
pipeline root's bucket is a real fake-gcs-server."""

import json
import pathlib
import subprocess
import sys
import time

import pytest
import yaml

from components.bit import params
from pipelines import submit
from pipelines.submit import SubmitError
from tests.vertex_fake import ACCELERATORS, FakeVertex

REGISTRY = "us-docker.pkg.dev/my-project/bittune"
PROJECT, REGION = "my-project", "us-central1"


@pytest.fixture(scope="module")
def vertex_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp("vertex") / "bit_finetune.yaml"
    return submit.compile_pipeline(str(path), REGISTRY, "1.0", target="vertex")


@pytest.fixture
def vertex(gcs, monkeypatch):
    """The fake Vertex API, and aiplatform's bucket-owner lookup (Cloud Resource Manager over
    gRPC, which cannot be pointed at loopback) answered with fake-gcs-server's project."""
    from google.cloud.aiplatform.utils import resource_manager_utils

    monkeypatch.setattr(resource_manager_utils, "get_project_number", lambda *a, **k: "0")
    with FakeVertex() as fake:
        yield fake


def test_the_tables_follow_the_vertex_api():
    from google.cloud.aiplatform_v1 import types

    names = {a.name for a in types.AcceleratorType} - {"ACCELERATOR_TYPE_UNSPECIFIED"}
    assert names == ACCELERATORS


def test_vertex_yaml_is_one_document_with_limits_and_no_runtime_machine(vertex_yaml):
    documents = list(yaml.safe_load_all(pathlib.Path(vertex_yaml).read_text()))
    assert len(documents) == 1 and "platforms" not in documents[0]
    spec = documents[0]
    declared = spec["root"]["inputDefinitions"]["parameters"]
    assert not set(declared) & set(params.COMPILE_TIME)  # the machine is fixed at compile time
    assert "training_node_selector" not in declared  # Kubernetes only
    executors = spec["deploymentSpec"]["executors"]
    for name, executor in executors.items():  # Vertex sizes machines from limits
        resources = executor["container"].get("resources", {})
        assert "cpuLimit" in resources or "resourceCpuLimit" in resources, name
        assert "cpuRequest" not in resources and "resourceCpuRequest" not in resources, name
    (training,) = [e for e in executors.values() if "accelerator" in e["container"].get(
        "resources", {})]  # fmt: skip
    accelerator = training["container"]["resources"]["accelerator"]
    assert accelerator == {
        "resourceCount": "1",
        "resourceType": "NVIDIA_L4",
        "count": "1",
        "type": "NVIDIA_L4",
    }  # constants: nothing for Vertex to resolve
    images = {e["container"]["image"] for e in executors.values()}
    assert f"{REGISTRY}/bittune-gpu:1.0" in images and f"{REGISTRY}/bittune-tpu:1.0" not in images
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform

    aiplatform.init(project=PROJECT, location=REGION, credentials=AnonymousCredentials())
    job = aiplatform.PipelineJob(  # the SDK accepts it, offline
        display_name="x", template_path=vertex_yaml, pipeline_root="gs://b/root",
        parameter_values={"data_source": "gs://b/data"},
    )  # fmt: skip
    assert job.runtime_config.gcs_output_directory == "gs://b/root"


def test_the_kubeflow_yaml_is_refused_for_vertex(tmp_path):
    kubeflow = submit.compile_pipeline(str(tmp_path / "k.yaml"), REGISTRY)
    with pytest.raises(SubmitError, match="Kubernetes platform spec, which Vertex AI refuses"):
        submit.submit_vertex({"data_source": "gs://b/d"}, PROJECT, REGION, "gs://b/r", kubeflow)


def test_submit_vertex_sends_the_spec_root_and_typed_values(vertex, vertex_yaml, gcs):
    bucket = gcs.new_bucket()
    values = {
        "data_source": f"gs://{bucket}/data",
        "data_fingerprint": "abc",
        "preprocess_workers": 4,
        "mixup": False,
        "blessing_threshold": 0.5,
    }
    run = submit.submit_vertex(
        values, PROJECT, REGION, f"gs://{bucket}/root", vertex_yaml,
        service_account=f"runner@{PROJECT}.iam.gserviceaccount.com", api_endpoint=vertex.url,
    )  # fmt: skip
    assert run["name"].startswith(f"projects/{PROJECT}/locations/{REGION}/pipelineJobs/")
    (create,) = [r for r in vertex.requests if r["method"] == "POST"]
    body = json.loads(create["body"])
    assert body["runtimeConfig"]["gcsOutputDirectory"] == f"gs://{bucket}/root"
    sent = body["runtimeConfig"]["parameterValues"]
    assert sent == {**values, "preprocess_workers": sent["preprocess_workers"]}
    assert sent["preprocess_workers"] == 4 and sent["mixup"] is False
    assert body["pipelineSpec"]["pipelineInfo"]["name"] == "bit-finetune"
    assert body["serviceAccount"].startswith("runner@")


BAD_VERTEX_MACHINES = [  # (options, the one line that refuses them): Google's tables forbid them
    (["--accelerator-type", "nvidia.com/gpu"], "'nvidia.com/gpu' is not a Vertex AI accelerator"),
    (["--accelerator-count", "0"], "accelerator_count must be between 1 and 64, got 0"),
    (["--accelerator-count", "3"], "NVIDIA_L4 comes 1, 2, 4 or 8 to a machine, not 3"),
    (["--accelerator", "tpu", "--training-replicas", "2"], "a TPU host trains alone"),
    (["--accelerator-type", "NVIDIA_TESLA_T4", "--training-machine-type", "g2-standard-8"],
     "g2-standard-8 does not carry 1 x NVIDIA_TESLA_T4"),
    (["--accelerator-type", "NVIDIA_TESLA_T4", "--accelerator-count", "8"],
     "NVIDIA_TESLA_T4 comes 1, 2 or 4 to a machine, not 8"),
    (["--accelerator-type", "NVIDIA_TESLA_V100", "--training-machine-type", "n1-highmem-32"],
     "attaches 1 x NVIDIA_TESLA_V100 to at most 12 vCPUs and 78 GB"),
    (["--accelerator-type", "NVIDIA_TESLA_T4", "--accelerator-count", "2",
      "--training-machine-type", "n1-standard-64"], "at most 48 vCPUs and 312 GB"),
    (["--accelerator-type", "NVIDIA_L4", "--training-machine-type", "n1-standard-8"],
     "n1-standard-8 does not carry 1 x NVIDIA_L4"),
    (["--accelerator-type", "NVIDIA_TESLA_A100", "--training-machine-type", "n1-standard-8"],
     "n1-standard-8 does not carry 1 x NVIDIA_TESLA_A100"),
    (["--accelerator-type", "NVIDIA_H100_80GB", "--accelerator-count", "3"],
     "NVIDIA_H100_80GB comes 1, 2, 4 or 8 to a machine, not 3"),
    (["--accelerator-type", "NVIDIA_H100_MEGA_80GB", "--accelerator-count", "8",
      "--training-machine-type", "a3-highgpu-8g"], "a3-highgpu-8g does not carry 8 x NVIDIA_H"),
    (["--accelerator-type", "NVIDIA_GB200", "--accelerator-count", "4"], "Arm machines"),
    (["--accelerator-type", "NVIDIA_TESLA_K80"], "NVIDIA_TESLA_K80 has reached end of support"),
    (["--accelerator", "tpu", "--accelerator-count", "2"],
     "TPU_V5_LITEPOD comes 1, 4 or 8 to a machine, not 2"),
    (["--accelerator", "tpu", "--accelerator-count", "16"], "is a multi-host slice"),
    (["--accelerator", "tpu", "--accelerator-type", "TPU_V3", "--accelerator-count", "32"],
     "TPU_V3 comes 8 to a machine, not 32 (more is a multi-host slice"),
    (["--accelerator", "tpu", "--accelerator-type", "TPU_V4_POD", "--accelerator-count", "4"],
     "TPU_V4_POD is not among the TPU VMs Vertex AI training lists"),
    (["--accelerator", "tpu", "--accelerator-type", "TPU_V6E", "--accelerator-count", "4"],
     "TPU_V6E trains JAX and PyTorch on Vertex AI, not TensorFlow"),
    (["--accelerator-type", "TPU_V5_LITEPOD"], "TPU_V5_LITEPOD is a TPU: compile with"),
    (["--accelerator", "cpu", "--training-machine-type", "g2-standard-8"],
     "'g2-standard-8' is not a CPU machine type"),
    (["--region", "us-middle9"], "--region us-middle9 is not a Vertex AI region"),
    (["--region", "us"], "--region us is not a single region"),
    (["--region", "global"], "--region global is not a single region"),
    (["--network", "my-vpc"], "--network 'my-vpc' is not a full VPC name"),
    (["--encryption-spec-key-name", "my-key"], "'my-key' is not a Cloud KMS key"),
]  # fmt: skip
GOOD_VERTEX_MACHINES = [  # ... and these they allow
    [],
    ["--accelerator", "cpu"],
    ["--accelerator", "cpu", "--training-machine-type", "n2-standard-32"],
    ["--accelerator-type", "NVIDIA_TESLA_T4", "--accelerator-count", "4"],
    ["--accelerator-type", "NVIDIA_TESLA_T4", "--training-machine-type", "n1-highmem-16"],
    ["--accelerator-type", "NVIDIA_TESLA_V100", "--training-machine-type", "n1-highmem-8"],
    ["--accelerator-type", "NVIDIA_TESLA_P4", "--accelerator-count", "2"],
    ["--accelerator-type", "NVIDIA_TESLA_A100", "--training-machine-type", "a2-highgpu-1g"],
    ["--accelerator-type", "NVIDIA_L4", "--accelerator-count", "2"],
    ["--accelerator-type", "NVIDIA_H100_80GB", "--accelerator-count", "1"],
    ["--accelerator-type", "NVIDIA_H100_80GB", "--accelerator-count", "4"],
    ["--accelerator-type", "NVIDIA_H100_MEGA_80GB", "--accelerator-count", "8"],
    ["--accelerator-type", "NVIDIA_H200_141GB", "--accelerator-count", "8"],
    ["--accelerator-type", "NVIDIA_B200", "--accelerator-count", "8"],
    ["--accelerator", "tpu", "--accelerator-count", "8"],
    ["--accelerator", "tpu", "--accelerator-type", "TPU_V2", "--accelerator-count", "8"],
    ["--training-replicas", "3"],
    ["--region", "europe-west4", "--network", "projects/123/global/networks/vpc",
     "--encryption-spec-key-name", "projects/p/locations/europe-west4/keyRings/r/cryptoKeys/k"],
]  # fmt: skip


def _spec_as_sent(machine):
    """The machine spec as the CustomJob's JSON carries it (camelCase), as the fake gets it."""
    from components.bit.machines import vertex_machine_spec

    names = {"machine_type": "machineType", "accelerator_type": "acceleratorType",
             "accelerator_count": "acceleratorCount", "tpu_topology": "tpuTopology"}  # fmt: skip
    return {names[k]: v for k, v in vertex_machine_spec(machine).items()}


def _vertex_grid():
    """Every accelerator name, count and machine type worth asking about."""
    from components.bit.machines import VERTEX_ACCELERATORS, VERTEX_N1
    from tests.vertex_fake import FIXED_GPU_MACHINES, TPU_VM_CHIPS

    machines = {*FIXED_GPU_MACHINES, *TPU_VM_CHIPS, *VERTEX_N1, "cloud-tpu"}
    for row in VERTEX_ACCELERATORS.values():
        machines |= {m for ms in row.machines.values() for m in ms}
    for kind, row in VERTEX_ACCELERATORS.items():
        for count in (1, 2, 3, 4, 8, 16):
            for machine in sorted(machines):
                yield kind, row.family, count, machine


def test_the_settings_table_and_the_fake_agree_on_every_machine():
    """bittune's table (components/bit/machines.py) accepts a machine exactly when the fake,
    which encodes Google's tables on its own (tests/vertex_fake.py ``check_machine``), takes
    the job it becomes; every accepted machine is one the fake takes."""
    from components.bit.machines import TrainingMachine
    from tests.vertex_fake import ApiError, check_machine

    accepted = refused = 0
    for kind, family, count, machine_type in _vertex_grid():
        machine = TrainingMachine(family, kind, count, 1, machine_type)
        ours = not machine.problems("vertex")
        sent = (
            _spec_as_sent(machine.resolved("vertex"))
            if ours
            else {"machineType": machine_type, "acceleratorType": kind, "acceleratorCount": count}
        )
        try:
            check_machine(sent, 1, 1, "pool")
            theirs = True
        except ApiError:
            theirs = False
        assert ours == theirs, (kind, count, machine_type, machine.problems("vertex"))
        accepted, refused = accepted + ours, refused + (not ours)
    assert accepted > 60 and refused > 1000


def test_the_fake_refuses_a_tpu_v5e_job_without_its_topology(vertex):
    from google.api_core import exceptions

    client = _client(vertex)
    pool = {"machine_spec": {"machine_type": "ct5lp-hightpu-4t"}, "replica_count": 1,
            "container_spec": {"image_uri": "x"}}  # fmt: skip
    job = {"display_name": "j", "job_spec": {"worker_pool_specs": [pool]}}
    parent = f"projects/{PROJECT}/locations/{REGION}"
    with pytest.raises(exceptions.BadRequest, match="ct5lp-hightpu-4t needs a tpu_topology"):
        client.create_custom_job(parent=parent, custom_job=job)
    pool["machine_spec"]["tpu_topology"] = "2x4"
    with pytest.raises(exceptions.BadRequest, match="is not a slice of 1 x ct5lp-hightpu-4t"):
        client.create_custom_job(parent=parent, custom_job=job)
    pool["machine_spec"] = {"machine_type": "n1-standard-32", "accelerator_count": 1,
                            "accelerator_type": "NVIDIA_TESLA_V100"}  # fmt: skip
    with pytest.raises(exceptions.BadRequest, match="too large for 1 x NVIDIA_TESLA_V100"):
        client.create_custom_job(parent=parent, custom_job=job)
    pool["machine_spec"] = {"machine_type": "ct5lp-hightpu-4t", "tpu_topology": "2x2"}
    assert client.create_custom_job(parent=parent, custom_job=job).name


def _submit_args(vertex, bucket, *extra):
    return ["submit", "--vertex", "--project", PROJECT, "--region", REGION, "--pipeline-root",
            f"gs://{bucket}/root", "--api-endpoint", vertex.url, "--image-registry", REGISTRY,
            "--param", f"data_source=gs://{bucket}/d", "--param", "data_fingerprint=abc",
            *extra]  # fmt: skip


@pytest.mark.parametrize(("options", "message"), BAD_VERTEX_MACHINES)
def test_bad_vertex_machines_fail_submit_in_one_line_before_any_upload(
    vertex, gcs, capsys, options, message
):
    from pipelines import cli

    bucket = gcs.new_bucket()
    assert cli.main(_submit_args(vertex, bucket, *options)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert vertex.requests == [] and gcs.names(bucket, "") == []


@pytest.mark.parametrize("options", GOOD_VERTEX_MACHINES)
def test_good_vertex_machines_are_submitted(vertex, gcs, capsys, options):
    from pipelines import cli

    bucket = gcs.new_bucket()
    assert cli.main(_submit_args(vertex, bucket, *options)) == 0, capsys.readouterr().err
    assert len(vertex.jobs) == 1


def test_parameters_are_checked_before_the_api_is_called(vertex, vertex_yaml):
    with pytest.raises(SubmitError, match="data_source '/home/me/photos' is a path on this"):
        submit.submit_vertex({"data_source": "/home/me/photos"}, PROJECT, REGION, "gs://b/r",
                             vertex_yaml, api_endpoint=vertex.url)  # fmt: skip
    with pytest.raises(SubmitError, match="pipeline root must be a gs:// folder"):
        submit.submit_vertex({"data_source": "gs://b/d"}, PROJECT, REGION, "/tmp/root",
                             vertex_yaml, api_endpoint=vertex.url)  # fmt: skip
    assert vertex.requests == []


def test_cli_submit_and_trigger_vertex(vertex, vertex_yaml, gcs, capsys):
    from components.bit import storage
    from pipelines import cli

    bucket = gcs.new_bucket()
    storage.write_bytes(f"gs://{bucket}/data/a/1.jpg", b"1")
    common = ["--vertex", "--project", PROJECT, "--region", REGION, "--pipeline-root",
              f"gs://{bucket}/root", "--api-endpoint", vertex.url,
              "--pipeline", vertex_yaml]  # fmt: skip
    assert cli.main(["submit", *common, "--param", f"data_source=gs://{bucket}/data"]) == 0
    assert "submitted run bit-finetune-" in capsys.readouterr().out
    trigger = ["trigger", "--data", f"gs://{bucket}/data", "--state", f"gs://{bucket}/s.json"]
    assert cli.main([*trigger, *common]) == 0
    assert "data changed (first triggered run: 1 file in 1 folder): submitted run" in (
        capsys.readouterr().out
    )
    assert cli.main([*trigger, *common]) == 0
    assert "data unchanged" in capsys.readouterr().out
    bodies = [json.loads(r["body"]) for r in vertex.requests if r["method"] == "POST"]
    prints = [b["runtimeConfig"]["parameterValues"]["data_fingerprint"] for b in bodies]
    assert len(bodies) == 2 and prints[0] == prints[1] != ""
    assert cli.main(["submit", "--vertex", "--param", "data_source=gs://b/d"]) == 2
    assert "--vertex needs --project, --region, --pipeline-root" in capsys.readouterr().err


def test_vertex_defaults_validate():
    from components.bit.machines import TrainingMachine

    assert TrainingMachine().resolved("vertex").accelerator_type == "NVIDIA_L4"
    assert TrainingMachine(training_replicas=3).problems("vertex") == []
    found = TrainingMachine(training_replicas=3).problems("kubeflow")
    assert any("training_replicas > 1 needs Vertex AI Pipelines" in p for p in found)
    refused = params.pipeline_problems(
        {"data_source": "gs://b/d", "training_replicas": 3}, on_cluster=True, target="vertex"
    )
    assert refused == ["training_replicas is fixed when the pipeline is compiled: give "
                       "--training-replicas to bittune compile (or to bittune submit)"]  # fmt: skip


def test_cli_compile_for_vertex_needs_no_tensorflow(tmp_path):
    code = (
        "import sys; from pipelines.cli import main\n"
        f"assert main(['compile', '--target', 'vertex', '--output', {str(tmp_path / 'v.yaml')!r},"
        " '--image-registry', 'europe-docker.pkg.dev/p/r']) == 0\n"
        "print('HEAVY', [m for m in ('tensorflow',) if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout


def _custom_job_yaml(tmp_path, *options):
    from pipelines import cli

    path = tmp_path / "vertex.yaml"
    args = ["compile", "--target", "vertex", "--output", str(path), "--image-registry", REGISTRY,
            "--image-tag", "1.0", *options]  # fmt: skip
    assert cli.main(args) == 0
    spec = yaml.safe_load(path.read_text())
    from components.vertex_job import LAUNCHER_IMAGE

    executors = spec["deploymentSpec"]["executors"]
    (name,) = [n for n, e in executors.items() if e["container"]["image"] == LAUNCHER_IMAGE]
    return path, spec, name


def _launch_as_vertex_would(spec, executor_name, values, service_account, vertex, launch=None):
    """What Vertex AI and the GCPC launcher do with the CustomJob task: Vertex substitutes the
    task's placeholders in the command line (its executor input, JSON-escaped where the
    payload asks; the run's project, location and service account), and the launcher
    (google_cloud_pipeline_components/container/v1/custom_job/remote_runner.py
    ``create_custom_job``) parses ``--payload`` and creates the job with aiplatform_v1."""
    container = spec["deploymentSpec"]["executors"][executor_name]["container"]
    (task,) = [t for t in spec["root"]["dag"]["tasks"].values()
               if t["componentRef"]["name"] == executor_name.replace("exec-", "comp-")]  # fmt: skip
    component = spec["components"][task["componentRef"]["name"]]
    declared = component["inputDefinitions"]["parameters"]
    inputs = {n: d.get("defaultValue") for n, d in declared.items() if "defaultValue" in d}
    inputs.update({n: v for n, v in values.items() if n in declared})
    scope = {
        "{{$.pipeline_service_account}}": service_account,
        "{{$.pipeline_network}}": "",
        "{{$.pipeline_encryption_key_name}}": "",
        "{{$.pipeline_job_uuid}}": "1234",
        "{{$.pipeline_google_cloud_project_id}}": PROJECT,
        "{{$.pipeline_google_cloud_location}}": REGION,
    }
    inputs = {n: scope.get(v, v) if isinstance(v, str) else v for n, v in inputs.items()}
    executor_input = {"inputs": {"parameterValues": inputs, "artifacts": {}},
                      "outputs": {"outputFile": "/gcs/b/r/executor_output.json"}}  # fmt: skip
    escaped = json.dumps(json.dumps(executor_input))[1:-1]

    def resolve(text):
        text = text.replace("{{$.json_escape[1]}}", escaped)
        for name, value in inputs.items():
            shown = value if isinstance(value, str) else json.dumps(value)
            text = text.replace("{{$.inputs.parameters['" + name + "']}}", shown)
        for placeholder, value in scope.items():
            text = text.replace(placeholder, value)
        return text

    args = [resolve(a) for a in container["args"]]
    if launch is not None:
        return launch(container["command"], args), executor_input
    payload = json.loads(args[args.index("--payload") + 1])
    return _client(vertex).create_custom_job(
        parent=f"projects/{PROJECT}/locations/{REGION}", custom_job=payload
    ), executor_input


def test_three_machines_train_as_a_complete_custom_job(tmp_path, vertex):
    """bittune compile --target vertex --training-replicas 3: the CustomJob is complete in the
    YAML, runs as the run's service account, and reaches Vertex with 1 chief + 2 workers."""
    path, spec, name = _custom_job_yaml(tmp_path, "--training-replicas", "3")
    payload = spec["deploymentSpec"]["executors"][name]["container"]["args"]
    text = payload[payload.index("--payload") + 1]
    assert "{{$.inputs.parameters['service_account']}}" in text
    component = next(c for n, c in spec["components"].items() if "custom-job" in n)
    defaults = component["inputDefinitions"]["parameters"]
    assert defaults["service_account"]["defaultValue"] == "{{$.pipeline_service_account}}"
    assert "worker_pool_specs" not in defaults  # nothing built at run time
    account = f"runner@{PROJECT}.iam.gserviceaccount.com"
    job, executor_input = _launch_as_vertex_would(spec, name, {}, account, vertex)
    (sent,) = vertex.custom_jobs.values()
    assert sent["jobSpec"]["serviceAccount"] == account
    pools = sent["jobSpec"]["workerPoolSpecs"]
    assert [int(p["replicaCount"]) for p in pools] == [1, 2]
    assert all(p["machineSpec"] == {"machineType": "g2-standard-8", "acceleratorType": "NVIDIA_L4",
                                    "acceleratorCount": 1} for p in pools)  # fmt: skip
    chief = pools[0]["containerSpec"]
    assert chief["imageUri"] == f"{REGISTRY}/bittune-gpu:1.0"
    received = json.loads(chief["args"][chief["args"].index("--executor_input") + 1])
    assert received == executor_input  # each replica gets the training task's own input
    assert job.state.name == "JOB_STATE_SUCCEEDED"


def test_a_tpu_host_trains_as_a_custom_job_that_names_its_machine(tmp_path, vertex):
    _, spec, name = _custom_job_yaml(tmp_path, "--accelerator", "tpu", "--accelerator-count", "4")
    _launch_as_vertex_would(spec, name, {}, "", vertex)
    (sent,) = vertex.custom_jobs.values()
    (pool,) = sent["jobSpec"]["workerPoolSpecs"]
    # the SDK's own v5e spec: the machine type and tpu_topology (python-aiplatform
    # tests/unit/aiplatform/constants.py ``_TEST_TPU_V5E_WORKER_POOL_SPEC``)
    assert pool["machineSpec"] == {"machineType": "ct5lp-hightpu-4t", "tpuTopology": "2x2"}
    assert pool["containerSpec"]["imageUri"] == f"{REGISTRY}/bittune-tpu:1.0"


def test_a3_ultra_and_a4_jobs_boot_from_hyperdisk(tmp_path, vertex):
    """aiplatform_v1 ``DiskSpec.boot_disk_type``: A3 Ultra's default is hyperdisk-balanced; the
    fake refuses pd-ssd there and on A4, and the compiled H200 job reaches it with Hyperdisk."""
    from google.api_core import exceptions

    options = ["--accelerator-type", "NVIDIA_H200_141GB", "--accelerator-count", "8"]
    _, spec, name = _custom_job_yaml(tmp_path, *options, "--training-replicas", "2")
    _launch_as_vertex_would(spec, name, {}, "", vertex)
    (sent,) = vertex.custom_jobs.values()
    for pool in sent["jobSpec"]["workerPoolSpecs"]:  # the chief and the worker
        assert pool["machineSpec"]["machineType"] == "a3-ultragpu-8g"
        assert pool["diskSpec"]["bootDiskType"] == "hyperdisk-balanced"
    client, parent = _client(vertex), f"projects/{PROJECT}/locations/{REGION}"
    hyperdisk_only = {"a3-ultragpu-8g": "NVIDIA_H200_141GB", "a4-highgpu-8g": "NVIDIA_B200"}
    for machine, kind in hyperdisk_only.items():
        machine_spec = {"machine_type": machine, "accelerator_type": kind, "accelerator_count": 8}
        pool = {"machine_spec": machine_spec, "replica_count": 1,
                "disk_spec": {"boot_disk_type": "pd-ssd"},
                "container_spec": {"image_uri": "x"}}  # fmt: skip
        job = {"display_name": "j", "job_spec": {"worker_pool_specs": [pool]}}
        with pytest.raises(exceptions.BadRequest, match=f"{machine} does not support boot disk"):
            client.create_custom_job(parent=parent, custom_job=job)
        pool["disk_spec"]["boot_disk_type"] = "hyperdisk-balanced"
        assert client.create_custom_job(parent=parent, custom_job=job).name


def test_every_table_machine_gets_a_boot_disk_the_fake_takes():
    from components.bit.machines import VERTEX_ACCELERATORS, TrainingMachine
    from components.vertex_job import worker_pool_specs
    from tests.vertex_fake import check_disk

    kinds = set()
    for kind, row in VERTEX_ACCELERATORS.items():
        for count, machines in row.machines.items():
            for machine_type in machines:
                machine = TrainingMachine(row.family, kind, count, 1, machine_type)
                (pool,) = worker_pool_specs({}, "x", machine.resolved("vertex"))
                disk = {"bootDiskType": pool["disk_spec"]["boot_disk_type"]}
                check_disk(disk, machine_type, machine_type)  # raises ApiError if refused
                kinds.add(disk["bootDiskType"])
    assert kinds == {"pd-ssd", "hyperdisk-balanced"}


def test_a_machine_type_asked_for_one_gpu_machine_is_honoured(tmp_path, vertex):
    """A plain pipeline task cannot name its machine (Vertex picks one from the limits), so
    one machine with --training-machine-type trains as a CustomJob on that machine type;
    without it, training stays a plain task and names no machine."""
    _, spec, name = _custom_job_yaml(tmp_path, "--accelerator-type", "NVIDIA_TESLA_T4",
                                     "--training-machine-type", "n1-highmem-16")  # fmt: skip
    _launch_as_vertex_would(spec, name, {}, "", vertex)
    (sent,) = vertex.custom_jobs.values()
    (pool,) = sent["jobSpec"]["workerPoolSpecs"]
    assert pool["machineSpec"] == {
        "machineType": "n1-highmem-16",
        "acceleratorType": "NVIDIA_TESLA_T4",
        "acceleratorCount": 1,
    }
    assert "n1-highmem-16" in spec["pipelineInfo"]["description"]
    path = submit.compile_pipeline(str(tmp_path / "plain.yaml"), REGISTRY, "1.0", "vertex")
    plain = yaml.safe_load(pathlib.Path(path).read_text())
    from components.vertex_job import LAUNCHER_IMAGE

    executors = plain["deploymentSpec"]["executors"].values()
    assert all(e["container"]["image"] != LAUNCHER_IMAGE for e in executors)
    assert "g2-standard" not in plain["pipelineInfo"]["description"]  # Vertex picks it


def test_the_fake_refuses_a_custom_job_with_a_placeholder_left(vertex):
    from google.api_core import exceptions

    client = _client(vertex)
    pool = {"machine_spec": {"machine_type": "n1-standard-8"}, "replica_count": 1,
            "container_spec": {"image_uri": "x", "args": ["{{$.json_escape[1]}}"]}}  # fmt: skip
    with pytest.raises(exceptions.BadRequest, match="unresolved placeholder"):
        client.create_custom_job(parent=f"projects/{PROJECT}/locations/{REGION}",
                                 custom_job={"display_name": "j", "job_spec": {
                                     "worker_pool_specs": [pool]}})  # fmt: skip


STANDIN = pathlib.Path(__file__).resolve().parents[1] / "gcpc_standin"


def test_a_retried_custom_job_task_starts_a_new_job_and_a_running_one_is_polled(tmp_path, vertex):
    """The launcher pod of a retried task finds gcp_resources from the failed attempt: the
    GCPC launcher alone would poll the failed job again; bittune's program sets it aside, so
    the retry creates a new job, with the same executor input (the same checkpoints)."""
    import os

    from components.vertex_job import forget_failed_job

    _, spec, name = _custom_job_yaml(tmp_path, "--training-replicas", "2")
    resources = tmp_path / "gcp_resources"
    env = {**os.environ, "PYTHONPATH": str(STANDIN), "BITTUNE_VERTEX_API_ENDPOINT": vertex.url}

    def attempt(command, args, plain=False):
        args = [str(resources) if a.endswith(".output_file}}") else a for a in args]
        args[args.index("--gcp_resources") + 1] = str(resources)
        if plain:  # GCPC's launcher without bittune's program
            command = [
                sys.executable,
                "-m",
                "google_cloud_pipeline_components.container.v1.custom_job.launcher",
            ]
        else:
            command = [sys.executable, *command[1:]]
        return subprocess.run([*command, *args], env=env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip

    vertex.custom_job_state = "JOB_STATE_FAILED"
    first, _ = _launch_as_vertex_would(spec, name, {}, "", vertex, launch=attempt)
    assert first.returncode == 13 and "JOB_STATE_FAILED" in first.stderr  # an internal error
    again, _ = _launch_as_vertex_would(spec, name, {}, "", vertex,
                                       launch=lambda c, a: attempt(c, a, plain=True))  # fmt: skip
    assert again.returncode == 13 and "Continue polling" in again.stdout
    assert len(vertex.custom_jobs) == 1  # GCPC alone: the retry re-polled the failed job

    vertex.custom_job_state = "JOB_STATE_SUCCEEDED"
    retry, _ = _launch_as_vertex_would(spec, name, {}, "", vertex, launch=attempt)
    assert retry.returncode == 0, retry.stderr
    assert "ended JOB_STATE_FAILED: a new job starts" in retry.stdout
    failed, succeeded = vertex.custom_jobs.values()
    assert failed["jobSpec"] == succeeded["jobSpec"]  # same executor input: resumes
    assert list(tmp_path.glob("gcp_resources.job_state_failed-*"))

    vertex.custom_job_state = "JOB_STATE_RUNNING"  # a launcher pod restarted mid-job: poll it
    resources.unlink()
    running = _client(vertex).create_custom_job(
        parent=f"projects/{PROJECT}/locations/{REGION}", custom_job=RUNNING_JOB
    )
    uri = f"https://{REGION}-aiplatform.googleapis.com/v1/{running.name}"
    resources.write_text(json.dumps({"resources": [{"resourceType": "CustomJob",
                                                    "resourceUri": uri}]}))  # fmt: skip
    assert forget_failed_job(str(resources), REGION, vertex.url).endswith("polling it")
    assert resources.exists()
    resources.unlink()
    assert forget_failed_job(str(resources), REGION, vertex.url) == "no earlier job"


def _standin(resources, vertex, timeout=60):
    """GCPC's launcher (the stand-in) creating and polling a small job."""
    import os

    args = ["--type", "CustomJob", "--project", PROJECT, "--location", REGION, "--payload",
            json.dumps(RUNNING_JOB), "--gcp_resources", str(resources)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(STANDIN), "BITTUNE_VERTEX_API_ENDPOINT": vertex.url}
    return subprocess.Popen(
        [sys.executable, "-m", "google_cloud_pipeline_components.container.v1.custom_job.launcher",
         *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_job_states_as_gcpc_2_22_has_them(tmp_path, vertex):
    """GCPC 2.22.0 job_remote_runner.py ``poll_job``: PAUSED fails the launcher (exit 13, or a
    ValueError when the job's error code is a user error), EXPIRED is polled on; bittune's
    retry sets a paused or expired job aside and keeps a running one."""
    from components.vertex_job import forget_failed_job

    vertex.custom_job_state = "JOB_STATE_PAUSED"
    done = _standin(tmp_path / "paused", vertex)
    out, err = done.communicate(timeout=60)
    assert done.returncode == 13 and "error state: JOB_STATE_PAUSED" in err
    vertex.custom_job_error = {"code": 7, "message": "permission denied"}
    done = _standin(tmp_path / "denied", vertex)
    out, err = done.communicate(timeout=60)
    assert done.returncode == 1 and "ValueError: Job failed with value error" in err
    vertex.custom_job_state, vertex.custom_job_error = "JOB_STATE_EXPIRED", None
    polling = _standin(tmp_path / "expired", vertex)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(
                r["method"] == "GET" for r in vertex.requests) < 5:  # fmt: skip
            time.sleep(0.1)
        assert polling.poll() is None  # still polling the expired job
    finally:
        polling.kill()
        polling.communicate()
    for state in ("paused", "expired"):
        assert forget_failed_job(str(tmp_path / state), REGION, vertex.url).endswith(
            "a new job starts"
        ), state
        assert not (tmp_path / state).exists() and list(tmp_path.glob(f"{state}.job_state_*"))


RUNNING_JOB = {"display_name": "j", "job_spec": {"worker_pool_specs": [
    {"machine_spec": {"machine_type": "n1-standard-8"}, "replica_count": 1,
     "container_spec": {"image_uri": "x"}}]}}  # fmt: skip


def _client(vertex):
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform_v1

    return aiplatform_v1.JobServiceClient(
        credentials=AnonymousCredentials(), transport="rest",
        client_options=ClientOptions(api_endpoint=vertex.url),
    )  # fmt: skip


def test_a_vertex_run_joins_the_experiment_asked_for(vertex, vertex_yaml, gcs):
    bucket = gcs.new_bucket()
    run = submit.submit_vertex({"data_source": f"gs://{bucket}/d", "data_fingerprint": "abc"},
                               PROJECT, REGION, f"gs://{bucket}/r", vertex_yaml,
                               experiment="flowers-2026", api_endpoint=vertex.url)  # fmt: skip
    store = f"projects/{PROJECT}/locations/{REGION}/metadataStores/default"
    experiment = vertex.contexts[f"{store}/contexts/flowers-2026"]
    assert experiment["schemaTitle"] == "system.Experiment"
    assert experiment["children"] == [f"{store}/contexts/{run['run_id']}"]
    assert run["url"] == (f"https://console.cloud.google.com/vertex-ai/locations/{REGION}/"
                          f"pipelines/runs/{run['run_id']}?project={PROJECT}")  # fmt: skip
    without = submit.submit_vertex({"data_source": f"gs://{bucket}/d", "data_fingerprint": "x"},
                                   PROJECT, REGION, f"gs://{bucket}/r", vertex_yaml,
                                   api_endpoint=vertex.url)  # fmt: skip
    assert without["run_id"] != run["run_id"] and len(vertex.contexts) == 1


def _closed_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _adc_with_token_endpoint(tmp_path, token_uri):
    """Application Default Credentials (a service-account key) whose token endpoint is
    ``token_uri``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()  # fmt: skip
    path = tmp_path / "adc.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": PROJECT, "private_key_id": "1",
        "private_key": pem, "client_email": f"ci@{PROJECT}.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": token_uri,
    }))  # fmt: skip
    return str(path)


def test_unreachable_token_endpoint_and_api_are_one_line(vertex_yaml, tmp_path, monkeypatch,
                                                          capsys):  # fmt: skip
    from pipelines import cli

    port = _closed_port()
    common = ["submit", "--vertex", "--project", PROJECT, "--region", REGION, "--pipeline-root",
              "gs://b/root", "--pipeline", vertex_yaml, "--param", "data_source=gs://b/d",
              "--param", "data_fingerprint=abc"]  # fmt: skip
    token = f"http://127.0.0.1:{port}/token"
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", _adc_with_token_endpoint(tmp_path, token))
    assert cli.main([*common, "--api-endpoint", f"127.0.0.1:{_closed_port()}"]) == 2
    out, err = capsys.readouterr()
    assert err.strip() == (f"bittune: error: cannot get an access token: 127.0.0.1:{port} could "
                           "not be reached (Connection refused)"), err  # fmt: skip
    assert "Traceback" not in out + err
    api = f"http://127.0.0.1:{port}"
    assert cli.main([*common, "--api-endpoint", api]) == 2
    out, err = capsys.readouterr()
    assert err.strip() == (f"bittune: error: cannot reach the Vertex AI API at {api}: Connection "
                           "refused"), err  # fmt: skip
    assert "Traceback" not in out + err and len(out.splitlines()) == 0


def test_a_run_that_could_not_join_its_experiment_is_kept(vertex, vertex_yaml, gcs, capsys):
    """The job is created before the Experiment is joined (python-aiplatform pipeline_jobs.py
    ``PipelineJob.submit``: ``create_pipeline_job``, then ``_associate_to_experiment``): a
    failure there is a warning about a run that exists, and trigger records it as submitted,
    so the next trigger submits nothing."""
    from components.bit import storage
    from pipelines import cli

    bucket = gcs.new_bucket()
    storage.write_bytes(f"gs://{bucket}/data/a/1.jpg", b"1")
    vertex.refuse_experiment_runs = True
    args = ["trigger", "--data", f"gs://{bucket}/data", "--state", f"gs://{bucket}/s.json",
            "--vertex", "--project", PROJECT, "--region", REGION, "--pipeline-root",
            f"gs://{bucket}/root", "--api-endpoint", vertex.url, "--pipeline", vertex_yaml,
            "--experiment", "flowers"]  # fmt: skip
    assert cli.main(args) == 1
    out, err = capsys.readouterr()
    assert "submitted run bit-finetune-" in out
    assert err.startswith(
        "bittune: warning: the run was created, but adding it to Vertex AI "
        "Experiment flowers failed: Vertex AI refused the request (403)"
    )
    assert len(err.strip().splitlines()) == 1 and "refused the pipeline job:" not in err
    assert cli.main(args) == 0
    assert "data unchanged" in capsys.readouterr().out
    assert len(vertex.jobs) == 1


def test_an_experiment_that_cannot_be_created_is_named_and_nothing_is_submitted(
    vertex, vertex_yaml, gcs, capsys
):
    """``PipelineJob.submit`` gets or creates the Experiment before it creates the job
    (python-aiplatform pipeline_jobs.py ``submit``: ``_validate_experiment``, then
    ``create_pipeline_job``): a refusal there names the Experiment, and no job exists."""
    from pipelines import cli

    bucket = gcs.new_bucket()
    vertex.refuse_experiments = True
    args = ["submit", "--vertex", "--project", PROJECT, "--region", REGION, "--pipeline-root",
            f"gs://{bucket}/root", "--api-endpoint", vertex.url, "--pipeline", vertex_yaml,
            "--param", f"data_source=gs://{bucket}/d", "--param", "data_fingerprint=abc",
            "--experiment", "flowers"]  # fmt: skip
    assert cli.main(args) == 2
    out, err = capsys.readouterr()
    assert err.strip() == (
        "bittune: error: Vertex AI Experiment flowers could not be found or created, so nothing "
        "was submitted: Vertex AI refused the Experiment (403): Permission "
        "'aiplatform.metadataStores.write' denied"
    ), err
    assert vertex.jobs == {} and "submitted run" not in out


def test_network_and_key_reach_the_pipeline_job(vertex, vertex_yaml, gcs):
    bucket = gcs.new_bucket()
    network = "projects/123/global/networks/vpc"
    key = f"projects/{PROJECT}/locations/{REGION}/keyRings/r/cryptoKeys/k"
    submit.submit_vertex({"data_source": f"gs://{bucket}/d", "data_fingerprint": "abc"}, PROJECT,
                         REGION, f"gs://{bucket}/r", vertex_yaml, api_endpoint=vertex.url,
                         network=network, encryption_spec_key_name=key)  # fmt: skip
    (job,) = vertex.jobs.values()
    assert job["network"] == network and job["encryptionSpec"] == {"kmsKeyName": key}


def test_the_tpu_image_puts_libtpu_so_in_lib(tmp_path):
    """Vertex AI's TPU page: a custom container "must save libtpu.so in the '/lib' directory".
    The Dockerfile's final stage links it there for ACCELERATOR=tpu only; its program, run
    against a stand-in libtpu wheel (the library beside the package's __init__.py, as the
    wheel installs it), names that file; the TPU image installs libtpu."""
    root = pathlib.Path(__file__).resolve().parents[2]
    final = (root / "docker" / "Dockerfile").read_text().split("\nFROM ")[-1]
    (step,) = [r for r in final.split("\nRUN ")[1:] if "/lib/libtpu.so" in r]
    assert step.startswith('if [ "${ACCELERATOR}" = tpu ]; then')
    program = step.split("python -c '", 1)[1].split("'", 1)[0]
    package = tmp_path / "libtpu"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "libtpu.so").write_bytes(b"")
    found = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                           env={"PYTHONPATH": str(tmp_path)}, check=True)  # fmt: skip
    assert found.stdout.strip() == str(package / "libtpu.so")
    import runpy

    image = runpy.run_path(str(root / "docker" / "requirements.py"))
    assert any(r.startswith("libtpu==") for r in image["ACCELERATOR_PACKAGES"]["tpu"])
