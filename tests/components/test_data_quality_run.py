"""Data quality through a whole kfp.local run: fixed train/test folders (no validation split)
with copies of training photos in test; the leak reaches the report, metrics and summary."""

import json
import pathlib

from pipelines.local_run import run_locally, summary_lines
from tests.imagegen import write_leaky_folder

RULE = {"resize": 32, "crop": 28, "batch_size": 8, "micro_batch_size": 8, "total_steps": 5,
        "warmup_steps": 1, "decay_steps": [2, 3, 4]}  # fmt: skip


def test_a_leaky_dataset_runs_and_reports_accuracy_without_the_leak(tmp_path):
    copies = write_leaky_folder(tmp_path / "photos")
    outputs = run_locally(
        str(tmp_path / "photos"),
        pipeline_root=str(tmp_path / "root"),
        hyperrule_overrides=json.dumps(RULE),
        serving_root=str(tmp_path / "serving"),
    )
    stats = json.loads((pathlib.Path(outputs["analysis"]) / "stats.json").read_text())
    leaked = stats["near_duplicates"]["leaked"]["test"]
    assert copies - 2 <= leaked <= copies  # a flat tile's copy may differ by more bits
    without = outputs["without_leaked"]
    assert without["leaked"] == leaked and without["examples"] == 12 + copies - leaked
    lines = summary_lines(outputs)
    assert any(f"without its {leaked} examples that have a near-duplicate" in x for x in lines)
    evaluation = pathlib.Path(outputs["evaluation"])
    task = json.loads((evaluation.parent / "executor_output.json").read_text())
    logged = task["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert logged["leaked_examples"] == leaked and "accuracy_without_leaked" in logged
    assert "label_issues" in logged
    assert (evaluation / "label_issues.json").exists()
    training = json.loads((pathlib.Path(outputs["run"]) / "train-model" / "executor_output.json")
                          .read_text())  # fmt: skip
    assert training["parameterValues"]["Output"] == -1.0  # no validation split, not NaN
