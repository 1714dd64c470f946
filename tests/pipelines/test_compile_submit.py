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

from components.bit import storage
from pipelines import submit
from pipelines.submit import SubmitError
from tests.kfp_fake import FakeKfpServer

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "pipelines" / "bit_finetune.yaml"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
    submit.compile_pipeline(str(path))
    return path


@pytest.fixture
def kfp_server():
    with FakeKfpServer() as server:
        yield server


def test_committed_yaml_is_fresh(compiled):
    assert COMMITTED.read_text() == compiled.read_text(), (
        "pipelines/bit_finetune.yaml is stale: run `bittune compile`"
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
    assert train["image"] == "bittune/bittune-gpu:0.1.0"
    assert "accelerator" in train["resources"] and train["resources"]["cpuRequest"] == 8
    assert {e["container"]["image"] for n, e in executors.items() if n != "exec-train-model"} == {
        "bittune/bittune-cpu:0.1.0"
    }
    tasks = pipeline["root"]["dag"]["tasks"]
    assert tasks["analyze-dataset"]["cachingOptions"]["enableCache"] is True
    assert tasks["analyze-dataset"]["retryPolicy"]["maxRetryCount"] == 3
    assert tasks["analyze-dataset"]["retryPolicy"]["backoffFactor"] == 2.0
    assert tasks["gather-dataset"]["retryPolicy"]["maxRetryCount"] == 3
    assert tasks["train-model"]["cachingOptions"].get("enableCache") in (None, False)
    condition = tasks["condition-2"]  # push runs only when evaluate-model says blessed
    assert "evaluate-model" in json.dumps(condition["triggerPolicy"])
    train_platform = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][
        "exec-train-model"
    ]
    assert int(train_platform["activeDeadlineSeconds"]) == 48 * 3600
    assert "nodeSelector" in train_platform and "tolerations" in train_platform
    parameters = pipeline["root"]["inputDefinitions"]["parameters"]
    for name in (
        "data_source",
        "model",
        "accelerator_type",
        "accelerator_count",
        "preprocess_workers",
        "blessing_threshold",
        "baseline_model",
        "serving_root",
        "random_crop",
        "random_flip",
        "hyperrule_overrides",
    ):
        assert parameters[name].get("description"), name


def test_images_follow_the_one_setting(tmp_path):
    path = submit.compile_pipeline(str(tmp_path / "p.yaml"), "europe-docker.pkg.dev/p/r", "1.2")
    images = re.findall(r"image: (\S+)", pathlib.Path(path).read_text())
    assert set(images) == {
        "europe-docker.pkg.dev/p/r/bittune-cpu:1.2",
        "europe-docker.pkg.dev/p/r/bittune-gpu:1.2",
    }


def test_submit_uploads_versions_and_runs(kfp_server, compiled, tmp_path):
    params = {"data_source": "gs://b/flowers", "model": "bit-m-r50x1", "accelerator_count": 2}
    first = submit.submit(kfp_server.url, params, "flowers", str(compiled))
    assert first["url"] == f"{kfp_server.url}/#/runs/details/{first['run_id']}"
    run = kfp_server.runs[first["run_id"]]
    assert run["runtime_config"]["parameters"] == params
    assert len(kfp_server.pipelines) == 1 and len(kfp_server.versions) == 1
    again = submit.submit(kfp_server.url, params, "flowers", str(compiled))
    assert again["version_id"] == first["version_id"] and len(kfp_server.versions) == 1
    changed = tmp_path / "changed.yaml"
    submit.compile_pipeline(str(changed), tag="0.2.0")
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
            "accelerator_count=4",
            "mixup=false",
            "blessing_threshold=0.9",
            'training_node_selector={"pool": "gpu"}',
        ],
        spec,
    )
    assert params == {
        "data_source": "gs://b/d",
        "accelerator_count": 4,
        "mixup": False,
        "blessing_threshold": 0.9,
        "training_node_selector": {"pool": "gpu"},
    }
    with pytest.raises(SubmitError, match="unknown parameter 'modle'; valid: "):
        submit.parse_params(["data_source=x", "modle=y"], spec)
    with pytest.raises(SubmitError, match="missing required parameter\\(s\\): data_source"):
        submit.parse_params([], spec)
    with pytest.raises(SubmitError, match="accelerator_count: 'two' is not a valid number_integer"):
        submit.parse_params(["data_source=x", "accelerator_count=two"], spec)


def _data(gcs, bucket, names):
    for name in names:
        storage.write_bytes(f"gs://{bucket}/data/{name}", name.encode())


def test_trigger_runs_only_on_change(gcs, kfp_server, compiled):
    bucket = gcs.new_bucket()
    _data(gcs, bucket, ["a/1.jpg", "b/2.jpg"])
    state = f"gs://{bucket}/trigger/state.json"

    def run():
        return submit.submit(
            kfp_server.url, {"data_source": f"gs://{bucket}/data"}, "t", str(compiled)
        )

    assert submit.trigger(f"gs://{bucket}/data", state, run)["action"] == "submitted"
    assert submit.trigger(f"gs://{bucket}/data", state, run)["action"] == "unchanged"
    _data(gcs, bucket, ["a/3.jpg"])
    assert submit.trigger(f"gs://{bucket}/data", state, run)["action"] == "submitted"
    _data(gcs, bucket, ["a/3.jpg"])  # rewritten: a new generation is a change
    assert submit.trigger(f"gs://{bucket}/data", state, run)["action"] == "submitted"
    assert len(kfp_server.runs) == 3
    saved = json.loads(storage.read_text(state))
    assert saved["status"] == "submitted" and saved["run"]["run_id"] in kfp_server.runs


def test_two_concurrent_triggers_start_one_run(gcs, kfp_server, compiled, monkeypatch):
    bucket = gcs.new_bucket()
    _data(gcs, bucket, ["x/1.jpg"])
    state = f"gs://{bucket}/state.json"
    both_read = threading.Barrier(2)
    read = storage.read_versioned

    def read_then_wait(uri):
        value = read(uri)
        both_read.wait(timeout=30)  # both triggers hold the same generation before claiming
        return value

    monkeypatch.setattr(storage, "read_versioned", read_then_wait)
    results = []

    def trigger():
        results.append(
            submit.trigger(
                f"gs://{bucket}/data",
                state,
                lambda: submit.submit(
                    kfp_server.url, {"data_source": "gs://data/x"}, "t", str(compiled)
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

    def broken():
        raise SubmitError("the KFP API refused the request (503)")

    with pytest.raises(SubmitError):
        submit.trigger(data, state, broken)
    ok = {"run_id": "r1", "url": "u"}
    assert submit.trigger(data, state, lambda: ok)["action"] == "submitted"  # retried
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
        assert submit.trigger(data, state, lambda: ok)["action"] == expected


def test_cli_submit_and_trigger(gcs, kfp_server, tmp_path):
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

    done = cli("submit", "--host", kfp_server.url, "--param", "data_source=gs://b/d")
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
    ]
    assert "submitted run" in cli(*trigger).stdout
    assert "data unchanged" in cli(*trigger).stdout
    bad = cli("submit", "--host", kfp_server.url, "--param", "nope=1")
    assert bad.returncode == 2 and "unknown parameter 'nope'" in bad.stderr
    compiled = cli("compile", "--output", str(tmp_path / "p.yaml"))
    assert compiled.returncode == 0 and "HEAVY []" in compiled.stdout
