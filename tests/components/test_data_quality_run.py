"""Data quality through a whole kfp.local run: fixed train/test folders (no validation split)
with copies of training photos in test; the leak reaches the report, metrics and summary."""

import json
import pathlib

from PIL import Image

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


def test_new_data_is_compared_with_the_served_model_s(tmp_path):
    photos = tmp_path / "photos"
    write_leaky_folder(photos)
    common = {"pipeline_root": str(tmp_path / "root"), "serving_root": str(tmp_path / "serving"),
              "hyperrule_overrides": json.dumps(RULE), "near_duplicates": False}  # fmt: skip
    first = run_locally(str(photos), **common)
    assert first["pushed"] and not first["drift"]  # nothing served yet: nothing to compare
    for path in sorted((photos / "train" / "china").glob("*.jpg"))[6:]:
        path.unlink()  # the balance shifts towards flower
    for split in ("train", "test"):
        (photos / split / "mixed").mkdir()
        for path in sorted((photos / split / "flower").glob("*.jpg"))[:6]:
            with Image.open(path) as image:  # a new class of new images
                image.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(
                    photos / split / "mixed" / path.name
                )
    second = run_locally(str(photos), **common, baseline_tolerance=1.0)  # blessed: a card
    assert second["drift"].startswith("drift from the served model's data: class balance (PSI")
    assert "new mixed" in second["drift"]
    assert any(line.strip() == second["drift"] for line in summary_lines(second))
    report = (pathlib.Path(second["analysis"]) / "report.md").read_text()
    assert "## Drift from the served model" in report and "| class balance | PSI" in report
    # the challenger knows one class more, so it is judged on the served model's own test data
    served = second["served_data"]
    first_test = json.loads((pathlib.Path(first["evaluation"]) / "metrics.json").read_text())
    assert (served["examples"], served["skipped"]) == (first_test["metrics"]["examples"], 0)
    assert "served model's test data: accuracy" in "\n".join(summary_lines(second))
    assert "on this data" in second["reason"]  # other classes: not compared on the new data
    page = (pathlib.Path(second["evaluation"]) / "report.html").read_text()
    assert "the served model&#x27;s test data" in page
    # paired with the served model there: the interval in the summary, report, metrics, card
    (paired,) = second["comparisons"]
    assert paired["rule"] == "served data" and paired["examples"] == served["examples"]
    assert paired["low"] <= paired["difference"] <= paired["high"]
    interval = f"95% CI [{paired['low']:+.4f}, {paired['high']:+.4f}]"
    assert any(interval in line for line in summary_lines(second)) and interval in second["reason"]
    assert f"<td>[{paired['low']:+.4f}, {paired['high']:+.4f}]</td>" in page
    task = json.loads((pathlib.Path(second["evaluation"]).parent / "executor_output.json")
                      .read_text())  # fmt: skip
    logged = task["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert logged["accuracy_difference_low_on_served_data"] == paired["low"]
    card = (pathlib.Path(second["pushed"]) / "model_card.md").read_text()
    assert "Compared with " in card and interval in card
