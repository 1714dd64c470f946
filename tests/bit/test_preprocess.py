"""Preprocessing into TFRecords: schema, accounting, determinism, pre-resizing, safety, gs://."""

import hashlib
import io
import json
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from components.bit import preprocess as pp
from components.bit import tfrecords
from components.bit.analysis import AnalysisConfig, analyze
from components.bit.dataset import DatasetError
from components.bit.preprocess import PreprocessConfig, PreprocessError


def analysed(source, out, **kwargs):
    analyze(AnalysisConfig(str(source), progress=False, **kwargs), str(out))
    return str(out)


def records(dataset_dir):
    manifest = json.loads((pathlib.Path(dataset_dir) / "manifest.json").read_text())
    out = {}
    for split, entry in manifest["splits"].items():
        paths = [pathlib.Path(dataset_dir) / s["name"] for s in entry["shards"]]
        out[split] = [r for path in paths for r in tfrecords.read_records(str(path))]
    return manifest, out


def preprocess(config):
    """The manifest as the JSON it is written as."""
    return pp.preprocess(config).to_dict()


def file_digests(folder):
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in pathlib.Path(folder).glob("*.tfrecord")
    }


@pytest.fixture(scope="module")
def digits_dataset(digits_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("digits-pp")
    analysis = analysed(digits_folder, root / "analysis")
    config = PreprocessConfig(analysis, str(root / "data"), preprocess_workers=2, progress=False)
    return config, preprocess(config)


def test_digits_records_read_back_with_tensorflow(digits_dataset):
    tf = pytest.importorskip("tensorflow")
    config, manifest = digits_dataset
    labels = json.loads((pathlib.Path(config.output_dir) / "labels.json").read_text())
    assert labels["labels"] == [str(d) for d in range(10)]
    spec = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/format": tf.io.FixedLenFeature([], tf.string),
        "image/height": tf.io.FixedLenFeature([], tf.int64),
        "image/width": tf.io.FixedLenFeature([], tf.int64),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "label/name": tf.io.FixedLenFeature([], tf.string),
        "source/uri": tf.io.FixedLenFeature([], tf.string),
        "source/sha256": tf.io.FixedLenFeature([], tf.string),
    }
    total = 0
    for entry in manifest["splits"].values():
        paths = [str(pathlib.Path(config.output_dir) / s["name"]) for s in entry["shards"]]
        per_class = {}
        for raw in tf.data.TFRecordDataset(paths):
            ex = tf.io.parse_single_example(raw, spec)
            image = tf.io.decode_image(ex["image/encoded"], channels=3)
            assert image.shape == (ex["image/height"], ex["image/width"], 3) == (8, 8, 3)
            name = ex["label/name"].numpy().decode()
            assert labels["labels"][int(ex["label"])] == name
            source = ex["source/uri"].numpy().decode()
            assert (
                hashlib.sha256(pathlib.Path(source).read_bytes()).hexdigest()
                == ex["source/sha256"].numpy().decode()
            )
            per_class[name] = per_class.get(name, 0) + 1
            total += 1
        assert per_class == entry["per_class"]
    assert total == manifest["totals"]["written"] == 1797
    assert manifest["totals"]["rejected"] == 0


def test_same_inputs_give_identical_shards_whatever_the_worker_count(digits_dataset, tmp_path):
    config, manifest = digits_dataset
    for index in range(3):  # three workers, one process each, into one folder
        worker = PreprocessConfig(
            config.analysis_dir, str(tmp_path), preprocess_workers=1, progress=False
        )
        pp.write_shards(worker, index, 3)
    again = pp.gather(PreprocessConfig(config.analysis_dir, str(tmp_path))).to_dict()
    assert file_digests(tmp_path) == file_digests(config.output_dir)
    assert again["splits"]["train"]["per_class"] == manifest["splits"]["train"]["per_class"]
    assert [s["sha256"] for s in again["splits"]["train"]["shards"]] == [
        s["sha256"] for s in manifest["splits"]["train"]["shards"]
    ]


def test_odd_folder_accounting_and_rgb_or_gray_output(odd_folder, tmp_path):
    root, expected = odd_folder
    analysis = analysed(root, tmp_path / "analysis")
    manifest = preprocess(PreprocessConfig(analysis, str(tmp_path / "data"), progress=False))
    _, by_split = records(tmp_path / "data")
    written = {r.source_uri for rs in by_split.values() for r in rs}
    rejects = json.loads((tmp_path / "data" / "rejects.json").read_text())
    valid = {str(root / p) for p, flag in expected.items() if flag is None}
    assert written == valid  # every valid item written, nothing else
    assert {r["key"] for r in rejects} == {p for p, flag in expected.items() if flag}
    assert manifest["totals"] == {"inputs": 25, "written": 16, "rejected": 9}
    sources = {r.source_uri: Image.open(r.source_uri) for rs in by_split.values() for r in rs}
    for rs in by_split.values():
        for record in rs:
            image = Image.open(io.BytesIO(record.image))
            assert image.format.lower() == record.format
            assert (image.height, image.width) == (record.height, record.width)
            gray = sources[record.source_uri].mode in ("L", "LA", "1", "I;16", "I")
            assert image.mode == ("L" if gray else "RGB")  # gray stays one channel
    by_uri = {r.source_uri: r for rs in by_split.values() for r in rs}
    exif = by_uri[str(root / "dogs/exif rotated.jpg")]
    assert (exif.height, exif.width) == (60, 20)  # orientation applied


def test_alpha_palette_and_16_bit_become_8_bit_rgb_or_gray(tmp_path):
    data = tmp_path / "src"
    (data / "a").mkdir(parents=True)
    (data / "b").mkdir()
    Image.new("RGBA", (10, 10), (255, 0, 0, 0)).save(data / "a" / "clear.png")
    Image.fromarray(np.full((6, 6), 65535, np.uint16)).save(data / "a" / "white16.png")
    Image.new("LA", (6, 6), (0, 0)).save(data / "a" / "clear-gray.png")
    Image.new("L", (9, 9), 77).save(data / "b" / "gray.png")
    palette = Image.new("P", (5, 5), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.save(data / "b" / "palette.png", transparency=0)
    Image.new("CMYK", (7, 7), (0, 255, 255, 0)).save(data / "b" / "cmyk.jpg", quality=100)
    analysis = analysed(data, tmp_path / "analysis", split_fractions=(1.0, 0.0, 0.0))
    preprocess(PreprocessConfig(analysis, str(tmp_path / "out"), progress=False))
    _, by_split = records(tmp_path / "out")
    pixels = {
        os.path.basename(r.source_uri): np.asarray(Image.open(io.BytesIO(r.image)))[0, 0].tolist()
        for r in by_split["train"]
    }
    assert pixels["clear.png"] == [255, 255, 255]  # transparent -> the white background
    assert pixels["white16.png"] == 255  # 16-bit gray scaled to 8-bit gray
    assert pixels["clear-gray.png"] == 255  # transparent gray -> the background's gray
    assert pixels["gray.png"] == 77  # 8-bit gray kept as it is
    assert pixels["palette.png"] == [0, 255, 0]
    red, green, blue = pixels["cmyk.jpg"]
    assert red > 200 and green < 60 and blue < 60


def test_pre_resizing_to_the_rule_and_small_jpegs_byte_for_byte(tmp_path):
    from benchmarks.synthetic import write_large_jpegs

    write_large_jpegs(str(tmp_path / "src"), 4, size=(900, 1200))
    small = tmp_path / "src" / "a" / "small.jpg"
    Image.new("RGB", (300, 200), (10, 20, 30)).save(small, quality=90)
    analysis = analysed(tmp_path / "src", tmp_path / "analysis", split_fractions=(1.0, 0, 0))
    manifest = preprocess(PreprocessConfig(analysis, str(tmp_path / "out"), progress=False))
    _, by_split = records(tmp_path / "out")
    for record in by_split["train"]:
        if record.source_uri == str(small):
            assert record.image == small.read_bytes()
        else:
            assert (record.height, record.width) == (512, 512) and record.format == "jpeg"
    assert manifest["preresize"]["actions"] == {"kept": 1, "resized": 4}
    assert manifest["preresize"]["bytes_saved"] > 0


def test_few_shot_is_deterministic_and_accounted(digits_folder, tmp_path):
    analysis = analysed(digits_folder, tmp_path / "analysis", few_shot=5)
    assert json.loads((tmp_path / "analysis" / "hyperrule.json").read_text())["examples"] == 50
    chosen = []
    for seed in (0, 0, 1):
        out = tmp_path / f"out-{len(chosen)}"
        manifest = preprocess(PreprocessConfig(analysis, str(out), seed=seed, progress=False))
        assert manifest["splits"]["train"]["per_class"] == {str(d): 5 for d in range(10)}
        _, by_split = records(out)
        chosen.append(sorted(r.source_uri for r in by_split["train"]))
        rejects = json.loads((out / "rejects.json").read_text())
        assert all("few-shot" in r["reason"] for r in rejects)
        assert manifest["totals"]["inputs"] == 1797 == manifest["totals"]["written"] + len(rejects)
    assert chosen[0] == chosen[1] and chosen[0] != chosen[2]
    with pytest.raises(PreprocessError, match="few-shot k=10 differs from the analysis"):
        preprocess(PreprocessConfig(analysis, str(tmp_path / "x"), few_shot=10))


def test_broken_body_and_changed_files_are_rejected_not_lost(tmp_path):
    data = tmp_path / "src"
    for label in "ab":
        (data / label).mkdir(parents=True)
        for i in range(3):
            rng = np.random.default_rng(ord(label) * 10 + i)
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                data / label / f"{i}.png"
            )
    analysis = analysed(data, tmp_path / "analysis", split_fractions=(1.0, 0, 0))
    broken = bytearray((data / "a" / "0.png").read_bytes())
    start = broken.index(b"IDAT") + 50
    broken[start : start + 10] = b"\x00" * 10
    (data / "a" / "0.png").write_bytes(bytes(broken))  # header intact, body broken
    Image.new("RGB", (40, 40), (1, 2, 3)).save(data / "b" / "1.png")  # changed since analysis
    manifest = preprocess(PreprocessConfig(analysis, str(tmp_path / "out"), progress=False))
    reasons = {
        r["key"]: r["reason"] for r in json.loads((tmp_path / "out/rejects.json").read_text())
    }
    assert reasons["b/1.png"].startswith("changed since analysis")
    assert manifest["totals"] == {"inputs": 6, "written": 4, "rejected": 2}
    assert set(reasons) == {"a/0.png", "b/1.png"}


def test_a_crash_leaves_nothing_that_looks_complete(digits_folder, tmp_path, monkeypatch):
    analysis = analysed(digits_folder, tmp_path / "analysis")
    out = tmp_path / "out"
    config = PreprocessConfig(
        analysis, str(out), preprocess_workers=1, shard_megabytes=0.02, progress=False
    )
    real_frame, calls = tfrecords.frame, []

    def failing_frame(payload):
        calls.append(1)
        if len(calls) == 500:
            raise KeyboardInterrupt("simulated crash")
        return real_frame(payload)

    monkeypatch.setattr(tfrecords, "frame", failing_frame)
    with pytest.raises(KeyboardInterrupt):
        preprocess(config)
    monkeypatch.setattr(tfrecords, "frame", real_frame)
    assert not (out / "manifest.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    finished = file_digests(out)
    summaries = {p.name for p in (out / "_shards").iterdir()}
    assert finished and summaries == {f"{name}.json" for name in finished}
    with pytest.raises(PreprocessError, match="is missing: a worker did not finish"):
        pp.gather(config)
    preprocess(config)  # resumes: finished shards are kept, the rest written
    reference = tmp_path / "reference"
    preprocess(PreprocessConfig(analysis, str(reference), shard_megabytes=0.02, progress=False))
    assert file_digests(out) == file_digests(reference)
    assert all(file_digests(out)[name] == digest for name, digest in finished.items())


def test_accounting_check_fails_loudly(digits_dataset):
    config, manifest = digits_dataset
    plan = pp.load_plan(config)
    splits = json.loads(json.dumps(manifest["splits"]))
    splits["train"]["per_class"]["3"] -= 1
    with pytest.raises(PreprocessError, match=r"items lost or invented.*'train/3': 1"):
        pp.check_accounting(plan, splits, [])


def test_gcs_to_gcs(gcs, odd_folder):
    root, expected = odd_folder
    bucket = gcs.new_bucket()
    gcs.upload_tree(root, f"gs://{bucket}/src")
    analyze(AnalysisConfig(f"gs://{bucket}/src", progress=False), f"gs://{bucket}/analysis")
    config = PreprocessConfig(f"gs://{bucket}/analysis", f"gs://{bucket}/data", progress=False)
    manifest = preprocess(config)
    assert manifest["totals"] == {"inputs": 25, "written": 16, "rejected": 9}
    names = gcs.names(bucket, "data/")
    assert {"data/manifest.json", "data/labels.json", "data/rejects.json"} <= set(names)
    shards = [
        f"gs://{bucket}/data/{s['name']}" for e in manifest["splits"].values() for s in e["shards"]
    ]
    assert all(f"data/{uri.rsplit('/', 1)[1]}" in names for uri in shards)
    from components.bit import storage

    count = sum(
        len(list(tfrecords.read_frames(io.BytesIO(storage.read_bytes(uri))))) for uri in shards
    )
    assert count == 16


def test_local_to_gcs(gcs, odd_folder, tmp_path):
    root, _ = odd_folder
    bucket = gcs.new_bucket()
    analysis = analysed(root, tmp_path / "analysis")
    manifest = preprocess(PreprocessConfig(analysis, f"gs://{bucket}/data", progress=False))
    assert manifest["totals"]["written"] == 16
    assert "data/manifest.json" in gcs.names(bucket, "data/")


def test_missing_analysis_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="not an analysis folder: no stats.json"):
        preprocess(PreprocessConfig(str(tmp_path / "none"), str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_many_small_images_make_many_balanced_shards():
    """Fashion-MNIST's shape: 60,000 training images of 28x28 (about 1.3 KB each), which by
    size alone would fit one shard."""
    from components.bit import hyperrule

    rows = [
        {"key": f"train/{i}.png", "uri": f"/d/train/{i}.png", "label": str(i % 10),
         "split": "train", "code": None, "reason": None, "height": 28, "width": 28,
         "size_bytes": 1300}
        for i in range(60_000)
    ]  # fmt: skip
    stats = {"classes": [str(d) for d in range(10)], "source": {"kind": "folder"}}
    rule = hyperrule.derive(60_000, 28 * 28)
    plan = pp.make_plan(rows, stats, rule)
    counts = [len(plan.shard_items("train", i)) for i in range(plan.shard_counts["train"])]
    assert len(counts) >= 16 and sum(counts) == 60_000
    assert max(counts) - min(counts) <= 1  # balanced
    assert max(counts) <= pp.DEFAULT_SHARD_EXAMPLES
    again = pp.make_plan(rows[::-1], stats, rule)  # listing order does not matter
    assert [p.shard for p in sorted(again.items, key=lambda p: p.row["key"])] == [
        p.shard for p in sorted(plan.items, key=lambda p: p.row["key"])
    ]
    config = pp.PreprocessConfig("", "", shard_examples=4000)
    assert pp.shard_count(60_000, 78e6, config.shard_bytes, config.shard_examples) == 15


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_shards_are_byte_identical_for_any_number_of_workers(digits_dataset, workers, tmp_path):
    config, _ = digits_dataset
    small = dict(shard_examples=300, preprocess_workers=1, progress=False)
    reference = tmp_path / "reference"
    pp.preprocess(PreprocessConfig(config.analysis_dir, str(reference), **small))
    out = tmp_path / f"w{workers}"
    for index in range(workers):  # each worker as the pipeline runs it: its own share
        pp.write_shards(PreprocessConfig(config.analysis_dir, str(out), **small), index, workers)
    assert len(file_digests(reference)) >= 6
    assert file_digests(out) == file_digests(reference)


@pytest.mark.parametrize("processes", [2, 3])
def test_one_machine_on_several_cores_writes_the_same_shards(digits_dataset, processes, tmp_path):
    config, _ = digits_dataset
    for limit in (150, 1000):  # many shards (whole shards per core); few (shared items)
        common = dict(shard_examples=limit, progress=False)
        one = tmp_path / f"one-{limit}"
        pp.preprocess(
            PreprocessConfig(config.analysis_dir, str(one), preprocess_workers=1, **common)
        )
        many = tmp_path / f"many-{limit}"
        done = pp.preprocess(
            PreprocessConfig(config.analysis_dir, str(many), preprocess_workers=processes, **common)
        )
        assert file_digests(many) == file_digests(one)
        assert done.totals["written"] == 1797


def test_more_workers_than_shards_is_said(digits_dataset):
    config, _ = digits_dataset
    used, line = pp.worker_plan(config, 16)
    assert (
        used == 3
        and line == "3 shard(s) for 16 worker(s): starting 3, since 13 would have no shard to write"
    )
