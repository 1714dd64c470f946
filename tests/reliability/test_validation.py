"""Parameter validation up front: `bittune run`, `bittune submit` and every component refuse
wrong types, out-of-range numbers, unknown models and unreachable data with a clear message,
before any expensive step."""

from __future__ import annotations

import re
import sys
import types

import pytest

from components.analyze import analyze_dataset
from components.bit import params
from components.bit.errors import BittuneError
from components.evaluate import evaluate_model
from components.preprocess import gather_dataset, plan_workers, write_shards
from components.push import push_model
from components.train import train_model
from pipelines import cli
from tests.kfp_fake import FakeKfpServer


def _bittune(capsys, *args: str) -> tuple[int, str]:
    try:
        code = cli.main(list(args))
    except SystemExit as exit_:  # argparse refuses wrong types itself
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preprocess-workers", "0"], "preprocess_workers must be between 1 and 1000, got 0"),
        (["--preprocess-workers", "two"], "invalid int value: 'two'"),
        (["--blessing-threshold", "-0.1"], "blessing_threshold must be a number between 0 and 1"),
        (["--model", "bit-m-r9x9"], "unknown model 'bit-m-r9x9'; valid names: bittune-tiny"),
        (["--model", "/nowhere/ckpt.npz"], "model checkpoint not found: /nowhere/ckpt.npz"),
        (["--hyperrule-overrides", '{"total_steps": 0}'], "total_steps must be >= 1, got 0"),
        (["--hyperrule-overrides", '{"resize": "big"}'], "resize must be a whole number"),
        (["--hyperrule-overrides", '{"lr": 0.1}'], "unknown HyperRule field(s) lr"),
        (["--hyperrule-overrides", "{not json"], "hyperrule_overrides is not valid JSON"),
        (["--total-steps", "0"], "total_steps must be >= 1, got 0"),
        (["--micro-batch-size", "many"], "invalid int value: 'many'"),
        (["--data", "/nowhere/photos"], "data folder not found: /nowhere/photos"),
        (["--data", "/nowhere/list.csv"], "manifest not found: /nowhere/list.csv"),
    ],
)
def test_bittune_run_refuses_before_starting(args, message, digits_folder, tmp_path, capsys,
                                             ledger):  # fmt: skip
    output = tmp_path / "runs"
    code, err = _bittune(capsys, "run", "--data", str(digits_folder), "--output", str(output),
                         *args)  # fmt: skip
    assert code == 2 and message in err
    assert "Traceback" not in err
    assert not output.exists()  # nothing started
    ledger["bad_parameters_refused"] += 1


def test_every_problem_is_named_at_once(digits_folder, tmp_path, capsys, ledger):
    code, err = _bittune(
        capsys, "run", "--data", str(digits_folder), "--output", str(tmp_path / "r"),
        "--preprocess-workers", "0", "--blessing-threshold", "2", "--model", "nope",
    )  # fmt: skip
    assert code == 2 and err.count("\n  - ") == 3
    ledger["bad_parameters_refused"] += 3


def test_submit_refuses_before_calling_the_api(tmp_path, capsys, ledger):
    with FakeKfpServer() as kfp:
        code, err = _bittune(
            capsys, "submit", "--host", kfp.url,
            "--param", "data_source=/home/me/photos",  # a path on this machine
            "--param", "preprocess_workers=-2",
            "--param", "training_strategy=fastest",
            "--param", "serving_root=/gcs/b/serving",  # a scratch folder on Kubeflow
        )  # fmt: skip
        assert code == 2
        assert "data_source '/home/me/photos' is a path on this machine" in err
        assert "serving_root '/gcs/b/serving': on Kubeflow Pipelines /gcs/ is each pod's" in err
        assert "preprocess_workers must be between 1 and 1000, got -2" in err
        assert "training_strategy must be one of auto, default" in err
        code, err = _bittune(capsys, "submit", "--host", kfp.url, "--param",
                             "data_source=gs://b/d", "--param", "few_shot=many")  # fmt: skip
        assert code == 2 and "few_shot" in err
        assert kfp.requests == []  # the KFP API was never called
    ledger["bad_parameters_refused"] += 5


def test_unsafe_pipeline_yaml_is_refused(tmp_path, capsys, ledger):
    evil = tmp_path / "evil.yaml"
    evil.write_text("pipelineInfo: !!python/object/apply:os.system ['touch /tmp/pwned']\n")
    code, err = _bittune(capsys, "submit", "--host", "http://127.0.0.1:9", "--pipeline",
                         str(evil), "--param", "data_source=gs://b/d")  # fmt: skip
    assert code == 2 and "is not a plain YAML pipeline file" in err
    ledger["bad_parameters_refused"] += 1


class _Artifact(types.SimpleNamespace):
    """What a component function sees of an artifact: a path, a URI and metadata."""

    def __init__(self, path: str) -> None:
        super().__init__(path=path, uri=path, metadata={})


@pytest.fixture
def component_errors(monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # the components install their own


@pytest.mark.parametrize(
    ("component", "arguments", "message"),
    [
        (plan_workers, {"preprocess_workers": 0}, "preprocess_workers must be between 1 and 1000"),
        (
            analyze_dataset,
            {"data_source": "/x", "split_fractions": "0.9,0.9,0.1"},
            "split_fractions '0.9,0.9,0.1': split fractions must add up to 1",
        ),
        (analyze_dataset, {"data_source": "/x", "max_pixels": 0}, "max_pixels must be >= 1"),
        (
            write_shards,
            {"worker_index": 3, "preprocess_workers": 2},
            "worker_index must be between 0 and 1, got 3",
        ),
        (
            gather_dataset,
            {"summaries": [], "shard_megabytes": 0},
            "shard_megabytes must be a number between",
        ),
        (train_model, {"training_strategy": "gpu-please"}, "training_strategy must be one of auto"),
        (train_model, {"model": "bit-q-r1x1"}, "unknown model 'bit-q-r1x1'"),
        (train_model, {"model": "BIT-M-R50X1"}, "did you mean BiT-M-R50x1 (.npz)"),
        (train_model, {"training_cpu": "lots"}, "'lots' is not a resource quantity"),
        (
            evaluate_model,
            {"blessing_threshold": 2.0},
            "blessing_threshold must be a number between",
        ),
        (push_model, {"model": ""}, "no model given"),
    ],
)
def test_components_check_their_parameters_first(component, arguments, message, tmp_path,
                                                 component_errors, ledger):  # fmt: skip
    signature = component.python_func.__code__.co_varnames[
        : component.python_func.__code__.co_argcount
    ]
    given = {
        name: _Artifact(str(tmp_path / name))
        for name in signature
        if name not in params.PARAMETERS and name not in arguments
    }
    given.update(worker_index=0, pipeline_run=run_id, pipeline_run_id=run_id, accelerator="cpu")
    given.update(
        {n: params.PARAMETERS[n].default_for() for n in signature if n in params.PARAMETERS}
    )
    given = {k: v for k, v in {**given, **arguments}.items() if k in signature}
    with pytest.raises(BittuneError, match=re.escape(message)):
        component.python_func(**given)
    assert list(tmp_path.iterdir()) == []  # refused before writing anything
    ledger["bad_parameters_refused"] += 1


run_id = "run-1"


@pytest.mark.parametrize("value", ["8", "500m", "24G", "30Gi", "1e3", "2.5", "+.5", "100n"])
def test_kubernetes_quantities_pass(value):
    assert params.PARAMETERS["training_memory"].problem(value) is None


@pytest.mark.parametrize("value", ["8mi", "8Gii", "8iG", "inf", "1_000", "8K", "1e", "0", "-1", ""])
def test_text_outside_the_kubernetes_quantity_grammar_is_one_line(value):
    """k8s.io/apimachinery resource.ParseQuantity would fail the training driver on these."""
    problem = params.PARAMETERS["training_cpu"].problem(value)
    assert problem == f"{value!r} is not a resource quantity like 8, 500m, 32G or 30Gi"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("training_node_selector", {"gpu": True}, "values must be text, 'gpu' is True"),
        ("training_tolerations", ["gpu"], "[0] is 'gpu', not a JSON object"),
        ("training_tolerations", [{"key": "a", "value": 1}], "[0] value must be text, got 1"),
        ("training_tolerations", [{"key": "a", "operator": "In"}], "must be Exists or Equal"),
        ("training_tolerations", [{"key": "a", "effect": "NoRun"}], "effect must be one of"),
        ("training_tolerations", [{"operator": "Equal"}], "operator Equal needs a key"),
        ("training_tolerations", [{"key": "a", "keys": "b"}], "unknown field 'keys'"),
    ],
)
def test_node_selectors_and_tolerations_the_driver_cannot_read_are_refused(name, value, message):
    """The KFP driver reads them into map[string]string / []k8score.Toleration (driver/k8s.go)."""
    problem = params.PARAMETERS[name].problem(value)
    assert problem is not None and message in problem and "\n" not in problem
    good = {"training_node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
            "training_tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                      "effect": "NoSchedule"}]}  # fmt: skip
    assert params.PARAMETERS[name].problem(good[name]) is None
