"""Training as separate processes: two CPU workers train together with
MultiWorkerMirroredStrategy on localhost. (A run killed mid-way: tests/reliability.)"""

import json
import os
import socket
import subprocess

import pytest

from tests.training_helpers import train_command

tf = pytest.importorskip("tensorflow")


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _train_together(environments, output, longer_data, small_npz):  # noqa: F811
    """Start one training process per environment (with ``{ports}`` filled in by free ports);
    return their (returncode, stderr). On a loaded machine a worker can miss the other's
    start-up window: one failed attempt is retried with fresh ports and a fresh output."""
    failures = []
    for attempt in range(2):
        ports = _free_ports(len(environments))
        processes = []
        for make_env in environments:
            env = {**os.environ, **make_env(ports)}
            command = train_command(
                longer_data, output / str(attempt), small_npz, "--training-strategy", "multiworker",
                "--max-steps", "4",
            )  # fmt: skip
            processes.append(
                subprocess.Popen(
                    command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
            )
        try:
            results = [p.communicate(timeout=900) for p in processes]
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            results = [p.communicate() for p in processes]
        codes = [p.returncode for p in processes]
        if all(code == 0 for code in codes):
            return output / str(attempt), [err for _, err in results]
        failures.append("\n".join(err[-2000:] for _, err in results))
    pytest.fail("two workers did not train together twice:\n" + "\n---\n".join(failures))


def test_two_cpu_workers_with_multiworker_strategy(longer_data, small_npz, tmp_path):  # noqa: F811
    def worker(index):
        def env(ports):
            cluster = {"worker": [f"localhost:{p}" for p in ports]}
            task = {"type": "worker", "index": index}
            return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": task})}

        return env

    output, errors = _train_together([worker(0), worker(1)], tmp_path, longer_data, small_npz)
    assert "2 replica(s)" in errors[0]
    summary = json.loads((output / "training.json").read_text())
    assert summary["replicas"] == 2 and summary["steps"] == 4
    assert summary["strategy"] == "multiworker"
    assert (output / "checkpoints" / "ckpt-4.index").exists()


def test_workers_train_together_from_vertex_cluster_spec(longer_data, small_npz, tmp_path):  # noqa: F811
    """What Vertex AI gives each replica of a CustomJob: CLUSTER_SPEC (pool 0: the chief, pool
    1: the workers), no TF_CONFIG."""

    def replica(pool, index):
        def env(ports):
            cluster = {
                "workerpool0": [f"localhost:{ports[0]}"],
                "workerpool1": [f"localhost:{ports[1]}"],
            }
            task = {"type": pool, "index": index, "trial": ""}
            spec = {"cluster": cluster, "environment": "cloud", "task": task, "job": {}}
            return {"CLUSTER_SPEC": json.dumps(spec), "TF_CONFIG": ""}

        return env

    envs = [replica("workerpool0", 0), replica("workerpool1", 0)]
    output, errors = _train_together(envs, tmp_path, longer_data, small_npz)
    assert "2 replica(s)" in errors[0]
    summary = json.loads((output / "training.json").read_text())  # the chief wrote it
    assert summary["replicas"] == 2 and summary["strategy"] == "multiworker"
