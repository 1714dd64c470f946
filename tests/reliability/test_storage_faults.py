"""Storage faults: fake-gcs-server behind a fault-injecting proxy on loopback. Analysis,
preprocessing, training checkpoints and the trigger all finish through dropped connections,
429/503 answers, lost replies and slow replies, give the same outputs as a clean run, and
never leave a partial object that looks complete."""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from components.bit import storage, tfrecords
from components.bit.analysis import AnalysisConfig, analyze
from components.bit.preprocess import PreprocessConfig, preprocess
from pipelines import submit
from tests.conftest import prepare_dataset, start_fake_gcs
from tests.faultproxy import FaultProxy
from tests.kfp_fake import FakeKfpServer

# A quarter of all requests meet a fault.
FAULTS = {"drop": 0.05, "error": 0.10, "drop_reply": 0.05, "slow": 0.05}
NO_FAULTS = dict.fromkeys(FAULTS, 0.0)
RULE = {"resize": 48, "crop": 40, "batch_size": 8, "micro_batch_size": 8, "base_lr": 0.01,
        "warmup_steps": 1, "decay_steps": [3, 4, 5], "total_steps": 6}  # fmt: skip


@pytest.fixture(scope="module")
def faulty(request):
    """(proxy, bucket): every gs:// request of the module goes through the proxy."""
    server = start_fake_gcs()
    proxy = FaultProxy(server.url, delay_s=0.2, seed=7).start()
    saved_host, saved_initial = os.environ.get("STORAGE_EMULATOR_HOST"), storage.RETRY_INITIAL_S
    os.environ["STORAGE_EMULATOR_HOST"] = proxy.url
    storage.RETRY_INITIAL_S = 0.05  # quick backoff: the faults are many, the time is short
    storage.gcs_client().create_bucket("reliability")
    try:
        yield proxy, "reliability"
    finally:
        storage.RETRY_INITIAL_S = saved_initial
        if saved_host is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = saved_host
        proxy.stop()
        server.stop()


class Faults:
    """Faults on for a block; counts what was injected and retried into the ledger."""

    def __init__(self, proxy: FaultProxy, ledger) -> None:
        self.proxy, self.ledger = proxy, ledger

    def __enter__(self):
        self.faults, self.retries = self.proxy.faults, storage.retry_count()
        self.proxy.reseed(7)  # the same fates for the same sequence of requests
        self.proxy.set_rates(**FAULTS)
        return self

    def __exit__(self, *exc) -> None:
        self.proxy.set_rates(**NO_FAULTS)
        self.injected = self.proxy.faults - self.faults
        self.retried = storage.retry_count() - self.retries
        self.ledger["faults_injected"] += self.injected
        self.ledger["retries_made"] += self.retried


def _large_jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8).repeat(25, 0).repeat(25, 1)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=92)
    return out.getvalue()


@pytest.fixture(scope="module")
def source(faulty, odd_folder):
    """The odd-files folder plus large photos (pre-resized by preprocessing), on gs://."""
    _, bucket = faulty
    root, _ = odd_folder
    uri = f"gs://{bucket}/source"
    for path in sorted(root.rglob("*")):
        if path.is_file():
            storage.write_bytes(f"{uri}/{path.relative_to(root).as_posix()}", path.read_bytes())
    for index in range(12):
        storage.write_bytes(f"{uri}/{('cats', 'dogs')[index % 2]}/large_{index}.jpg",
                            _large_jpeg(index))  # fmt: skip
    return uri


def _objects(prefix: str) -> dict[str, bytes]:
    return {e.relpath: storage.read_bytes(e.uri) for e in storage.list_files(prefix)}


def _analyse_and_preprocess(source: str, out: str) -> None:
    analyze(AnalysisConfig(source, hyperrule_overrides=RULE, progress=False), f"{out}/analysis")
    preprocess(
        PreprocessConfig(
            f"{out}/analysis",
            f"{out}/data",
            shard_megabytes=0.04,
            preprocess_workers=1,
            progress=False,
        )  # fmt: skip
    )


def test_analysis_and_preprocessing_match_a_clean_run(faulty, source, ledger):
    proxy, bucket = faulty
    clean, noisy = f"gs://{bucket}/clean", f"gs://{bucket}/noisy"
    _analyse_and_preprocess(source, clean)
    with Faults(proxy, ledger) as faults:
        _analyse_and_preprocess(source, noisy)
    assert faults.injected >= 5 and faults.retried >= 1

    expected, got = _objects(clean), _objects(noisy)
    assert sorted(got) == sorted(expected)  # no extra (temporary or partial) objects
    for name, data in expected.items():
        if name.endswith((".html", ".md")):
            continue  # reports show how long the run took
        assert got[name].replace(b"/noisy/", b"/clean/") == data, name

    manifest = json.loads(got["data/manifest.json"])
    shards = [s for split in manifest["splits"].values() for s in split["shards"]]
    assert len(shards) >= 3
    examples = 0
    for shard in shards:  # every shard is whole: each record's CRCs check out
        data = got[f"data/{shard['name']}"]
        examples += sum(1 for _ in tfrecords.read_frames(io.BytesIO(data)))
        assert len(data) == shard["bytes"]
    totals = manifest["totals"]
    assert examples == totals["written"]
    assert totals["inputs"] == totals["written"] + totals["rejected"]
    ledger["items_checked"] += totals["inputs"]
    ledger["items_rejected"] += totals["rejected"]
    ledger["items_lost"] += totals["inputs"] - totals["written"] - totals["rejected"]


def test_training_checkpoints_to_gcs_match_a_clean_run(faulty, digits_folder, tmp_path, ledger):
    from tests.training_helpers import TINY_RULE, final_weights

    tf = pytest.importorskip("tensorflow")
    from components.bit.training import TrainConfig, train

    proxy, bucket = faulty
    root = prepare_dataset(digits_folder, tmp_path / "set", {**TINY_RULE, "total_steps": 6,
                           "decay_steps": [3, 4, 5]})  # fmt: skip

    def run(name: str) -> dict[str, np.ndarray]:
        output = f"gs://{bucket}/training/{name}"
        train(
            TrainConfig(
                dataset_dir=str(root / "data"),
                model="bittune-tiny",
                output_dir=output,
                checkpoint_every=2,
                eval_every=100,
                deterministic=True,
            )
        )
        local = tmp_path / name
        for entry in storage.list_files(output):
            target = local / entry.relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(storage.read_bytes(entry.uri))
        assert json.loads((local / "training.json").read_text())["steps"] == 6
        assert (local / "saved_model" / "saved_model.pb").exists()
        return final_weights(local)

    clean = run("clean")
    with Faults(proxy, ledger) as faults:
        noisy = run("noisy")
    assert faults.injected > 0
    assert clean.keys() == noisy.keys() and len(clean) > 10
    for name in clean:
        np.testing.assert_array_equal(noisy[name], clean[name], err_msg=name)
    ledger["items_checked"] += len(clean)  # checkpointed variables compared
    del tf


def test_trigger_submits_exactly_once_per_change(faulty, tmp_path, ledger):
    proxy, bucket = faulty
    compiled = tmp_path / "pipeline.yaml"
    submit.compile_pipeline(str(compiled), "us-docker.pkg.dev/p/bittune")
    data, state = f"gs://{bucket}/incoming", f"gs://{bucket}/trigger/state.json"
    storage.write_bytes(f"{data}/cats/1.jpg", _large_jpeg(1))
    with FakeKfpServer() as kfp, Faults(proxy, ledger) as faults:

        def run_now(fingerprint):
            values = {"data_source": data, "data_fingerprint": fingerprint}
            return submit.submit(kfp.url, values, "ci", str(compiled))

        actions = [submit.trigger(data, state, run_now)["action"] for _ in range(3)]
        storage.write_bytes(f"{data}/cats/2.jpg", _large_jpeg(2))
        actions += [submit.trigger(data, state, run_now)["action"] for _ in range(2)]
        runs = len(kfp.runs)
    assert actions == ["submitted", "unchanged", "unchanged", "submitted", "unchanged"]
    assert runs == 2 and faults.injected > 0
    final = json.loads(storage.read_bytes(state))
    assert final["status"] == "submitted" and final["fingerprint"] == submit.fingerprint(data)
    shutil.rmtree(tmp_path, ignore_errors=True)
