"""The compiled pipeline run the way a Kubeflow Pipelines cluster runs it (tests/backend: the
backend's driver and launcher rules, typed parameters, artifacts through object storage,
retries, caching), on KFP's default S3-compatible store and on Cloud Storage."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from components.bit import storage
from components.bit.datasets import DIGITS_DEMO_OVERRIDES, materialize_digits
from components.bit.machines import TrainingMachine
from pipelines import submit
from tests.backend.runner import BACKEND_VERSIONS, BackendRunner
from tests.backend.stores import GcsStore, MotoS3Server
from tests.kfp_fake import FakeKfpServer
from tests.training_helpers import checkpoint_weights

REGISTRY = "us-docker.pkg.dev/my-project/bittune"
SHORT = {**DIGITS_DEMO_OVERRIDES, "total_steps": 12, "warmup_steps": 2, "decay_steps": [6, 8, 10]}
TINY = {**DIGITS_DEMO_OVERRIDES, "total_steps": 2, "warmup_steps": 1, "decay_steps": [1]}

REPO = pathlib.Path(__file__).resolve().parents[2]
OLD_YAML = REPO / "tests/backend/fixtures/bit_finetune_before_issue19.yaml"
OLD_COMMIT = "96792bd"  # the code that YAML was compiled from
# The pipeline with its preprocessing loop named "preprocess-workers" (issue 30, item 1).
NAMED_LOOP_YAML = REPO / "tests/backend/fixtures/bit_finetune_named_loop.yaml"
NAMED_LOOP_COMMIT = "08726a7"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def moto():
    with MotoS3Server(buckets=("mlpipeline",)) as server:
        yield server


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The pipeline compiled to train on the CPU (this machine has no GPU)."""
    path = tmp_path_factory.mktemp("cluster") / "bit_finetune.yaml"
    return submit.compile_pipeline(str(path), REGISTRY, machine=TrainingMachine("cpu"))


@pytest.fixture(scope="module")
def digits_in_gcs(gcs, digits_folder):
    bucket = gcs.new_bucket()
    return gcs.upload_tree(digits_folder, f"gs://{bucket}/digits"), bucket


def _runner(stores, tmp_path, gcs, version=BACKEND_VERSIONS[-1], **env):
    base = {"LANG": "C.UTF-8", "HOME": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "2"}
    base["STORAGE_EMULATOR_HOST"] = gcs.server.url
    base["PYTHONPATH"] = str(REPO)  # the tasks run this checkout's code (not the editable one's)
    # template_retry={}: a 2.17 cluster set up as docs/kubeflow.md asks (stock templateDefaults
    # retryStrategy removed), so retries follow set_retry as on 2.14-2.16
    return BackendRunner(stores, workdir=tmp_path / "cluster", backoff_scale=0.0,
                         base_env={**base, **env}, backend_version=version,
                         template_retry={})  # fmt: skip


def _parameters(data, **extra):
    return {"data_source": data, "data_fingerprint": "f1", **extra}


def _json(runner, uri):
    return json.loads(runner.store_for(uri).read_bytes(uri))


# The whole pipeline with training (the demo schedule, to the accuracy of `bittune run`): once
# per object store, at the oldest and the newest release. The releases in between walk the same
# compiled YAML with a 12-step schedule: every task runs, nothing is trained for real.
TRAINING_RUNS = [("2.14", "minio"), ("2.17", "gcs")]
WALKS = [("2.15", "gcs"), ("2.16", "minio")]


def test_every_claimed_backend_version_is_run():
    assert sorted(v for v, _ in TRAINING_RUNS + WALKS) == list(BACKEND_VERSIONS)
    assert sorted(s for _, s in TRAINING_RUNS) == ["gcs", "minio"]
    oldest = tuple(int(n) for n in BACKEND_VERSIONS[0].split("."))
    assert oldest == submit.MINIMUM_BACKEND


def _run_whole(version, store, context, overrides, **extra):
    """The compiled pipeline with 3 preprocessing workers at ``version`` with ``store`` as the
    pipeline root; returns the runner, the result and the root."""
    moto, gcs, (data, bucket), compiled, tmp_path = context
    stores = [moto.store(), GcsStore.from_fake_server(gcs.server)]
    runner = _runner(stores, tmp_path, gcs, version)
    root = "minio://mlpipeline/v2/artifacts" if store == "minio" else f"gs://{bucket}/pipelines"
    values = _parameters(data, preprocess_workers=3, hyperrule_overrides=json.dumps(overrides),
                         **extra)  # fmt: skip
    result = runner.run(compiled, values, pipeline_root=root, run_id=f"run-{version}")
    assert result.state == "SUCCEEDED"
    loop = result.task("for-loop-1")  # unnamed: its display name is its key on every release
    assert loop.kind == "loop" and loop.display_name == "for-loop-1"
    workers = result.tasks_named("write-shards")
    assert len(workers) == 3 and all(w.state == "SUCCEEDED" for w in workers)
    assert all(w.display_name == "write TFRecord shards" for w in workers)
    assert all(w.output_artifacts["train_shards"].uri.startswith(root) for w in workers)
    assert len(result.task("gather-dataset").input_artifacts["summaries"]) == 3
    assert len(result.task("train-model").input_artifacts["train_shards"]) == 3
    pushed = result.task("push-model").outputs["Output"]
    assert pushed.startswith(root) and runner.store_for(pushed).exists(f"{pushed}/saved_model.pb")
    return runner, result, root


@pytest.mark.parametrize(("version", "store"), TRAINING_RUNS)
def test_the_whole_pipeline_trains_as_on_a_cluster(version, store, moto, gcs, digits_in_gcs,
                                                  compiled, tmp_path):  # fmt: skip
    context = (moto, gcs, digits_in_gcs, compiled, tmp_path)
    runner, result, _ = _run_whole(version, store, context, DIGITS_DEMO_OVERRIDES)
    evaluated = result.task("evaluate-model")
    metrics = _json(runner, evaluated.output_artifacts["evaluation"].uri + "/metrics.json")
    assert metrics["metrics"]["accuracy"] >= 0.95  # bittune run reaches 0.977 on these digits
    assert evaluated.outputs["Output"] is True
    model = result.task("train-model").output_artifacts
    assert not runner.store_for(model["trained_model"].uri).exists(
        model["trained_model"].uri + "/checkpoints/checkpoint"
    )  # checkpoints and logs are artifacts of their own: evaluate never downloads them


@pytest.mark.parametrize(("version", "store"), WALKS)
def test_the_compiled_pipeline_walks_at_the_other_releases(version, store, moto, gcs,
                                                          digits_in_gcs, compiled,
                                                          tmp_path):  # fmt: skip
    """Every task of the compiled YAML under this release's driver, launcher and Argo rules,
    with a 12-step schedule. On the S3-compatible store, checkpoints go to checkpoint_root (a
    volume every attempt would mount), under the run's id."""
    context = (moto, gcs, digits_in_gcs, compiled, tmp_path)
    volume = tmp_path / "volume"
    extra = {"checkpoint_root": str(volume)} if store == "minio" else {}
    runner, result, _ = _run_whole(version, store, context, SHORT, **extra)
    assert result.task("train-model").outputs["Output"] != -1.0  # it trained (12 steps)
    if store == "minio":
        assert (volume / f"run-{version}" / "checkpoints" / "checkpoint").exists()


def test_new_data_is_analysed_again_and_unchanged_data_is_cached(moto, gcs, compiled, tmp_path):
    bucket = gcs.new_bucket()
    digits = pathlib.Path(materialize_digits())
    data = gcs.upload_tree(digits / "3", f"gs://{bucket}/flowers/3")
    gcs.upload_tree(digits / "8", f"gs://{bucket}/flowers/8")
    state = f"gs://{bucket}/trigger.json"
    runner = _runner([moto.store()], tmp_path, gcs)
    data = f"gs://{bucket}/flowers"
    values = {"data_source": data, "hyperrule_overrides": json.dumps(TINY)}
    with FakeKfpServer() as kfp:

        def run(fingerprint):
            return submit.submit(kfp.url, {**values, "data_fingerprint": fingerprint}, "t",
                                 compiled)  # fmt: skip

        def execute(run_id):
            return runner.run_from_fake_api(kfp, run_id)

        first = submit.trigger(data, state, run)
        assert first["action"] == "submitted"
        one = execute(first["run"]["run_id"])
        assert not one.task("analyze-dataset").cache_hit
        assert submit.trigger(data, state, run)["action"] == "unchanged"
        assert len(kfp.runs) == 1  # nothing submitted

        again = execute(submit.submit(kfp.url, values, "t", compiled)["run_id"])
        assert again.task("analyze-dataset").cache_hit  # submit fingerprints the same data
        assert all(w.cache_hit for w in again.tasks_named("write-shards"))

        extra = gcs.upload_tree(digits / "5", f"gs://{bucket}/flowers/5")
        assert extra
        second = submit.trigger(data, state, run)
        assert second["action"] == "submitted"
        three = execute(second["run"]["run_id"])
        analysis = three.task("analyze-dataset")
        assert not analysis.cache_hit
        before, after = one.task("analyze-dataset"), analysis
        stats = [_json(runner, t.output_artifacts["analysis"].uri + "/stats.json")
                 for t in (before, after)]  # fmt: skip
        assert stats[1]["totals"]["inputs"] > stats[0]["totals"]["inputs"]
        assert "5" in stats[1]["classes"] and "5" not in stats[0]["classes"]


def _download(uri, local):
    for entry in storage.list_files(uri):
        target = pathlib.Path(local) / entry.relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(storage.read_bytes(entry.uri))
    return local


def test_killed_training_is_retried_to_the_uninterrupted_weights(moto, gcs, digits_in_gcs, compiled,
                                                                 tmp_path):  # fmt: skip
    """On Cloud Storage the checkpoints live at the checkpoints artifact's gs:// URI, written as
    training goes. (On the S3-compatible default store they go under checkpoint_root: the 2.16
    walk shows them there, and tests/reliability/test_preemption.py resumes from a local one.)"""
    data, bucket = digits_in_gcs
    stores = [moto.store(), GcsStore.from_fake_server(gcs.server)]
    values = _parameters(data, hyperrule_overrides=json.dumps(SHORT), checkpoint_every=2,
                         preprocess_workers=1)  # fmt: skip
    runner = _runner(stores, tmp_path, gcs, TF_DETERMINISTIC_OPS="1")

    def checkpoints_of(run_id):
        task = runner.runs[-1 if run_id == "killed" else 0].task("train-model")
        return _download(task.output_artifacts["checkpoints"].uri, tmp_path / run_id)

    def fourth_checkpoint_saved(dirs, attempt):  # hours into training on Argo's clock
        return any("/checkpoints/ckpt-4" in n for n in gcs.names(bucket, "killed/"))

    runner.run(compiled, values, pipeline_root=f"gs://{bucket}/whole", run_id="whole")
    hook = runner.kill_on("train-model", fourth_checkpoint_saved, ran_for_s=5 * 3600)
    killed = runner.run(compiled, values, pipeline_root=f"gs://{bucket}/killed", run_id="killed")
    task = killed.task("train-model")
    assert hook.fired and [a.number for a in task.attempts] == [1, 2]
    assert "steps 0->" not in task.attempts[1].log  # the retry resumed, it did not restart
    a, b = checkpoint_weights(checkpoints_of("whole")), checkpoint_weights(checkpoints_of("killed"))
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-7, err_msg=name)


def _checkout(commit, folder):
    """The project's components as they were at ``commit`` (the old YAML runs the old code)."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "components"],
                             capture_output=True, check=False)  # fmt: skip
    if archive.returncode != 0:
        pytest.skip(f"commit {commit} is not in this clone: {archive.stderr.decode()[:200]}")
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def test_the_old_pipeline_fails_where_a_real_backend_fails_it(moto, gcs, digits_in_gcs,
                                                             tmp_path):  # fmt: skip
    """The pipeline before issue 19: a numeric accelerator count reaches the driver as "" (no
    GPU limit), and the collected shards lose all but one inside its sub-pipelines."""
    data, _ = digits_in_gcs
    old_code = _checkout(OLD_COMMIT, tmp_path / "old")
    runner = _runner([moto.store()], tmp_path, gcs, PYTHONPATH=str(old_code))
    values = _parameters(data, preprocess_workers=3, hyperrule_overrides=json.dumps(SHORT))
    result = runner.run(OLD_YAML, values, raise_on_failure=False)
    training = result.tasks[result.failed_task]
    assert training.name == "train-model" and "train-model-on-machine" in training.path
    assert training.executor_input["inputs"]["parameterValues"]["accelerator"] == "gpu"
    assert "nvidia.com/gpu" not in training.pod_spec["resources"]["limits"]  # item 1
    assert "of the dataset is not in" in training.log  # item 2: one shard of three arrived
    assert len(result.tasks_named("write-shards")) == 3
    evaluate = [t for t in result.tasks.values() if t.name == "evaluate-model"]
    assert all(t.state != "SUCCEEDED" for t in evaluate)


def test_the_named_loop_fails_on_2_14_and_2_15_as_the_driver_fails_it(moto, gcs, digits_in_gcs,
                                                                      tmp_path):  # fmt: skip
    """Before 2.16.0 a named ParallelFor is recorded under its display name; the gather step's
    driver looks it up by its key and fails. One cluster upgraded from 2.14 to 2.15: the second
    run's steps are cache hits and it fails the same way (Retry would too)."""
    data, _ = digits_in_gcs
    old_code = _checkout(NAMED_LOOP_COMMIT, tmp_path / "old")
    runner = _runner([moto.store()], tmp_path, gcs, "2.14", PYTHONPATH=str(old_code))
    values = _parameters(data, preprocess_workers=2, hyperrule_overrides=json.dumps(TINY))
    for version in ("2.14", "2.15"):
        runner.backend_version = version
        result = runner.run(NAMED_LOOP_YAML, values, raise_on_failure=False)
        assert result.task("for-loop-1").display_name == "preprocess-workers"
        workers = result.tasks_named("write-shards")
        assert [w.state for w in workers] == ["SUCCEEDED" if version == "2.14" else "CACHED"] * 2
        assert result.failed_task == "gather-dataset"
        assert 'cannot find producer task "for-loop-1_' in result.error
        assert result.task("gather-dataset").attempts == []  # its driver failed: no pod
        assert all(not t.attempts for t in result.tasks_named("train-model"))


def test_a_gpu_training_pod_asks_for_the_gpus_it_was_compiled_for(moto, gcs, digits_in_gcs,
                                                                 tmp_path):  # fmt: skip
    data, _ = digits_in_gcs
    gpus = TrainingMachine("gpu", accelerator_count=2)
    path = submit.compile_pipeline(str(tmp_path / "gpu.yaml"), REGISTRY, machine=gpus)
    runner = _runner([moto.store()], tmp_path, gcs)
    hook = runner.kill_on("train-model", lambda dirs, attempt: True, phase="Error")
    values = _parameters(data, hyperrule_overrides=json.dumps(SHORT), preprocess_workers=1)
    result = runner.run(path, values, raise_on_failure=False)
    training = result.task("train-model")
    assert hook.fired and len(training.attempts) == 1  # a deleted pod: no retry (OnFailure)
    assert training.pod_spec["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert training.executor_input["inputs"]["parameterValues"]["accelerator"] == "gpu"


def test_a_moved_dataset_trains_and_evaluates_from_elsewhere(digits_folder, tmp_path):
    cli = [sys.executable, "-m", "pipelines.cli"]
    rule = ["--resize", "32", "--crop", "28", "--batch-size", "16", "--micro-batch-size", "8",
            "--total-steps", "4", "--warmup-steps", "1", "--decay-steps", "2,3"]  # fmt: skip
    made = tmp_path / "made"
    for args in (
        ["analyze", str(digits_folder), "--output", str(made / "analysis"), *rule],
        ["preprocess", str(digits_folder), "--analysis", str(made / "analysis"),
         "--output", str(made / "dataset")],
    ):  # fmt: skip
        done = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    moved = tmp_path / "elsewhere" / "dataset"
    moved.parent.mkdir()
    shutil.move(str(made / "dataset"), str(moved))
    shutil.rmtree(made)
    away = tmp_path / "another-working-directory"
    away.mkdir()
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[2])}
    for args in (
        ["train", "--data", str(moved), "--output", str(tmp_path / "run")],
        ["evaluate", "--data", str(moved), "--run", str(tmp_path / "run"),
         "--output", str(tmp_path / "eval")],
    ):  # fmt: skip
        done = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=600,
                              cwd=away, env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["metrics"]["examples"] > 100
