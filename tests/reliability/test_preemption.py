"""Preemption: preprocessing and training killed with SIGKILL mid-way, then run again.
Preprocessing leaves nothing that looks complete and reruns to byte-identical output; training
resumes from its latest checkpoint and ends with the uninterrupted run's weights."""

from __future__ import annotations

import io
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from components.bit import tfrecords
from tests.training_helpers import final_weights, train_command


def _bittune(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", *args]


def _kill_when(command: list[str], ready, timeout_s: float = 300) -> None:
    """Start ``command``; SIGKILL it as soon as ``ready()`` holds (it must still be running)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"it ended before the kill: {process.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, "timed out waiting to kill"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> pathlib.Path:
    """360 large photos in 3 classes: pre-resizing makes preprocessing take a few seconds."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(5)
    for index in range(360):
        folder = root / ("apples", "pears", "plums")[index % 3]
        folder.mkdir(exist_ok=True)
        blocks = rng.integers(0, 256, size=(15, 20, 3), dtype=np.uint8)
        Image.fromarray(blocks.repeat(40, 0).repeat(40, 1)).save(
            folder / f"{index}.jpg", quality=90
        )
    return root


def _tree(folder: pathlib.Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes().replace(str(folder).encode(), b"OUT")
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_killed_preprocessing_reruns_to_identical_shards(photos, tmp_path, ledger):
    analysis = tmp_path / "analysis"
    overrides = ["--resize", "64", "--crop", "56"]
    done = subprocess.run(
        _bittune("analyze", str(photos), "--output", str(analysis), *overrides),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr

    def preprocess(output: pathlib.Path) -> list[str]:
        return _bittune("preprocess", str(photos), "--analysis", str(analysis), "--output",
                        str(output), "--preprocess-workers", "1",
                        "--shard-megabytes", "0.03")  # fmt: skip

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert subprocess.run(preprocess(whole), capture_output=True).returncode == 0

    def two_shards_done() -> bool:
        return len(list(killed.rglob("*.tfrecord"))) >= 2

    _kill_when(preprocess(killed), two_shards_done)
    ledger["processes_killed"] += 1
    assert not (killed / "manifest.json").exists()  # it really stopped mid-way
    visible = list(killed.rglob("*.tfrecord"))
    for shard in visible:  # whatever carries a final name is complete: every CRC checks out
        with open(shard, "rb") as f:
            assert sum(1 for _ in tfrecords.read_frames(f)) > 0

    rerun = subprocess.run(preprocess(killed), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    expected, got = _tree(whole), _tree(killed)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name] == expected[name], name
    totals = json.loads((killed / "manifest.json").read_text())["totals"]
    assert totals == {"inputs": 360, "written": 360, "rejected": 0}
    ledger["items_checked"] += totals["inputs"]
    ledger["items_lost"] += totals["inputs"] - totals["written"] - totals["rejected"]
    examples = sum(
        sum(1 for _ in tfrecords.read_frames(io.BytesIO(data)))
        for name, data in got.items()
        if name.endswith(".tfrecord")
    )
    assert examples == 360


def test_killed_training_resumes_to_the_uninterrupted_result(
    longer_data,  # noqa: F811
    small_npz,  # noqa: F811
    tmp_path,
    ledger,
):
    whole = tmp_path / "whole"
    done = subprocess.run(
        train_command(longer_data, whole, small_npz), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]

    killed = tmp_path / "killed"
    _kill_when(
        train_command(longer_data, killed, small_npz),
        lambda: (killed / "checkpoints" / "ckpt-4.index").exists(),
    )
    ledger["processes_killed"] += 1
    assert not (killed / "saved_model").exists()  # it really stopped before the end
    resumed = subprocess.run(
        train_command(longer_data, killed, small_npz), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "steps 0->" not in resumed.stderr  # it resumed, not restarted
    a, b = final_weights(whole), final_weights(killed)
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-7, err_msg=name)
    assert json.loads((killed / "training.json").read_text())["steps"] == 12
    ledger["items_checked"] += len(a)


def test_ctrl_c_keeps_finished_shards_and_says_so(photos, tmp_path):
    analysis = tmp_path / "analysis"
    done = subprocess.run(
        _bittune("analyze", str(photos), "--output", str(analysis), "--resize", "64",
                 "--crop", "56"), capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    command = _bittune("preprocess", str(photos), "--analysis", str(analysis), "--output",
                       str(out), "--shard-megabytes", "0.03")  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(out.glob("_shards/*.json")):  # a shard is done: interrupt, as Ctrl-C does
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err, err[-3000:]
    kept = re.search(r"interrupted; (\d+) of (\d+) shards kept", err)
    assert kept and 0 < int(kept[1]) < int(kept[2]), err[-3000:]
    assert not (out / "manifest.json").exists()
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = re.search(r"resuming: (\d+) of (\d+) shards already done", again.stderr)
    assert resumed and int(resumed[1]) >= int(kept[1]) and resumed[2] == kept[2]
