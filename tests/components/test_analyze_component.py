"""The analyze component, run for real through kfp.local inside the pipeline."""

import json
import pathlib

import pytest

from components.bit.errors import BittuneError
from pipelines.local_run import run_locally


def test_pipeline_runs_analysis_locally(odd_folder, tmp_path):
    root, expected = odd_folder
    outputs = run_locally(str(root), pipeline_root=str(tmp_path))
    analysis = pathlib.Path(outputs["analysis"])
    stats = json.loads((analysis / "stats.json").read_text())
    assert stats["totals"]["flagged"] == sum(1 for v in expected.values() if v)
    rule = json.loads((analysis / "hyperrule.json").read_text())
    assert outputs["examples"] == rule["examples"] == stats["examples"]["train"]["total"]
    task = analysis.parent
    assert (task / "report").read_text().startswith("# Dataset analysis")  # Markdown artifact
    assert "<img" in (task / "report_html").read_text()  # HTML artifact
    executor_output = json.loads((task / "executor_output.json").read_text())
    metadata = executor_output["artifacts"]["analysis"]["artifacts"][0]["metadata"]
    assert metadata["valid"] == stats["totals"]["valid"] and metadata["resize"] == 160


def test_missing_data_is_reported_before_the_pipeline_starts(tmp_path):
    with pytest.raises(BittuneError, match="data folder not found"):
        run_locally(str(tmp_path / "missing"), pipeline_root=str(tmp_path / "root"))
    assert not list((tmp_path / "root").glob("bit-finetune-*"))


def test_pipeline_failure_is_one_clear_error(tmp_path):
    (tmp_path / "data" / "only").mkdir(parents=True)
    (tmp_path / "data" / "only" / "x.txt").write_text("not an image")
    with pytest.raises(BittuneError, match="pipeline failed") as info:
        run_locally(str(tmp_path / "data"), pipeline_root=str(tmp_path / "root"))
    assert "\n" not in str(info.value)
