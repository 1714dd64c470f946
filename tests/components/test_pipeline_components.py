"""The components, run for real through kfp.local inside the pipeline."""

import json
import pathlib

import pytest

from components.bit import serving, tfrecords
from components.bit.errors import BittuneError
from pipelines.local_run import run_locally
from tests.training_helpers import TINY_RULE


@pytest.fixture(scope="module")
def odd_run(odd_folder, tmp_path_factory):
    root, expected = odd_folder
    outputs = run_locally(
        str(root),
        pipeline_root=str(tmp_path_factory.mktemp("root")),
        preprocess_workers=3,
        hyperrule_overrides=json.dumps(TINY_RULE),
        checkpoint_every=2,
        serving_root=str(tmp_path_factory.mktemp("serving")),
        export_formats="onnx",  # made and pushed only if the gate blesses the model
    )
    return outputs, expected


def test_analysis_component_outputs(odd_run):
    outputs, expected = odd_run
    analysis = pathlib.Path(outputs["analysis"])
    stats = json.loads((analysis / "stats.json").read_text())
    assert stats["totals"]["flagged"] == sum(1 for v in expected.values() if v)
    task = analysis.parent
    assert outputs["report_html"] == str(analysis / "report.html")
    assert (task / "report").read_text().startswith("# Dataset analysis")  # Markdown artifact
    assert "<img" in (task / "report_html").read_text()  # HTML artifact
    executor_output = json.loads((task / "executor_output.json").read_text())
    metadata = executor_output["artifacts"]["analysis"]["artifacts"][0]["metadata"]
    assert metadata["valid"] == stats["totals"]["valid"] and metadata["resize"] == 32


def test_preprocess_fan_out_and_gather(odd_run):
    outputs, expected = odd_run
    manifest = json.loads((pathlib.Path(outputs["dataset"]) / "manifest.json").read_text())
    assert manifest["totals"] == {"inputs": len(expected), "written": 16, "rejected": 9}
    names = {s["name"] for e in manifest["splits"].values() for s in e["shards"]}
    assert all("/" not in name for name in names)  # by name, relative to the dataset
    # each worker wrote its shards into its own artifacts; the manifest names no path
    run = pathlib.Path(outputs["run"])
    found = {p.name: p for p in run.glob("for-loop-*/write-shards/*_shards/*.tfrecord")}
    assert set(found) == names
    assert len({p.parents[2] for p in found.values()}) >= 2  # several ParallelFor workers
    written = sum(len(list(tfrecords.read_records(str(found[name])))) for name in names)
    assert written == 16
    hyperrule = json.loads((pathlib.Path(outputs["analysis"]) / "hyperrule.json").read_text())
    assert outputs["examples"] == hyperrule["examples"] == manifest["splits"]["train"]["examples"]


def test_missing_data_is_reported_before_the_pipeline_starts(tmp_path):
    with pytest.raises(BittuneError, match="data folder not found"):
        run_locally(str(tmp_path / "missing"), pipeline_root=str(tmp_path / "root"))
    assert not list((tmp_path / "root").glob("bit-finetune-*"))


def test_pipeline_failure_is_one_clear_error(tmp_path):
    (tmp_path / "data" / "only").mkdir(parents=True)
    (tmp_path / "data" / "only" / "x.txt").write_text("not an image")
    with pytest.raises(BittuneError, match="^no images found in folder .*analyze-dataset") as info:
        run_locally(str(tmp_path / "data"), pipeline_root=str(tmp_path / "root"))
    assert "\n" not in str(info.value)  # the failed step's own reason, on one line


def test_train_component_exports_a_model(odd_run, odd_folder):
    outputs, _ = odd_run
    model = pathlib.Path(outputs["model"])
    summary = json.loads((model / "training.json").read_text())
    assert summary["finished"] and summary["steps"] == TINY_RULE["total_steps"]
    assert (model / "saved_model" / "saved_model.pb").exists()
    assert not (model / "checkpoints").exists()  # in their own artifact, not the model's
    assert (model.parent / "checkpoints" / "checkpoint").exists()
    assert list((model.parent / "logs" / "train").glob("events.out.tfevents.*"))
    root, _ = odd_folder
    (result,) = serving.predict(str(model), [str(root / "cats" / "cmyk.jpg")])
    assert {name for name, _ in result.top_k} == {"birds", "cats", "dogs"}


def test_evaluate_component_gates_and_pushes(odd_run):
    outputs, _ = odd_run
    task = pathlib.Path(outputs["evaluation"]).parent
    executor = json.loads((task / "executor_output.json").read_text())
    metrics = executor["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    stats = json.loads((pathlib.Path(outputs["analysis"]) / "stats.json").read_text())
    held_out = stats["examples"]["test"]["total"]  # one or two of each class: stratified
    assert metrics["examples"] == held_out >= 2 and metrics["accuracy"] == outputs["test_accuracy"]
    confusion = executor["artifacts"]["confusion"]["artifacts"][0]["metadata"]["confusionMatrix"]
    assert [a["displayName"] for a in confusion["annotationSpecs"]] == ["birds", "cats", "dogs"]
    assert "<h2>Per class</h2>" in (task / "report").read_text()  # the HTML artifact
    assert outputs["evaluation_report"].endswith("report.html")
    result = json.loads((pathlib.Path(outputs["evaluation"]) / "metrics.json").read_text())
    assert outputs["blessed"] == all(rule["passed"] for rule in result["rules"])
    if outputs["blessed"]:  # pushed, with a card
        assert outputs["pushed"].endswith("/1")
        card = json.loads((pathlib.Path(outputs["pushed"]) / "model_card.json").read_text())
        assert card["lineage"]["pipeline_run"].startswith("bit-finetune")
        assert card["metrics"]["accuracy"] == outputs["test_accuracy"]
        version = pathlib.Path(outputs["pushed"])
        assert (version / "assets.extra" / "tf_serving_warmup_requests").stat().st_size > 0
        (onnx,) = card["exports"]  # two test images: a float export agrees on both
        assert onnx["agreement"] == 1.0 and (version / "exports" / "model.onnx").exists()
    else:
        assert outputs["pushed"] is None


def test_a_model_below_the_threshold_is_not_pushed(odd_folder, tmp_path):
    root, _ = odd_folder
    serving = tmp_path / "serving"
    outputs = run_locally(
        str(root),
        pipeline_root=str(tmp_path / "root"),
        hyperrule_overrides=json.dumps(
            {**TINY_RULE, "total_steps": 2, "warmup_steps": 1, "decay_steps": []}
        ),
        serving_root=str(serving),
        blessing_threshold=1.0,
    )
    assert outputs["blessed"] is False and outputs["pushed"] is None
    assert "below the threshold" in outputs["reason"] or "majority" in outputs["reason"]
    assert not serving.exists()
