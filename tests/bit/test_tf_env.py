"""How bittune imports TensorFlow: oneDNN kernels unless the user says otherwise, and the
header's description of the kernels, the CPU and the cores a run can use."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from components.bit import tf_env

PROBE = (
    "import os; from components.bit import tf_env; tf_env.import_tensorflow(); "
    "print(os.environ['TF_ENABLE_ONEDNN_OPTS'], tf_env.onednn_enabled(), tf_env.cpu_kernels())"
)


@pytest.mark.parametrize(
    ("given", "setting", "enabled"), [(None, "1", "True"), ("0", "0", "False")]
)
def test_onednn_is_on_unless_the_user_turned_it_off(given, setting, enabled):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if given is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = given
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    value, on, kernels = done.stdout.strip().split(" ", 2)
    assert (value, on) == (setting, enabled)  # TensorFlow's own IsMklEnabled agrees
    assert kernels.startswith(f"oneDNN {'on' if enabled == 'True' else 'off'}, ")


def test_the_cpu_is_named_with_the_flags_that_pick_kernels():
    described = tf_env.cpu_model()
    flags = described.rsplit("(", 1)[1].rstrip(")").split()
    assert set(flags) <= set(tf_env.VECTOR_FLAGS) or flags == ["no", "AVX2"]
    with open("/proc/cpuinfo") as info:
        present = set(next(line for line in info if line.startswith("flags")).split(":")[1].split())
    assert [f for f in tf_env.VECTOR_FLAGS if f in present] == [f for f in flags if f != "no"]


def test_usable_cpus_follow_the_affinity_mask():
    assert 1 <= tf_env.usable_cpus() <= len(os.sched_getaffinity(0))
    done = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c",
         "from components.bit import tf_env; print(tf_env.usable_cpus())"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
