"""Where training runs: an accelerator asked for but missing fails at once; Vertex AI's
CLUSTER_SPEC becomes TF_CONFIG; which replica writes the results."""

import json
import os

import pytest

from components.bit import devices, models
from components.bit.errors import BittuneError

tf = models.tf


def test_an_accelerator_asked_for_but_missing_fails_at_once(monkeypatch):
    """The device list is faked: what a GPU node without a visible driver, or a TPU VM whose
    TPU cannot be reached, looks like to TensorFlow."""
    monkeypatch.setattr(devices, "visible_devices", lambda: {"GPU": 0, "TPU": 0})
    with pytest.raises(BittuneError, match="asked for a GPU, but TensorFlow finds none"):
        devices.make_strategy("auto", accelerator="gpu")
    with pytest.raises(BittuneError, match="training_strategy mirrored needs GPUs"):
        devices.make_strategy("mirrored")

    def no_tpu():
        raise tf.errors.NotFoundError(None, None, "no TPU platform")

    monkeypatch.setattr(devices, "_tpu_strategy", no_tpu)
    with pytest.raises(BittuneError, match="asked for a TPU, but none was found"):
        devices.make_strategy("auto", accelerator="tpu")
    with pytest.raises(BittuneError, match="asked for a TPU"):
        devices.make_strategy("tpu")
    monkeypatch.setattr(devices, "visible_devices", lambda: {"GPU": 1, "TPU": 0})
    assert devices.strategy_name(devices.make_strategy("auto", accelerator="gpu")) == "default"
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("CLUSTER_SPEC", raising=False)
    with pytest.raises(BittuneError, match="training_replicas=3 needs a multi-worker cluster"):
        devices.make_strategy("auto", training_replicas=3)


def test_vertex_cluster_spec_becomes_tf_config(monkeypatch):
    spec = {
        "cluster": {"workerpool0": ["chief:2222"], "workerpool1": ["w0:2222", "w1:2222"]},
        "task": {"type": "workerpool1", "index": 1, "trial": ""},
        "environment": "cloud",
    }
    monkeypatch.setenv("CLUSTER_SPEC", json.dumps(spec))
    # set (empty), not deleted: monkeypatch then removes the TF_CONFIG the call writes, which
    # would otherwise make every later training process a worker replica
    monkeypatch.setenv("TF_CONFIG", "")
    devices.vertex_tf_config()
    config = json.loads(os.environ["TF_CONFIG"])
    assert config == {
        "cluster": {"chief": ["chief:2222"], "worker": ["w0:2222", "w1:2222"]},
        "task": {"type": "worker", "index": 1},
    }


def test_cluster_spec_wins_over_a_tf_config_that_names_a_master(monkeypatch):
    """Vertex sets both variables; the legacy AI Platform's TF_CONFIG could name the primary
    replica ``master``, which MultiWorkerMirroredStrategy refuses. CLUSTER_SPEC's worker
    pools decide, so the primary replica is the chief and writes the results."""
    spec = {
        "cluster": {"workerpool0": ["m:2222"], "workerpool1": ["w0:2222"]},
        "task": {"type": "workerpool0", "index": 0},
    }
    legacy = {"cluster": {"master": ["m:2222"], "worker": ["w0:2222"]},
              "task": {"type": "master", "index": 0}}  # fmt: skip
    monkeypatch.setenv("CLUSTER_SPEC", json.dumps(spec))
    monkeypatch.setenv("TF_CONFIG", json.dumps(legacy))
    assert devices.is_chief_replica()
    config = json.loads(os.environ["TF_CONFIG"])
    assert config == {
        "cluster": {"chief": ["m:2222"], "worker": ["w0:2222"]},
        "task": {"type": "chief", "index": 0},
    }
    assert devices.replica_role() == "chief-0"
