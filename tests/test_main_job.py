"""The README's main job: `bittune run` on the embedded default, read as a person reads it."""

import io
import pathlib
import re
import subprocess
import sys

import pytest

from pipelines.local_run import StepConsole

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_main_job_is_short_plain_and_keeps_every_step_log(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "--output", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=1200, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = (done.stdout + done.stderr).splitlines()
    assert len(lines) <= 60, "\n".join(lines)
    assert "\x1b" not in done.stdout + done.stderr  # piped: no colour codes
    assert not [line for line in lines if "cuInit" in line or "oneDNN" in line]
    text = "\n".join(lines)
    for step in ("analyze-dataset", "write-shards", "gather-dataset", "train-model",
                 "evaluate-model", "push-model"):  # fmt: skip
        assert re.search(rf"{step} +done in [\d.]+ s", text), step
    assert re.search(r"train-model +step 300/300 ", text)  # training progress
    accuracy = float(re.search(r"test accuracy (\d\.\d+) — BLESSED", text)[1])
    assert accuracy >= 0.95
    logs = pathlib.Path(re.search(r"step logs: +(\S+)", text)[1])
    step_logs = sorted(p.name for p in logs.glob("*.log"))
    assert any("train-model" in name for name in step_logs)
    train_log = next(logs.glob("*train-model.log")).read_text()
    assert "step 10/300" in train_log and "executor_input" in train_log  # everything is kept
    assert (tmp_path / "runs" / "serving" / "1" / "saved_model.pb").exists()


def test_the_console_shows_steps_and_keeps_their_logs(tmp_path):
    out = io.StringIO()
    console = StepConsole(out, str(tmp_path / "logs"))
    console.write("12:00:00 - INFO - Executing task \x1b[96m'analyze-dataset'\x1b[0m\n")
    console.write("    E0000 00:00:1.0 1 cuda_platform.cc:52] failed call to cuInit: x\n")
    console.write("    lots of executor input\n    result: 9 images analysed\n")
    console.write("12:00:01 - INFO - Task 'analyze-dataset' finished with status SUCCESS\n")
    console.write("12:00:02 - INFO - Executing task 'train-model'\n")
    console.write("    step 300/300 loss 0.1 acc 1.000 lr 2e-05 100 img/s ETA 0m00s\n")
    console.write("    bittune: error: out of memory at micro-batch 8\n")
    console.write("Task 'train-model' finished with status FAILURE\n")
    console.close()
    shown = out.getvalue().splitlines()
    assert len(shown) == 5 and "\x1b" not in out.getvalue()
    assert "analyze-dataset" in shown[0] and shown[0].endswith("started")
    assert shown[1].endswith(": 9 images analysed")
    assert "step 300/300" in shown[3] and "FAILED after" in shown[4]
    assert console.error == "out of memory at micro-batch 8"
    log = (tmp_path / "logs" / "01-analyze-dataset.log").read_text()
    assert "cuInit" in log and "lots of executor input" in log  # the file keeps everything
    assert console.failed_log.endswith("02-train-model.log")
    verbose = io.StringIO()
    console = StepConsole(verbose, str(tmp_path / "more"), verbose=True)
    console.write(
        "    lots of executor input\n    E0000 00:00:1.0 1 x.cc:1] failed call to cuInit\n"
    )
    console.close()
    assert "lots of executor input" in verbose.getvalue()
    assert "cuInit" not in verbose.getvalue()  # start-up noise stays out even then
