"""Vertex AI Pipelines: the compiled flavour, and submission through google-cloud-aiplatform.

The Vertex API cannot run here: tests/vertex_fake.py follows its REST contract (the
``aiplatform_v1`` PipelineJob fields, accelerator names, parameter types) on loopback; the
pipeline root's bucket is a real fake-gcs-server."""

import json
import pathlib
import subprocess
import sys

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


def test_vertex_yaml_is_one_document_with_limits_and_a_tpu_branch(vertex_yaml):
    documents = list(yaml.safe_load_all(pathlib.Path(vertex_yaml).read_text()))
    assert len(documents) == 1 and "platforms" not in documents[0]
    spec = documents[0]
    declared = spec["root"]["inputDefinitions"]["parameters"]
    assert declared["accelerator_type"]["defaultValue"] == "NVIDIA_L4"
    assert "training_node_selector" not in declared  # Kubernetes only
    executors = spec["deploymentSpec"]["executors"]
    for name, executor in executors.items():  # Vertex sizes machines from limits
        resources = executor["container"].get("resources", {})
        assert "cpuLimit" in resources or "resourceCpuLimit" in resources, name
        assert "cpuRequest" not in resources and "resourceCpuRequest" not in resources, name
    images = {e["container"]["image"] for e in executors.values()}
    assert f"{REGISTRY}/bittune-tpu:1.0" in images and f"{REGISTRY}/bittune-gpu:1.0" in images
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
        "accelerator_type": "TPU_V5_LITEPOD",
        "accelerator_count": 4,
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
    assert sent == {**values, "accelerator_count": sent["accelerator_count"]}
    assert sent["accelerator_count"] == 4 and sent["mixup"] is False
    assert body["pipelineSpec"]["pipelineInfo"]["name"] == "bit-finetune"
    assert body["serviceAccount"].startswith("runner@")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"accelerator_type": "nvidia.com/gpu"}, "is not a Vertex AI AcceleratorType"),
        ({"accelerator_count": 0}, "accelerator count must be >= 1"),
    ],
)
def test_the_vertex_api_refuses_what_vertex_refuses(vertex, vertex_yaml, gcs, values, message):
    bucket = gcs.new_bucket()
    values = {"data_source": f"gs://{bucket}/d", "data_fingerprint": "abc", **values}
    with pytest.raises(SubmitError, match=message):
        submit.submit_vertex(values, PROJECT, REGION, f"gs://{bucket}/r", vertex_yaml,
                             api_endpoint=vertex.url)  # fmt: skip


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
    assert "data changed: submitted run" in capsys.readouterr().out
    assert cli.main([*trigger, *common]) == 0
    assert "data unchanged" in capsys.readouterr().out
    bodies = [json.loads(r["body"]) for r in vertex.requests if r["method"] == "POST"]
    prints = [b["runtimeConfig"]["parameterValues"]["data_fingerprint"] for b in bodies]
    assert len(bodies) == 2 and prints[0] == prints[1] != ""
    assert cli.main(["submit", "--vertex", "--param", "data_source=gs://b/d"]) == 2
    assert "--vertex needs --project, --region, --pipeline-root" in capsys.readouterr().err


def test_vertex_defaults_validate():
    values = params.defaults("vertex")
    assert values["accelerator_type"] == "NVIDIA_L4" and values["accelerator_count"] >= 1
    found = params.pipeline_problems(
        {"data_source": "gs://b/d", "training_replicas": 3}, on_cluster=True, target="vertex"
    )
    assert found == []
    found = params.pipeline_problems(
        {"data_source": "gs://b/d", "training_replicas": 3}, on_cluster=True, target="kubeflow"
    )
    assert any("training_replicas > 1 needs Vertex AI Pipelines" in p for p in found)


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


def test_several_machines_train_as_a_custom_job(vertex_yaml):
    from components.train import train_model
    from components.vertex_job import LAUNCHER_IMAGE, custom_job, worker_pools

    spec = yaml.safe_load(pathlib.Path(vertex_yaml).read_text())
    executors = spec["deploymentSpec"]["executors"]
    (job,) = [e for e in executors.values() if e["container"]["image"] == LAUNCHER_IMAGE]
    payload = json.loads(
        job["container"]["args"][3].replace("{{$.inputs.parameters['worker_pool_specs']}}", "[]")
    )
    assert payload["job_spec"]["scheduling"]["restart_job_on_worker_restart"] is True
    _, command = custom_job(train_model)
    pools = worker_pools.python_func(
        command=command, image=f"{REGISTRY}/bittune-gpu:1.0", training_replicas=3,
        training_machine_type="g2-standard-8", accelerator_type="NVIDIA_L4", accelerator_count=1,
    )  # fmt: skip
    assert [p["replica_count"] for p in pools] == [1, 2]  # one chief, two workers
    machine = pools[0]["machine_spec"]
    assert machine == {"machine_type": "g2-standard-8", "accelerator_type": "NVIDIA_L4",
                       "accelerator_count": 1}  # fmt: skip
    container = pools[0]["container_spec"]
    assert container["image_uri"] == f"{REGISTRY}/bittune-gpu:1.0"
    assert "{{$.json_escape[1]}}" in container["args"]  # the training component's own input
    assert "train_model" in container["args"]
    with pytest.raises(Exception, match="a TPU slice trains on one machine"):
        worker_pools.python_func(
            command=command, image="x", training_replicas=2, training_machine_type="ct5lp-4t",
            accelerator_type="TPU_V5_LITEPOD", accelerator_count=4,
        )  # fmt: skip


def test_submit_vertex_with_several_machines(vertex, vertex_yaml, gcs):
    bucket = gcs.new_bucket()
    values = {"data_source": f"gs://{bucket}/d", "data_fingerprint": "abc",
              "training_replicas": 3, "training_machine_type": "a2-highgpu-1g",
              "accelerator_type": "NVIDIA_TESLA_A100"}  # fmt: skip
    run = submit.submit_vertex(values, PROJECT, REGION, f"gs://{bucket}/r", vertex_yaml,
                               api_endpoint=vertex.url)  # fmt: skip
    assert run["name"] in vertex.jobs
