"""The compiled pipeline, submission to a KFP API server, and the CI trigger on new data.

The KFP API server cannot run here: tests use tests/kfp_fake.py, which follows the v2beta1 REST
contract that the real kfp.Client speaks. Storage is a real fake-gcs-server on loopback.
"""

import datetime
import json
import pathlib
import re
import subprocess
import sys
import threading

import pytest
import yaml

from components.bit import params, storage
from components.bit.machines import TrainingMachine
from pipelines import submit
from pipelines.submit import SubmitError
from tests.kfp_fake import FakeKfpServer

ROOT = pathlib.Path(__file__).resolve().parents[2]
REGISTRY = "us-docker.pkg.dev/my-project/bittune"
GIVEN = {"data_fingerprint": "given"}  # submissions not about fingerprints skip computing one


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The pipeline compiled for a registry, as a user submits it."""
    path = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
    submit.compile_pipeline(str(path), REGISTRY)
    return path


@pytest.fixture
def kfp_server():
    with FakeKfpServer() as server:
        yield server


@pytest.mark.parametrize("target", ["kubeflow", "vertex"])
def test_committed_yaml_is_fresh(target, tmp_path):
    fresh = submit.compile_pipeline(str(tmp_path / "p.yaml"), target=target)
    committed = pathlib.Path(submit.default_pipeline_file(target))
    assert committed.read_text() == pathlib.Path(fresh).read_text(), (
        f"{committed.name} is stale: run `bittune compile --target {target}`"
    )


def test_no_credentials_in_compiled_yaml(compiled):
    text = compiled.read_text()
    for pattern in (
        r"BEGIN [A-Z ]*PRIVATE KEY",
        r"private_key",
        r"client_secret",
        r"AKIA[0-9A-Z]{16}",
        r"ya29\.",
        r"(?i)password\s*:",
        r"(?i)bearer ",
    ):
        assert not re.search(pattern, text), pattern


def test_cluster_settings(compiled):
    pipeline, platform = yaml.safe_load_all(compiled.read_text())
    executors = pipeline["deploymentSpec"]["executors"]
    train = executors["exec-train-model"]["container"]
    assert train["image"] == f"{REGISTRY}/bittune-gpu:0.1.0"  # the default: one GPU
    resources = train["resources"]  # constants: the driver reads them as they are
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "1"
    assert resources["resourceCpuRequest"].endswith("training_cpu']}}")
    others = {e["container"]["image"] for n, e in executors.items() if "train-model" not in n}
    assert others == {f"{REGISTRY}/bittune-cpu:0.1.0"}
    tasks = pipeline["root"]["dag"]["tasks"]
    assert tasks["analyze-dataset"]["cachingOptions"]["enableCache"] is True
    assert tasks["analyze-dataset"]["retryPolicy"]["maxRetryCount"] == 3
    assert tasks["analyze-dataset"]["retryPolicy"]["backoffFactor"] == 2.0
    assert tasks["gather-dataset"]["retryPolicy"]["maxRetryCount"] == 3
    assert "data_fingerprint" in tasks["analyze-dataset"]["inputs"]["parameters"]
    training_task = tasks["train-model"]  # at the root, taking the collected shards directly
    assert training_task["cachingOptions"].get("enableCache") in (None, False)
    assert training_task["retryPolicy"]["maxRetryCount"] == 2
    window = int(training_task["retryPolicy"]["backoffMaxDuration"].rstrip("s"))
    assert window > 48 * 3600  # retries stay possible for the whole training timeout
    assert (
        tasks["train-model"]["inputs"]["artifacts"]["train_shards"]["taskOutputArtifact"][
            "producerTask"
        ]
        == "for-loop-1"
    )
    assert not [c for c in pipeline["components"] if "condition-branches" in c]
    names = [t["taskInfo"]["name"] for t in tasks.values()]
    assert len(names) == len(set(names))  # every task has a display name of its own
    condition = tasks["condition-2"]  # push runs only when evaluate-model says blessed
    assert "evaluate-model" in json.dumps(condition["triggerPolicy"])
    platforms = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert int(platforms["exec-train-model"]["activeDeadlineSeconds"]) == 48 * 3600
    assert "nodeSelector" in platforms["exec-train-model"]
    assert "tolerations" in platforms["exec-train-model"]
    parameters = pipeline["root"]["inputDefinitions"]["parameters"]
    from components.bit import params

    assert set(parameters) == set(params.names("kubeflow"))
    for name, declared in parameters.items():  # the table's help is the UI's description
        assert declared["description"] == params.PARAMETERS[name].help, name


def test_every_parameter_binding_types_match(compiled):
    from tests.backend.runner import binding_problems

    assert binding_problems(str(compiled)) == []
    assert (
        binding_problems(submit.compile_pipeline(str(compiled) + ".v", REGISTRY, target="vertex"))
        == []
    )


def test_training_defaults_fit_a_common_single_gpu_node(compiled):
    """n1-standard-8 (T4) and g2-standard-8 (L4): 8 vCPUs, 30-32 GB, of which the node keeps
    some for itself (GKE reserves ~0.1 CPU and ~2.6-3 GB, plus its daemons)."""
    from components.bit import params

    cpus = params.cpu_count(params.PARAMETERS["training_cpu"].default)
    memory = params.PARAMETERS["training_memory"].default
    assert cpus <= 7 and memory.endswith("G") and int(memory[:-1]) * 1e9 <= 26 * 2**30


@pytest.mark.parametrize("accelerator", ["gpu", "tpu", "cpu"])
def test_images_follow_the_one_setting(tmp_path, accelerator):
    machine = TrainingMachine(accelerator)
    path = submit.compile_pipeline(str(tmp_path / "p.yaml"), "europe-docker.pkg.dev/p/r", "1.2",
                                   machine=machine)  # fmt: skip
    images = re.findall(r"image: (\S+)", pathlib.Path(path).read_text())
    training = {"cpu": "gpu"}.get(accelerator, accelerator)  # CPU training: the GPU image
    assert set(images) == {f"europe-docker.pkg.dev/p/r/bittune-{k}:1.2" for k in ("cpu", training)}


@pytest.mark.parametrize(
    ("machine", "limits"),
    [
        (TrainingMachine("gpu", accelerator_count=2), {"nvidia.com/gpu": "2"}),
        (TrainingMachine("tpu", accelerator_count=4), {"google.com/tpu": "4"}),
        (TrainingMachine("gpu", "amd.com/gpu"), {"amd.com/gpu": "1"}),
        (TrainingMachine("cpu"), {}),
    ],
)
def test_the_machine_is_fixed_at_compile_time(tmp_path, machine, limits):
    path = submit.compile_pipeline(str(tmp_path / "p.yaml"), REGISTRY, machine=machine)
    pipeline, _ = yaml.safe_load_all(pathlib.Path(path).read_text())
    container = pipeline["deploymentSpec"]["executors"]["exec-train-model"]["container"]
    accelerator = container["resources"].get("accelerator")
    found = {accelerator["resourceType"]: accelerator["resourceCount"]} if accelerator else {}
    assert found == limits
    task = pipeline["root"]["dag"]["tasks"]["train-model"]
    asked = task["inputs"]["parameters"]["accelerator"]["runtimeValue"]["constant"]
    assert asked == machine.accelerator  # training insists on what the pod was given
    declared = pipeline["root"]["inputDefinitions"]["parameters"]
    assert not set(declared) & set(params.COMPILE_TIME)


@pytest.mark.parametrize(
    ("machine", "message"),
    [
        (TrainingMachine("gpu", "NVIDIA_L4"), "'NVIDIA_L4' is not a Kubernetes resource name"),
        (TrainingMachine("gpu", training_replicas=2), "training_replicas > 1 needs Vertex AI"),
        (TrainingMachine("gpu", accelerator_count=0), "accelerator_count must be between 1"),
        (TrainingMachine(""), "accelerator must be gpu, tpu or cpu on a cluster"),
    ],
)
def test_a_bad_machine_is_refused_in_one_line(tmp_path, machine, message):
    with pytest.raises(SubmitError, match=message) as caught:
        submit.compile_pipeline(str(tmp_path / "p.yaml"), REGISTRY, machine=machine)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "p.yaml").exists()


def test_images_without_a_registry_are_refused(kfp_server, tmp_path):
    shipped = submit.default_pipeline_file()  # compiled for local images: bittune/...
    with pytest.raises(
        SubmitError, match="without a registry host .*bittune compile --image-registry"
    ):
        submit.submit(kfp_server.url, {"data_source": "gs://b/d", **GIVEN}, pipeline_file=shipped)
    assert kfp_server.requests == []


@pytest.mark.parametrize(("tag", "accepted"), [("2.13.0", False), ("2.14.0", True),
                                               ("2.17.1", True), ("", True),
                                               ("unknown", True)])  # fmt: skip
def test_submit_checks_the_server_release(compiled, tag, accepted, capsys):
    """The oldest release the backend runner passes is the minimum (tests/pipelines/
    test_cluster.py runs every one from it); an older server is refused before any upload,
    and one that does not say its release gets a one-line note."""
    params = {"data_source": "gs://b/flowers", **GIVEN}
    with FakeKfpServer(tag_name=tag) as server:
        if accepted:
            assert submit.submit(server.url, params, "flowers", str(compiled))["run_id"]
            note = capsys.readouterr().err
            assert ("does not say its release" in note) == (tag in ("", "unknown"))
            assert len(note.splitlines()) == (1 if tag in ("", "unknown") else 0)
            return
        with pytest.raises(SubmitError) as refused:
            submit.submit(server.url, params, "flowers", str(compiled))
        assert str(refused.value) == (
            f"the KFP server at {server.url} runs Kubeflow Pipelines 2.13.0; bittune's pipeline "
            "needs 2.14 or newer (README: Supported backends)"
        )
        assert server.pipelines == {} and server.runs == {}


def test_an_unreachable_kfp_host_is_one_line(compiled, capsys):
    """kfp_server_api calls urllib3, whose connection errors are not ApiExceptions: submit
    and trigger say what could not be reached in one line, exit 2."""
    import socket

    from pipelines import cli

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host = f"http://127.0.0.1:{s.getsockname()[1]}"  # closed once the block ends
    args = ["submit", "--host", host, "--pipeline", str(compiled),
            "--param", "data_source=gs://b/d", "--param", "data_fingerprint=x"]  # fmt: skip
    assert cli.main(args) == 2
    out, err = capsys.readouterr()
    assert err == f"bittune: error: cannot reach the KFP API at {host}: Connection refused\n"
    assert out == ""


def test_submit_uploads_versions_and_runs(kfp_server, compiled, tmp_path):
    params = {"data_source": "gs://b/flowers", "model": "bit-m-r50x1", "training_cpu": "4",
              **GIVEN}  # fmt: skip
    first = submit.submit(kfp_server.url, params, "flowers", str(compiled))
    assert first["url"] == f"{kfp_server.url}/#/runs/details/{first['run_id']}"
    run = kfp_server.runs[first["run_id"]]
    assert run["runtime_config"]["parameters"] == params
    assert len(kfp_server.pipelines) == 1 and len(kfp_server.versions) == 1
    again = submit.submit(kfp_server.url, params, "flowers", str(compiled))
    assert again["version_id"] == first["version_id"] and len(kfp_server.versions) == 1
    changed = tmp_path / "changed.yaml"
    submit.compile_pipeline(str(changed), REGISTRY, tag="0.2.0")
    third = submit.submit(kfp_server.url, params, "flowers", str(changed))
    assert (
        third["pipeline_id"] == first["pipeline_id"] and third["version_id"] != first["version_id"]
    )
    assert len(kfp_server.versions) == 2
    assert len(kfp_server.experiments) == 1 and len(kfp_server.runs) == 3


def test_params_are_typed_and_checked(compiled):
    spec = next(yaml.safe_load_all(compiled.read_text()))
    params = submit.parse_params(
        [
            "data_source=gs://b/d",
            "checkpoint_every=4",
            "mixup=false",
            "blessing_threshold=0.9",
            'training_node_selector={"pool": "gpu"}',
        ],
        spec,
    )
    assert params == {
        "data_source": "gs://b/d",
        "checkpoint_every": 4,
        "mixup": False,
        "blessing_threshold": 0.9,
        "training_node_selector": {"pool": "gpu"},
    }
    with pytest.raises(SubmitError, match="unknown parameter 'modle'; valid: "):
        submit.parse_params(["data_source=x", "modle=y"], spec)
    with pytest.raises(SubmitError, match="missing required parameter\\(s\\): data_source"):
        submit.parse_params([], spec)
    with pytest.raises(SubmitError, match="checkpoint_every: 'two' is not a valid number_integer"):
        submit.parse_params(["data_source=x", "checkpoint_every=two"], spec)
    with pytest.raises(SubmitError, match="accelerator_count is fixed when the pipeline is compi"):
        submit.parse_params(["data_source=x", "accelerator_count=2"], spec)


def _data(gcs, bucket, names):
    for name in names:
        storage.write_bytes(f"gs://{bucket}/data/{name}", name.encode())


def test_trigger_runs_only_on_change(gcs, kfp_server, compiled):
    bucket = gcs.new_bucket()
    _data(gcs, bucket, ["a/1.jpg", "b/2.jpg"])
    state = f"gs://{bucket}/trigger/state.json"

    def run(fingerprint):
        values = {"data_source": f"gs://{bucket}/data", "data_fingerprint": fingerprint}
        return submit.submit(kfp_server.url, values, "t", str(compiled))

    first = submit.trigger(f"gs://{bucket}/data", state, run)
    assert first["change"] == "first triggered run: 2 files in 2 folders"
    assert submit.trigger(f"gs://{bucket}/data", state, run)["action"] == "unchanged"
    _data(gcs, bucket, ["a/3.jpg", "c/4.jpg"])
    storage.gcs_client().bucket(bucket).blob("data/b/2.jpg").delete()
    changed = submit.trigger(f"gs://{bucket}/data", state, run)
    assert changed["action"] == "submitted"
    assert changed["change"] == "new c (1 file); removed b (1 file); a 1 -> 2 files"
    _data(gcs, bucket, ["a/3.jpg"])  # rewritten: a new generation is a change
    again = submit.trigger(f"gs://{bucket}/data", state, run)
    assert (again["action"], again["change"]) == ("submitted", "a files replaced")
    assert len(kfp_server.runs) == 3
    saved = json.loads(storage.read_text(state))
    assert saved["status"] == "submitted" and saved["run"]["run_id"] in kfp_server.runs
    prints = [
        r["runtime_config"]["parameters"]["data_fingerprint"] for r in kfp_server.runs.values()
    ]
    assert len(set(prints)) == 3  # each change reaches the run, so analysis is not a cache hit


def test_submit_fingerprints_the_data(gcs, kfp_server, compiled):
    bucket = gcs.new_bucket()
    _data(gcs, bucket, ["a/1.jpg"])
    values = {"data_source": f"gs://{bucket}/data"}
    first = submit.submit(kfp_server.url, values, "t", str(compiled))
    again = submit.submit(kfp_server.url, values, "t", str(compiled))
    _data(gcs, bucket, ["a/2.jpg"])
    changed = submit.submit(kfp_server.url, values, "t", str(compiled))
    prints = [
        kfp_server.runs[r["run_id"]]["runtime_config"]["parameters"]["data_fingerprint"]
        for r in (first, again, changed)
    ]
    assert prints[0] == prints[1] != prints[2]
    assert prints[2] == submit.fingerprint(f"gs://{bucket}/data")


def test_two_concurrent_triggers_start_one_run(gcs, kfp_server, compiled, monkeypatch):
    bucket = gcs.new_bucket()
    _data(gcs, bucket, ["x/1.jpg"])
    state = f"gs://{bucket}/state.json"
    both_read = threading.Barrier(2)
    read = storage.read_versioned
    first = threading.local()

    def read_then_wait(uri):
        value = read(uri)
        if not getattr(first, "done", False):  # both hold the same generation before claiming
            first.done = True
            both_read.wait(timeout=30)
        return value

    monkeypatch.setattr(storage, "read_versioned", read_then_wait)
    results = []

    def trigger():
        results.append(
            submit.trigger(
                f"gs://{bucket}/data",
                state,
                lambda fingerprint: submit.submit(
                    kfp_server.url,
                    {"data_source": "gs://data/x", "data_fingerprint": fingerprint},
                    "t",
                    str(compiled),
                ),
            )["action"]
        )

    threads = [threading.Thread(target=trigger) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == ["busy", "submitted"]
    assert len(kfp_server.runs) == 1


def test_failed_submission_is_retried_and_stale_claims_taken_over(gcs):
    bucket = gcs.new_bucket()
    _data(gcs, bucket, ["x/1.jpg"])
    data, state = f"gs://{bucket}/data", f"gs://{bucket}/state.json"

    def broken(fingerprint):
        raise SubmitError("the KFP API refused the request (503)")

    with pytest.raises(SubmitError):
        submit.trigger(data, state, broken)
    ok = {"run_id": "r1", "url": "u"}
    assert submit.trigger(data, state, lambda _: ok)["action"] == "submitted"  # retried
    _data(gcs, bucket, ["x/2.jpg"])
    fingerprint = submit.fingerprint(data)
    now = datetime.datetime.now(datetime.UTC)
    for age, expected in (
        (datetime.timedelta(minutes=1), "busy"),
        (datetime.timedelta(hours=1), "submitted"),
    ):
        claim = {
            "fingerprint": fingerprint,
            "status": "submitting",
            "claimed_at": (now - age).isoformat(),
        }
        storage.write_bytes(state, json.dumps(claim).encode())
        assert submit.trigger(data, state, lambda _: ok)["action"] == expected


def test_cli_submit_and_trigger(gcs, kfp_server, compiled, tmp_path):
    bucket = gcs.new_bucket()
    _data(gcs, bucket, ["a/1.jpg"])
    env_code = (
        "import os, sys; os.environ['STORAGE_EMULATOR_HOST'] = sys.argv[1]\n"
        "from pipelines.cli import main; rc = main(sys.argv[2:])\n"
        "heavy = [m for m in ('tensorflow',) if m in sys.modules]\n"
        "print('HEAVY', heavy); sys.exit(rc)"
    )

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-c", env_code, gcs.server.url, *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    pipeline = ["--pipeline", str(compiled)]
    done = cli("submit", "--host", kfp_server.url, *pipeline, "--param",
               f"data_source=gs://{bucket}/data")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{kfp_server.url}/#/runs/details/" in done.stdout and "HEAVY []" in done.stdout
    trigger = [
        "trigger",
        "--data",
        f"gs://{bucket}/data",
        "--state",
        f"gs://{bucket}/s.json",
        "--host",
        kfp_server.url,
        *pipeline,
    ]
    assert (
        "data changed (first triggered run: 1 file in 1 folder): submitted run"
        in cli(*trigger).stdout
    )
    assert "data unchanged" in cli(*trigger).stdout
    bad = cli("submit", "--host", kfp_server.url, *pipeline, "--param", "nope=1")
    assert bad.returncode == 2 and "unknown parameter 'nope'" in bad.stderr
    compiled = cli("compile", "--output", str(tmp_path / "p.yaml"))
    assert compiled.returncode == 0 and "HEAVY []" in compiled.stdout
