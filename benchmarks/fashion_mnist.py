"""Scale: analysis and preprocessing of Fashion-MNIST (70,000 real 28x28 grayscale images, a
`train/` + `test/` folder written once from Debian's `dataset-fashion-mnist`), at 1 and 2
workers side by side, the shard plan, and the time the measured per-worker rate projects for
1M images and for 14M (ImageNet-21k's size) on 16 and 32 workers. Skipped, with the reason,
when the package is not installed (`apt-get install dataset-fashion-mnist`)."""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import time

import numpy as np
from PIL import Image

from benchmarks.preprocess_speed import SCRATCH
from benchmarks.synthetic import CEILING, one_and_two_workers
from components.bit.analysis import AnalysisConfig, analyze
from components.bit.datasets import default_cache_dir
from components.bit.preprocess import PreprocessConfig, preprocess

PACKAGE_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle-boot")  # fmt: skip
TARGET_SCALING = 1.8
MIN_SHARDS = 16
REPEATS = 3


def _idx(name: str) -> np.ndarray:
    with gzip.open(os.path.join(PACKAGE_DIR, name)) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def materialize(root: str | None = None) -> str:
    """Fashion-MNIST as ``ROOT/{train,test}/<class>/<index>.png`` (written once)."""
    root = root or os.path.join(default_cache_dir(), "fashion-mnist")
    marker = os.path.join(root, ".complete")
    if os.path.exists(marker):
        return root
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _idx(f"{prefix}-images-idx3-ubyte.gz")
        labels = _idx(f"{prefix}-labels-idx1-ubyte.gz")
        for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
            folder = os.path.join(root, split, CLASSES[label])
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(pixels, mode="L").save(os.path.join(folder, f"{index:05d}.png"))
    with open(marker, "w") as f:
        f.write("70000\n")
    return root


def _preprocess(analysis: str, out: str, processes: int) -> tuple[float, object]:
    shutil.rmtree(out, ignore_errors=True)
    config = PreprocessConfig(analysis, out, preprocess_workers=processes, progress=False)
    started = time.perf_counter()
    manifest = preprocess(config)
    return time.perf_counter() - started, manifest


def run() -> list[dict]:
    if not os.path.exists(os.path.join(PACKAGE_DIR, "train-images-idx3-ubyte.gz")):
        print("fashion-mnist: skipped: Debian's dataset-fashion-mnist is not installed")
        return []
    source = materialize()
    with tempfile.TemporaryDirectory(dir=SCRATCH) as work:
        analysis = os.path.join(work, "analysis")
        started = time.perf_counter()
        result = analyze(AnalysisConfig(source, progress=False), analysis)
        analysis_s = time.perf_counter() - started
        count = result.stats["totals"]["inputs"]
        _, manifest = _preprocess(analysis, os.path.join(work, "out"), 1)  # warm-up

        def timed(workers: int) -> float:
            return _preprocess(analysis, os.path.join(work, "out"), workers)[0]

        timing = one_and_two_workers(timed, REPEATS)
    one_s, two_s = timing["one_s"], timing["two_s"]
    train = manifest.splits["train"]
    sizes = [shard.examples for shard in train.shards]
    per_worker = count / one_s
    figures = {
        "images": count,
        "analysis images/s": count / analysis_s,
        "preprocess images/s, 1 worker": per_worker,
        "preprocess images/s, 2 workers": count / two_s,
        "train shards": len(sizes),
        "largest/smallest train shard": max(sizes) / min(sizes),
        "MiB stored (grayscale kept)": manifest.preresize["image_bytes_out"] / 2**20,
        CEILING: timing["ceiling"],
    }
    for images, label in ((1_000_000, "1M"), (14_000_000, "14M")):
        for workers in (16, 32):
            figures[f"projected min, {label} images, {workers} workers"] = (
                images / (per_worker * workers) / 60
            )
    ratio = one_s / two_s
    return [
        {
            "name": "scale: Fashion-MNIST preprocessing",
            "setup": f"{count:,} real 28x28 PNGs (train/ + test/), analysis then "
            "preprocessing at 1 and 2 worker processes",
            "figures": figures,
            "ratio": ratio,
            "ratio_label": "2-worker over 1-worker throughput",
            "target": TARGET_SCALING,
            "passed": ratio >= TARGET_SCALING and len(sizes) >= MIN_SHARDS,
        }
    ]
