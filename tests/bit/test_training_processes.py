"""Training as separate processes: two CPU workers train together with
MultiWorkerMirroredStrategy on localhost. (A run killed mid-way: tests/reliability.)"""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.bit.test_training import TINY_RULE, small_npz  # noqa: F401  (fixture)
from tests.conftest import prepare_dataset

tf = pytest.importorskip("tensorflow")
LONGER_RULE = {**TINY_RULE, "total_steps": 12, "decay_steps": [6, 8, 10]}


@pytest.fixture(scope="module")
def longer_data(digits_folder, tmp_path_factory):
    return prepare_dataset(digits_folder, tmp_path_factory.mktemp("resume-data"), LONGER_RULE)


def train_command(root, output, model, *extra):
    return [
        sys.executable,
        "-m",
        "pipelines.cli",
        "train",
        "--data",
        str(root / "data"),
        "--hyperrule",
        str(root / "analysis" / "hyperrule.json"),
        "--model",
        model,
        "--output",
        str(output),
        "--checkpoint-every",
        "2",
        "--eval-every",
        "100",
        "--deterministic",
        *extra,
    ]


def final_weights(output):
    reader = tf.train.load_checkpoint(str(output / "checkpoints"))
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith("model/")]
    return {n: reader.get_tensor(n) for n in names}


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_cpu_workers_with_multiworker_strategy(longer_data, small_npz, tmp_path):  # noqa: F811
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    output = tmp_path / "multi"
    processes = []
    for index in range(2):
        env = {
            **os.environ,
            "TF_CONFIG": json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}
            ),
        }
        command = train_command(
            longer_data, output, small_npz, "--strategy", "multiworker", "--max-steps", "4"
        )
        processes.append(
            subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
    assert "2 replica(s)" in outputs[0][1]
    summary = json.loads((output / "training.json").read_text())
    assert summary["replicas"] == 2 and summary["steps"] == 4
    assert summary["strategy"] == "multiworker"
    assert (output / "checkpoints" / "ckpt-4.index").exists()
