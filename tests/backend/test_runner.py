"""Tests of the backend-faithful KFP runner (tests/backend/runner.py) on toy pipelines.

Each test compiles a small pipeline with the real kfp compiler and runs it as the KFP v2 backend
would: every task in its own process, artifacts through a real object store on loopback (moto's
S3 API for ``minio://``/``s3://``, fake-gcs-server for ``gs://``)."""

import json
import pathlib
import re
import sys
import time

import pytest
import yaml
from kfp import compiler, dsl, kubernetes
from kfp.dsl import Artifact, Dataset, Input, Output

from tests.backend.runner import (
    BackendRunner,
    RunFailed,
    SubmissionError,
    TaskDirs,
    binding_problems,
    load_ir,
    parameter_bindings,
)
from tests.backend.stores import GcsStore, MotoS3Server

IMAGE = "python:3.11-slim"

# --- toy components (module level: the compiler embeds their source) ---------------------------


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def make_bare() -> list:
    return [1, 2, 3]


@dsl.component(base_image=IMAGE)  # keeps the SDK's literal `pip install kfp==...` preamble
def make_typed() -> list[int]:
    return [1, 2, 3]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def square(x: int) -> int:
    if not isinstance(x, int):  # protojson writes 2.0 as 2: an int parameter reads an int
        raise TypeError(f"x arrived as {type(x).__name__}: {x!r}")
    return x * x


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def total(xs: list[int]) -> int:
    return sum(xs)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def write_text(text: str, out: Output[Dataset]) -> str:
    import os

    assert not os.path.exists(out.path), "an output starts absent"
    with open(out.path, "w") as f:
        f.write(text)
    out.metadata.update({"rows": 3, "ok": True, "tags": ["a", "b"], "name": "toy"})
    return out.path  # a local path, recorded as a string (a mistake on a cluster)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def read_text(data: Input[Dataset]) -> str:
    import json

    with open(data.path) as f:
        text = f.read()
    return json.dumps({"text": text, "uri": data.uri, "metadata": data.metadata})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def open_path(path: str) -> str:
    with open(path) as f:  # the producer's local path: never downloaded here
        return f.read()


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def write_number(n: int, out: Output[Artifact]):
    import os

    os.makedirs(out.path)
    with open(os.path.join(out.path, "n.txt"), "w") as f:
        f.write(str(n))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def write_item(item: str, out: Output[Artifact]):
    import os

    os.makedirs(out.path)
    with open(os.path.join(out.path, "n.txt"), "w") as f:
        f.write(item)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def join_numbers(parts: Input[list[Artifact]]) -> str:
    import os

    return ",".join(open(os.path.join(p.path, "n.txt")).read() for p in parts)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def flip(n: int) -> str:
    return "heads" if n % 2 else "tails"


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def say(msg: str, out: Output[Artifact]) -> str:
    with open(out.path, "w") as f:
        f.write(msg)
    return msg


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def show(text: str, art: Input[Artifact]) -> str:
    with open(art.path) as f:
        return f"{text}/{f.read()}"


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def checkpointed(steps: int, model: Output[Artifact]) -> str:
    import os
    import sys
    import time

    found = sorted(os.listdir(model.path)) if os.path.exists(model.path) else []
    payload = sys.argv[sys.argv.index("--executor_input") + 1]
    print("FOUND_AT_START", found, flush=True)
    print("EXECUTOR_INPUT", payload, flush=True)
    os.makedirs(model.path)
    for step in range(1, steps + 1):
        with open(os.path.join(model.path, f"ckpt-{step}"), "w") as f:
            f.write(str(step))
        time.sleep(0.5)
    return os.environ.get("KFP_RETRY_INDEX", "")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def add(a: int, b: int, out: Output[Dataset]) -> int:
    with open(out.path, "w") as f:
        f.write(str(a + b))
    return a + b


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def read_sum(data: Input[Dataset]) -> int:
    return int(open(data.path).read())


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def job_info(job: str, job_id: str, task: str) -> str:
    return f"{job}|{job_id}|{task}"


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def sleepy(seconds: float) -> str:
    import time

    time.sleep(seconds)
    return "done"


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def on_accelerator() -> str:
    return "trained"


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def job_times(create: str, schedule: str) -> str:
    return f"{create}|{schedule}"


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pick(mode: str) -> str:
    return mode


@dsl.container_component
def echo_word(out: dsl.OutputPath(str), word: str = "default"):
    return dsl.ContainerSpec(
        image=IMAGE, command=["sh", "-c", 'printf %s "$0" > "$1"'], args=[word, out]
    )


# --- toy pipelines -------------------------------------------------------------------------------


@dsl.pipeline(name="bare-list-loop")
def bare_list_loop():
    items = make_bare()
    with dsl.ParallelFor(items.output) as item:
        square(x=item)


@dsl.pipeline(name="typed-list-loop")
def typed_list_loop(offset: int = 2):
    items = make_typed()
    with dsl.ParallelFor(items.output) as item:
        squares = square(x=item)
    total(xs=dsl.Collected(squares.output))
    square(x=offset)


@dsl.pipeline(name="artifact-roundtrip")
def artifact_roundtrip(text: str = "hello"):
    written = write_text(text=text)
    read_text(data=written.outputs["out"])


@dsl.pipeline(name="path-as-string")
def path_as_string():
    written = write_text(text="secret")
    open_path(path=written.outputs["Output"])


@dsl.pipeline(name="fan-in")
def fan_in():
    with dsl.ParallelFor([1, 2, 3]) as n:
        squares = square(x=n)
        files = write_number(n=n)
    total(xs=dsl.Collected(squares.output))
    join_numbers(parts=dsl.Collected(files.outputs["out"]))


@dsl.pipeline(name="branches")
def branches(n: int = 1):
    coin = flip(n=n)
    with dsl.If(coin.output == "heads"):
        heads = say(msg="H")
    with dsl.Else():
        tails = say(msg="T")
    show(
        text=dsl.OneOf(heads.outputs["Output"], tails.outputs["Output"]),
        art=dsl.OneOf(heads.outputs["out"], tails.outputs["out"]),
    )


@dsl.pipeline(name="retried")
def retried(steps: int = 3):
    checkpointed(steps=steps).set_retry(num_retries=2, backoff_duration="7s", backoff_factor=2)


@dsl.pipeline(name="one-hour-window")
def one_hour_window():
    sleepy(seconds=2.0).set_retry(
        num_retries=2, backoff_duration="1s", backoff_factor=2
    ).set_caching_options(False)


@dsl.pipeline(name="two-day-window")
def two_day_window():
    sleepy(seconds=2.0).set_retry(
        num_retries=2, backoff_duration="1s", backoff_factor=2, backoff_max_duration="176400s"
    ).set_caching_options(False)


@dsl.pipeline(name="no-retry")
def no_retry():
    sleepy(seconds=2.0).set_caching_options(False)


@dsl.pipeline(name="join-in-sub-pipeline")
def join_in_sub_pipeline(parts: Input[list[Artifact]]) -> str:
    return join_numbers(parts=parts).output


@dsl.pipeline(name="list-into-sub-pipeline")
def list_into_sub_pipeline():
    with dsl.ParallelFor([1, 2, 3]) as n:
        files = write_number(n=n)
    join_numbers(parts=dsl.Collected(files.outputs["out"])).set_display_name("join at root")
    join_in_sub_pipeline(parts=dsl.Collected(files.outputs["out"]))


@dsl.pipeline(name="gpu-count")
def gpu_count(count: int = 2):
    on_accelerator().set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(count)
    on_accelerator().set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(2)


@dsl.pipeline(name="cached")
def cached(a: int = 1, b: int = 2):
    summed = add(a=a, b=b)
    read_sum(data=summed.outputs["out"])


@dsl.pipeline(name="placeholders")
def placeholders():
    job_info(
        job=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        task=dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
    ).set_caching_options(False)


@dsl.pipeline(name="named-loop")
def named_loop():
    with dsl.ParallelFor([1], name="workers") as n:
        files = write_number(n=n)
    join_numbers(parts=dsl.Collected(files.outputs["out"]))


@dsl.pipeline(name="unnamed-loop")
def unnamed_loop():
    with dsl.ParallelFor([1]) as n:
        files = write_number(n=n)
    join_numbers(parts=dsl.Collected(files.outputs["out"]))


@dsl.pipeline(name="loop-over-items")
def loop_over_items(items: list = ["1"]):  # noqa: B006 (a pipeline default, not a Python one)
    with dsl.ParallelFor(items) as item:
        files = write_item(item=item)
    join_numbers(parts=dsl.Collected(files.outputs["out"]))


@dsl.pipeline(name="null-selector")
def null_selector(selector: dict = None):
    kubernetes.add_node_selector_json(on_accelerator(), selector)


@dsl.pipeline(name="null-toleration")
def null_toleration(tolerations: list = None):
    kubernetes.add_toleration_json(on_accelerator(), tolerations)


@dsl.pipeline(name="job-times")
def job_times_pipeline():
    job_times(
        create=dsl.PIPELINE_JOB_CREATE_TIME_UTC_PLACEHOLDER,
        schedule=dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER,
    ).set_caching_options(False)


@dsl.pipeline(name="literal-modes")
def literal_modes(mode: str = "a"):
    pick(mode=mode)


@dsl.pipeline(name="default-arg")
def default_arg():
    echo_word()


@dsl.pipeline(name="fractional-backoff")
def fractional_backoff():
    sleepy(seconds=1.0).set_retry(num_retries=2, backoff_duration="1s", backoff_factor=1.5)


# --- fixtures ------------------------------------------------------------------------------------


def _compile(func, tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / f"{func.name}.yaml"
    compiler.Compiler().compile(func, str(path))
    return path


@pytest.fixture(scope="module")
def moto():
    pytest.importorskip("moto", reason="moto[server] is needed for the S3 store")
    with MotoS3Server(buckets=("mlpipeline", "other")) as server:
        yield server


@pytest.fixture
def runner(moto, tmp_path):
    """A 2.17 cluster whose admin removed the stock ``templateDefaults.retryStrategy`` (as
    docs/kubeflow.md asks): Argo's own OnFailure policy, as on 2.14-2.16."""
    return BackendRunner(
        [moto.store()],
        workdir=tmp_path / "runner",
        python_bin=pathlib.Path(sys.executable).parent,
        backoff_scale=0.0,
        task_timeout_s=60,
        template_retry={},
    )


# --- driver: parameter types ---------------------------------------------------------------------


def test_bare_list_loop_into_int_fails_like_the_driver(runner, tmp_path):
    path = _compile(bare_list_loop, tmp_path)
    with pytest.raises(RunFailed) as failed:
        runner.run(path)
    result = failed.value.result
    assert result.state == "FAILED"
    assert result.failed_task == "for-loop-1[0]/square"
    message = str(failed.value)
    assert 'input parameter "x" type mismatch: expect NUMBER_INTEGER, got string' in message
    assert message.count("driver.Container(pipelineName=bare-list-loop") >= 1
    # the iteration driver converted the number item to the loop's declared STRING item type
    iteration = result.task("for-loop-1[0]")
    assert iteration.inputs == {"pipelinechannel--make-bare-Output-loop-item": "1"}
    square_task = result.task("for-loop-1[0]/square")
    assert square_task.attempts == [] and square_task.state == "FAILED"  # no pod, no retry
    assert "for-loop-1[1]" not in result.tasks  # failFast: no further iteration starts

    mismatches = [b for b in parameter_bindings(path) if b.producer_type != b.consumer_type]
    assert [(b.consumer, b.input, b.producer_type, b.consumer_type) for b in mismatches] == [
        ("for-loop-1/square", "x", "STRING", "NUMBER_INTEGER")
    ]
    assert binding_problems(path) == mismatches


def test_typed_list_loop_passes_and_integral_doubles_arrive_as_int(runner, tmp_path):
    path = _compile(typed_list_loop, tmp_path)
    assert all(b.producer_type == b.consumer_type for b in parameter_bindings(path))
    assert binding_problems(path) == []
    assert "defaultValue: 2.0" in path.read_text()  # the compiler writes the int as a float
    result = runner.run(path)
    assert result.state == "SUCCEEDED"
    assert result.task("total").outputs == {"Output": 14.0}
    assert result.task("total").inputs == {"xs": [1.0, 4.0, 9.0]}
    offset = result.task("square-2")
    assert offset.inputs == {"x": 2.0}
    assert '"x":2' in " ".join(offset.command)  # protojson: 2.0 is written as 2
    assert result.task("make-typed").command[:2] == ["sh", "-c"]  # the literal pip preamble ran

    # no integrality check: the API server and the driver let 2.5 through to an int input
    half = runner.run(path, {"offset": 2.5}, raise_on_failure=False)
    assert half.failed_task == "square-2" and half.task("square-2").inputs == {"x": 2.5}
    assert "x arrived as float: 2.5" in half.task("square-2").log


def test_submission_checks_like_the_api_server(runner, tmp_path):
    path = _compile(typed_list_loop, tmp_path)
    with pytest.raises(SubmissionError, match="requires type double or integer"):
        runner.run(path, {"offset": "2"})
    with pytest.raises(SubmissionError, match="not required by pipeline: nope"):
        runner.run(path, {"nope": 1})


# --- launcher: artifacts through the object stores ---------------------------------------------


@pytest.mark.parametrize("root", ["minio://mlpipeline/v2/artifacts", "s3://other/kfp"])
def test_artifacts_round_trip_through_s3(runner, moto, tmp_path, root):
    path = _compile(artifact_roundtrip, tmp_path)
    result = runner.run(path, {"text": "hi there"}, pipeline_root=root)
    written = result.task("write-text").output_artifacts["out"]
    prefix = f"{root}/artifact-roundtrip/{result.run_id}/write-text/"
    assert written.uri.startswith(prefix) and written.uri.endswith("/out")
    assert moto.store().read_bytes(written.uri) == b"hi there"
    assert written.backend_local_path == "/" + written.uri.replace("://", "/", 1)
    read = json.loads(result.task("read-text").outputs["Output"])
    assert read["text"] == "hi there" and read["uri"] == written.uri
    # ML Metadata round trip: bools become 1, lists and dicts get wrapped, two keys are added
    meta = read["metadata"]
    assert meta["rows"] == 3 and meta["ok"] == 1 and meta["name"] == "toy"
    assert meta["tags"] == {"list": ["a", "b"]}
    assert meta["display_name"] == "out"
    assert json.loads(meta["store_session_info"])["Provider"] == root.split(":")[0]
    consumed = result.task("read-text").input_artifacts["data"][0]
    assert consumed["name"] == str(written.id) and consumed["type"] == {"instanceSchema": ""}


def test_artifacts_round_trip_through_gcs(runner, gcs, tmp_path):
    bucket = gcs.new_bucket()
    runner.add_store(GcsStore.from_fake_server(gcs.server))
    path = _compile(artifact_roundtrip, tmp_path)
    result = runner.run(path, {"text": "gcs!"}, pipeline_root=f"gs://{bucket}/root")
    written = result.task("write-text").output_artifacts["out"]
    assert written.uri.startswith(f"gs://{bucket}/root/artifact-roundtrip/{result.run_id}/")
    assert written.backend_local_path.startswith(f"/gcs/{bucket}/root/")
    assert gcs.names(bucket) == [written.uri.removeprefix(f"gs://{bucket}/")]
    assert json.loads(result.task("read-text").outputs["Output"])["text"] == "gcs!"
    # the launcher downloaded the input into the consumer's (now gone) pod
    attempt = result.task("read-text").attempts[0]
    assert [pathlib.Path(p).name for p in attempt.downloaded["data"]] == ["out"]
    assert not pathlib.Path(attempt.pod_root).exists()


def test_a_local_path_passed_as_a_string_is_not_there(runner, tmp_path):
    path = _compile(path_as_string, tmp_path)
    with pytest.raises(RunFailed) as failed:
        runner.run(path)
    result = failed.value.result
    assert result.failed_task == "open-path"
    recorded = result.task("write-text").outputs["Output"]
    assert "/minio/mlpipeline/v2/artifacts/path-as-string/" in recorded
    assert "FileNotFoundError" in result.task("open-path").log
    assert "failed to execute component: exit status 1" in str(failed.value)


# --- ParallelFor + Collected, If/Else + OneOf -----------------------------------------------------


def test_parallel_for_collects_parameters_and_artifacts(runner, tmp_path):
    result = runner.run(_compile(fan_in, tmp_path))
    loop = result.task("for-loop-2")
    assert loop.kind == "loop" and loop.iteration_count == 3
    assert [result.task(f"for-loop-2[{i}]/square").inputs for i in range(3)] == [
        {"x": 1.0},
        {"x": 2.0},
        {"x": 3.0},
    ]
    assert result.task("total").outputs == {"Output": 14.0}
    assert result.task("join-numbers").outputs == {"Output": "1,2,3"}
    parts = result.task("join-numbers").input_artifacts["parts"]
    uris = [r.uri for r in loop.collected_artifacts["pipelinechannel--write-number-out"]]
    assert [p["uri"] for p in parts] == uris and len(set(uris)) == 3


def test_if_else_one_of_takes_the_branch_that_ran(runner, tmp_path):
    path = _compile(branches, tmp_path)
    heads = runner.run(path, {"n": 1})
    assert heads.task("show").outputs == {"Output": "H/H"}
    if_branch, else_branch = heads.task("condition-2"), heads.task("condition-3")
    assert (if_branch.state, if_branch.condition_result) == ("SUCCEEDED", True)
    assert (else_branch.state, else_branch.mlmd_state) == ("SKIPPED", "CANCELED")
    assert heads.task("condition-branches-1").mlmd_state == "COMPLETE"
    tails = runner.run(path, {"n": 2})
    assert tails.task("show").outputs == {"Output": "T/T"}
    assert tails.task("condition-2").state == "SKIPPED"
    assert tails.task("condition-3/say-2").outputs == {"Output": "T"}


def test_one_of_over_an_all_cached_branch_fails_as_on_a_cluster(runner, tmp_path):
    """Only a launcher updates DAG states in ML Metadata: a branch whose only task is a cache hit
    stays RUNNING, so dsl.OneOf finds no COMPLETE or CACHED branch (driver/resolve.go
    GetProducerTask, metadata/client.go UpdateDAGExecutionsState)."""
    path = _compile(branches, tmp_path)
    runner.run(path, {"n": 1})
    with pytest.raises(RunFailed, match="processing OneOf: No successful task found") as failed:
        runner.run(path, {"n": 1})
    result = failed.value.result
    assert result.task("condition-2/say").cache_hit is True
    assert result.task("condition-2").mlmd_state == "RUNNING"


# --- retries ---------------------------------------------------------------------------------


def test_retry_after_sigkill_reuses_the_executor_input_and_starts_empty(runner, tmp_path):
    def first_checkpoint(dirs: TaskDirs, attempt: int) -> bool:
        return (dirs["model"] / "ckpt-1").exists()

    hook = runner.kill_on("checkpointed", first_checkpoint)
    started = time.monotonic()
    result = runner.run(_compile(retried, tmp_path), {"steps": 2})
    task = result.task("checkpointed")
    assert hook.fired == ["checkpointed"]
    assert [a.number for a in task.attempts] == [1, 2]
    first, second = task.attempts
    assert first.killed_by_hook and first.signal == 9 and first.exit_code == 137
    assert first.error == "signal: killed" and second.succeeded
    assert task.retry_delays_s == [7.0]  # configured; slept 0 (backoff_scale=0)
    assert time.monotonic() - started < 30

    def line(log: str, tag: str) -> str:
        return next(x for x in log.splitlines() if x.startswith(tag))

    assert line(first.log, "EXECUTOR_INPUT") == line(second.log, "EXECUTOR_INPUT")
    assert line(second.log, "FOUND_AT_START") == "FOUND_AT_START []"
    assert task.outputs == {"Output": "1"}  # KFP_RETRY_INDEX of the attempt that succeeded
    model = task.output_artifacts["model"]
    assert sorted(pathlib.PurePosixPath(u).name for u in model.uploaded) == ["ckpt-1", "ckpt-2"]


def _kill_at_start(dirs: TaskDirs, attempt: int) -> bool:
    return True


def test_a_retry_is_refused_after_the_default_one_hour_window(runner, tmp_path):
    """set_retry's default backoff_max_duration is 3600 s: once the first attempt has run past
    it on Argo's clock, processNodeRetries gives up ("Max duration limit exceeded")."""
    runner.kill_on("sleepy", _kill_at_start, ran_for_s=3700)
    result = runner.run(_compile(one_hour_window, tmp_path), raise_on_failure=False)
    task = result.task("sleepy")
    assert result.state == "FAILED" and len(task.attempts) == 1
    assert "Max duration limit exceeded" in task.warnings


def test_a_retry_within_a_long_window_runs_and_a_late_one_is_cut_at_argo_deadline(runner, tmp_path):
    path = _compile(two_day_window, tmp_path)
    runner.kill_on("sleepy", _kill_at_start, ran_for_s=3700)
    result = runner.run(path)
    assert [a.succeeded for a in result.task("sleepy").attempts] == [False, True]

    runner.clear_hooks()  # a retried attempt still running at first start + 49 h is stopped
    runner.kill_on("sleepy", _kill_at_start, ran_for_s=170000)
    runner.kill_on("sleepy", _kill_at_start, attempts=(2,), ran_for_s=20000)
    late = runner.run(path, raise_on_failure=False).task("sleepy")
    assert len(late.attempts) == 2 and "ARGO_DEADLINE" in late.attempts[1].error
    assert "max duration limit" in " ".join(late.warnings).lower()


def test_a_deleted_pod_ends_in_error_and_is_not_retried(runner, tmp_path):
    """The KFP compiler sets no retryPolicy, so Argo's default OnFailure skips Error nodes."""
    runner.kill_on("sleepy", _kill_at_start, phase="Error")
    result = runner.run(_compile(two_day_window, tmp_path), raise_on_failure=False)
    task = result.task("sleepy")
    assert result.state == "FAILED" and [a.phase for a in task.attempts] == ["Error"]
    assert any("retry policy OnFailure" in w for w in task.warnings)


@pytest.mark.parametrize(
    ("version", "template_retry", "retried"),
    [
        ("2.16", None, {"Failed": True, "Error": False}),  # no templateDefaults: OnFailure
        ("2.17", None, {"Failed": False, "Error": True}),  # stock {limit 2, OnError}
        ("2.17", {"limit": "2", "retryPolicy": "Always"}, {"Failed": True, "Error": True}),
    ],
)
def test_the_stock_2_17_template_defaults_retry_deleted_pods_and_not_failed_steps(
    moto, tmp_path, version, template_retry, retried
):
    """2.17.0's manifests add templateDefaults.retryStrategy {limit 2, OnError}; Argo merges its
    retryPolicy into the step's (mergedTemplateDefaultsInto), since KFP writes none."""
    runner = _at(version, moto, tmp_path)
    runner.template_retry = template_retry
    path = _compile(two_day_window, tmp_path)
    for phase, expected in retried.items():
        runner.clear_hooks()
        runner.kill_on("sleepy", _kill_at_start, phase=phase)
        task = runner.run(path, raise_on_failure=False).task("sleepy")
        assert [a.phase for a in task.attempts][:1] == [phase]
        assert len(task.attempts) == (2 if expected else 1), (version, phase)
        assert task.state == ("SUCCEEDED" if expected else "FAILED")


def test_a_step_without_set_retry_gets_the_default_limit_on_stock_2_17(moto, tmp_path):
    runner = _at("2.17", moto, tmp_path)
    runner.kill_on("sleepy", _kill_at_start, phase="Error", attempts=(1, 2))
    task = runner.run(_compile(no_retry, tmp_path), raise_on_failure=False).task("sleepy")
    assert [a.phase for a in task.attempts] == ["Error", "Error", "Succeeded"]
    assert task.retry_delays_s == [0.0, 0.0]  # the default has no backoff


# --- rules that changed between backend releases, and ML Metadata read-backs ---------------------


def test_a_collected_list_keeps_one_artifact_inside_a_sub_pipeline(runner, tmp_path):
    """GetInputArtifactsByExecutionID keeps one artifact per name (kubeflow/pipelines 13900)."""
    result = runner.run(_compile(list_into_sub_pipeline, tmp_path))
    assert sorted(result.task("join at root").outputs["Output"].split(",")) == ["1", "2", "3"]
    inside = result.task("join-in-sub-pipeline/join-numbers")
    assert len(inside.outputs["Output"].split(",")) == 1


def _at(version, moto, tmp_path):
    """A runner emulating backend release ``version``."""
    return BackendRunner(
        [moto.store()],
        workdir=tmp_path / f"runner-{version}",
        python_bin=pathlib.Path(sys.executable).parent,
        backoff_scale=0.0,
        task_timeout_s=60,
        backend_version=version,
    )


@pytest.mark.parametrize("version", ["2.16", "2.17"])
def test_artifact_one_of_took_the_last_selector_before_2_17(moto, tmp_path, version):
    runner = _at(version, moto, tmp_path)
    result = runner.run(_compile(branches, tmp_path), {"n": 1}, raise_on_failure=False)
    if version == "2.17":
        assert result.task("show").outputs == {"Output": "H/H"}
    else:  # the heads branch ran, the else branch's artifact is taken
        assert result.state == "FAILED" and result.failed_task == "show"


def test_the_executor_output_file_moved_in_2_15(moto, tmp_path):
    paths = {}
    for version in ("2.14", "2.15"):
        runner = BackendRunner(
            [moto.store()],
            workdir=tmp_path / version,
            python_bin=pathlib.Path(sys.executable).parent,
            task_timeout_s=60,
            backend_version=version,
        )
        result = runner.run(_compile(artifact_roundtrip, tmp_path), {"text": version})
        read = json.loads(result.task("read-text").outputs["Output"])
        assert read["text"] == version
        paths[version] = result.task("write-text").executor_input["outputs"]["outputFile"]
    assert paths["2.14"] == "/tmp/kfp_outputs/output_metadata.json"
    assert paths["2.15"].startswith("/minio/mlpipeline/v2/artifacts/artifact-roundtrip/")
    assert paths["2.15"].endswith("/output_metadata.json")


def test_an_accelerator_count_from_a_number_parameter_drops_the_gpu_limit(runner, tmp_path):
    """resolvePodSpecInputRuntimeParameter reads GetStringValue(): "" for a number."""
    result = runner.run(_compile(gpu_count, tmp_path), {"count": 2})
    from_parameter = result.task("on-accelerator").pod_spec["resources"]["limits"]
    constant = result.task("on-accelerator-2").pod_spec["resources"]["limits"]
    assert "nvidia.com/gpu" not in from_parameter
    assert constant["nvidia.com/gpu"] == "2"


# --- caching ---------------------------------------------------------------------------------


def test_cache_hit_on_identical_inputs_and_miss_when_one_changes(runner, moto, tmp_path):
    path = _compile(cached, tmp_path)
    first = runner.run(path, {"a": 1, "b": 2})
    assert not first.task("add").cache_hit and first.task("add").attempts

    again = runner.run(path, {"a": 1, "b": 2})
    hit = again.task("add")
    assert hit.cache_hit and hit.state == "CACHED" and hit.attempts == []
    assert hit.fingerprint == first.task("add").fingerprint
    assert hit.outputs == {"Output": 3.0}
    assert hit.output_artifacts["out"].uri == first.task("add").output_artifacts["out"].uri
    # the same artifact id flows downstream, so the consumer's key matches too
    assert again.task("read-sum").cache_hit

    changed = runner.run(path, {"a": 1, "b": 5})
    assert not changed.task("add").cache_hit and not changed.task("read-sum").cache_hit
    assert changed.task("read-sum").outputs == {"Output": 6.0}
    assert changed.task("add").fingerprint != first.task("add").fingerprint
    assert f"/{changed.run_id}/add/" in changed.task("add").output_artifacts["out"].uri


# --- placeholders and the fake API server ----------------------------------------------------


def test_run_from_fake_api_and_placeholders(runner, tmp_path):
    import kfp

    from tests.kfp_fake import FakeKfpServer

    path = _compile(placeholders, tmp_path)
    with FakeKfpServer() as fake:
        client = kfp.Client(host=fake.url)
        run = client.create_run_from_pipeline_package(str(path), run_name="my run")
        result = runner.run_from_fake_api(fake, run.run_id)
        assert fake.runs[run.run_id]["state"] == "SUCCEEDED"
    job, job_id, task = result.task("job-info").outputs["Output"].split("|")
    assert (job, job_id, task) == ("my run", run.run_id, "job-info")


# --- rules gated by release (tests/backend/releases.py): each on both sides of its boundary -----


@pytest.mark.parametrize(
    ("version", "pipeline", "resolves"),
    [("2.15", named_loop, False), ("2.16", named_loop, True), ("2.14", unnamed_loop, True)],
)
def test_a_named_loop_is_not_found_by_its_consumer_before_2_16(
    moto, tmp_path, version, pipeline, resolves
):
    """Before 2.16.0 the loop is recorded under its display name, looked up by its key."""
    path = _compile(pipeline, tmp_path)
    loop_key = next(iter(load_ir(path).spec["root"]["dag"]["tasks"].keys() - {"join-numbers"}))
    result = _at(version, moto, tmp_path).run(path, raise_on_failure=False)
    assert result.task(f"{loop_key}[0]/write-number").state == "SUCCEEDED"
    if resolves:
        assert result.task("join-numbers").outputs == {"Output": "1"}
    else:
        assert result.failed_task == "join-numbers"
        assert f'cannot find producer task "{loop_key}_' in result.error
        assert result.task("join-numbers").attempts == []  # the driver failed: no pod


@pytest.mark.parametrize("version", ["2.14", "2.15"])
@pytest.mark.parametrize("pipeline", [null_selector, null_toleration])
def test_a_null_node_selector_or_toleration_fails_only_2_14(moto, tmp_path, version, pipeline):
    result = _at(version, moto, tmp_path).run(_compile(pipeline, tmp_path), raise_on_failure=False)
    task = result.task("on-accelerator")
    if version == "2.14":
        assert result.failed_task == "on-accelerator" and task.attempts == []
        what = "node selector" if pipeline is null_selector else "toleration"
        assert f"failed to resolve {what}:" in result.error
        assert "the resolved input parameter is null" in result.error
    else:
        assert task.state == "SUCCEEDED"
        assert not task.pod_spec.get("nodeSelector") and not task.pod_spec.get("tolerations")


@pytest.mark.parametrize("version", ["2.15", "2.16", "2.17"])
def test_job_time_placeholders_by_release(moto, tmp_path, version):
    result = _at(version, moto, tmp_path).run(_compile(job_times_pipeline, tmp_path))
    create, schedule = result.task("job-times").outputs["Output"].split("|")
    if version == "2.15":  # not recognised: the text itself
        assert (create, schedule) == (
            dsl.PIPELINE_JOB_CREATE_TIME_UTC_PLACEHOLDER,
            dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER,
        )
    elif version == "2.16":  # recognised, never filled
        assert (create, schedule) == ("", "")
    else:  # a one-off run's schedule time is its create time
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", create) and schedule == create


def _with_literals(path):
    """The compiled IR with ``mode`` limited to "a" or "b" (the SDK writes no literals)."""
    ir = yaml.safe_load(pathlib.Path(path).read_text())
    for spec in (ir["root"], ir["components"]["comp-pick"]):
        spec["inputDefinitions"]["parameters"]["mode"]["literals"] = ["a", "b"]
    return ir


@pytest.mark.parametrize("version", ["2.15", "2.16"])
def test_literals_are_enforced_from_2_16(moto, tmp_path, version):
    ir = _with_literals(_compile(literal_modes, tmp_path))
    runner = _at(version, moto, tmp_path)
    if version == "2.15":
        assert runner.run(ir, {"mode": "c"}).task("pick").outputs == {"Output": "c"}
        return
    with pytest.raises(SubmissionError, match="does not match any of the allowed literal"):
        runner.run(ir, {"mode": "c"})  # the API server
    del ir["root"]["inputDefinitions"]["parameters"]["mode"]["literals"]
    result = runner.run(ir, {"mode": "c"}, raise_on_failure=False)  # the driver
    assert result.failed_task == "pick" and 'validating parameter "mode"' in result.error


@pytest.mark.parametrize("version", ["2.16", "2.17"])
def test_an_unpassed_default_in_container_args_by_release(moto, tmp_path, version):
    """Before 2.17 only the launcher resolves args, after adding defaults; 2.17's driver
    resolves them first, without defaults."""
    result = _at(version, moto, tmp_path).run(
        _compile(default_arg, tmp_path), raise_on_failure=False
    )
    if version == "2.16":
        assert result.task("echo-word").outputs == {"out": "default"}
    else:
        assert result.failed_task == "echo-word" and result.task("echo-word").attempts == []
        assert 'parameter "word" not found in executor input' in result.error


def test_a_fractional_backoff_factor_stops_argo_retrying(runner, tmp_path):
    """Argo parses the factor with intstr.Int32 (every release's Argo): 1.5 errors the node."""
    runner.kill_on("sleepy", _kill_at_start)
    result = runner.run(_compile(fractional_backoff, tmp_path), raise_on_failure=False)
    task = result.task("sleepy")
    assert result.state == "FAILED" and len(task.attempts) == 1
    assert "value '1.5' cannot be resolved to an int" in " ".join(task.warnings)


def test_a_collected_list_of_a_new_then_a_cached_artifact_cannot_be_downloaded(runner, tmp_path):
    """fetchNonDefaultBuckets opens another run's bucket only for a list's first artifact."""
    path = _compile(loop_over_items, tmp_path)
    runner.run(path, {"items": ["2"]})  # "2" is cached from here on, under this run's root
    mixed = runner.run(path, {"items": ["1", "2"]}, raise_on_failure=False)
    assert [t.cache_hit for t in mixed.tasks_named("write-item")] == [False, True]
    assert mixed.failed_task == "join-numbers"
    assert "failed to get bucket when downloading input artifact parts" in mixed.error
    cached_first = runner.run(path, {"items": ["2", "3"]})
    assert cached_first.task("join-numbers").outputs == {"Output": "2,3"}
