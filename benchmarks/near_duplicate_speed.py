"""Near-duplicate search: what hashing adds to analysis, and the index against all pairs.

1. Analysis with and without near-duplicates (fingerprints, hash candidates, verification on
   pixels, calibration), side by side on the same files (warm page cache, same threads):
   large JPEGs as cameras write them (hashed from the EXIF thumbnail), the same stripped of
   EXIF (libjpeg decodes them at 1/8 scale, which still entropy-decodes the whole file), and
   28x28 PNGs (Fashion-MNIST's size, cut from scikit-learn's bundled photos). Target: <= 3x
   per image.
2. The multi-index search against comparing all pairs (numpy, blockwise) at 70,000 hashes,
   and the index alone at 1,000,000 (all pairs there projected from 70,000 by n^2). The
   hashes are uniform random 64-bit values with 1% planted near copies: real hashes are
   correlated, so buckets are uneven and the index does more work than here.
3. The candidate search analysis runs (``near_verify.candidate_pairs``: every image's whole
   and centre hash, as a large image has) at 100,000 and 1,000,000 images.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images

from benchmarks.synthetic import write_large_jpegs
from components.bit import near_duplicates as nd
from components.bit import near_verify as nv
from components.bit.analysis import AnalysisConfig, analyze

TARGET_HASHING_COST = 3.0
TARGET_INDEX_SPEEDUP = 10.0
REPEATS = 5


def _timed_analysis(root: str, hashing: bool, workers: int) -> float:
    config = AnalysisConfig(root, workers=workers, near_duplicates=hashing, progress=False)
    start = time.perf_counter()
    analyze(config)
    return time.perf_counter() - start


def _best_of(root: str, workers: int, repeats: int = REPEATS) -> tuple[float, float]:
    """The best of ``repeats`` analyses without and with near-duplicates, alternated (after
    one of each to warm imports and the page cache)."""
    _timed_analysis(root, False, workers)
    _timed_analysis(root, True, workers)
    runs = [(_timed_analysis(root, False, workers), _timed_analysis(root, True, workers))
            for _ in range(repeats)]  # fmt: skip
    return min(r[0] for r in runs), min(r[1] for r in runs)


def _small_pngs(root: str, count: int) -> None:
    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    for n in range(count):
        photo = photos[n % 2]
        y, x = rng.integers(0, photo.shape[0] - 64), rng.integers(0, photo.shape[1] - 64)
        tile = Image.fromarray(photo[y : y + 64, x : x + 64]).convert("L").resize((28, 28))
        folder = os.path.join(root, f"class{n % 10}")
        os.makedirs(folder, exist_ok=True)
        tile.save(os.path.join(folder, f"{n:05d}.png"))


def _hashing_cost(name: str, setup: str, write, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as root:
        count = write(root)
        without, with_hash = _best_of(root, workers)
    ratio = with_hash / without
    return {
        "name": name,
        "setup": f"{setup}, {workers} threads, analysis with and without near-duplicates "
        f"(fingerprints, candidates, verification, calibration), best of {REPEATS} alternated",
        "figures": {
            "header-only images/s": count / without,
            "with near-duplicates images/s": count / with_hash,
            "near-duplicates ms per image": (with_hash - without) / count * 1000,
        },
        "ratio": ratio,
        "ratio_label": "cost with near-duplicates over header-only",
        "target": TARGET_HASHING_COST,
        "passed": ratio <= TARGET_HASHING_COST,
    }


def _fashion_pngs(root: str, count: int = 4000) -> int:
    """The first ``count`` Fashion-MNIST training images as 28x28 PNGs in class folders
    (real look-alike product photos: their hashes crowd, so more candidates to verify)."""
    from benchmarks.fashion_mnist import _fashion

    train, _ = _fashion(train_n=count, test_n=0)
    for label, name, image in train:
        os.makedirs(os.path.join(root, label), exist_ok=True)
        image.save(os.path.join(root, label, f"{name}.png"))
    return count


def _all_pairs_seconds(hashes: np.ndarray, block: int = 2048) -> tuple[float, int]:
    start, found = time.perf_counter(), 0
    for lo in range(0, len(hashes), block):
        distance = np.bitwise_count(hashes[lo : lo + block, None] ^ hashes[None, :])
        found += int((distance <= nd.MAX_DISTANCE).sum())
    return time.perf_counter() - start, found


def _hashes(count: int, rng: np.random.Generator) -> np.ndarray:
    base = rng.integers(0, 2**63, size=count, dtype=np.uint64) * np.uint64(2)
    planted = count // 100
    flips = rng.integers(0, 64, size=(planted, 3)).astype(np.uint64)
    copies = base[:planted] ^ np.bitwise_or.reduce(np.uint64(1) << flips, axis=1)
    return np.concatenate([base[: count - planted], copies])


def _index_cost() -> dict:
    rng = np.random.default_rng(0)
    small, large = _hashes(70_000, rng), _hashes(1_000_000, rng)
    start = time.perf_counter()
    links = nd.find_links(small)
    index_small = time.perf_counter() - start
    pairs_small, _ = _all_pairs_seconds(small)
    start = time.perf_counter()
    nd.find_links(large)
    index_large = time.perf_counter() - start
    projected = pairs_small * (len(large) / len(small)) ** 2
    return {
        "name": "near-duplicate search: multi-index vs all pairs",
        "setup": f"uniform 64-bit hashes with 1% planted copies, at most {nd.MAX_DISTANCE} bits",
        "figures": {
            "index s, 70k": index_small,
            "all pairs s, 70k": pairs_small,
            "index s, 1M": index_large,
            "all pairs s, 1M (projected)": projected,
            "links found, 70k": float(len(links)),
        },
        "ratio": projected / index_large,
        "ratio_label": "index speed-up over all pairs at 1M",
        "target": TARGET_INDEX_SPEEDUP,
        "passed": projected / index_large >= TARGET_INDEX_SPEEDUP,
    }


def _candidate_cost(sizes: tuple[int, ...] = (100_000, 1_000_000)) -> dict:
    rng = np.random.default_rng(1)
    figures = {}
    for count in sizes:
        hashes = list(zip(_hashes(count, rng).tolist(), _hashes(count, rng).tolist(), strict=True))
        start = time.perf_counter()
        rows = nv.candidate_pairs(hashes)
        figures[f"candidates s, {count:,} images"] = time.perf_counter() - start
        figures[f"candidate rows, {count:,} images"] = float(len(rows))
    small, large = sizes[0], sizes[-1]
    growth = figures[f"candidates s, {large:,} images"] / figures[f"candidates s, {small:,} images"]
    return {
        "name": "near-duplicate candidates: 2 hashes per image",
        "setup": "uniform 64-bit whole and centre hashes, 1% planted copies of each",
        "figures": figures,
        "ratio": growth / (large / small),
        "ratio_label": f"time growth over image growth, {small:,} to {large:,}",
        "target": 2.0,
        "passed": growth / (large / small) <= 2.0,
    }


def run() -> list[dict]:
    workers = 2 * (os.cpu_count() or 1)
    camera = _hashing_cost(
        "near-duplicate hashing, large camera JPEGs",
        "16 JPEGs of 3000x4000 px with a camera's 160 px EXIF thumbnail (hashed from it)",
        lambda root: len(write_large_jpegs(root, 16, (3000, 4000), thumbnails=True)),
        workers,
    )
    stripped = _hashing_cost(
        "near-duplicate hashing, large JPEGs without EXIF",
        "16 JPEGs of 3000x4000 px, no thumbnail (decoded at 1/8 scale)",
        lambda root: len(write_large_jpegs(root, 16, (3000, 4000))),
        workers,
    )
    small = _hashing_cost(
        "near-duplicate hashing, 28x28 PNGs",
        "4,000 grayscale 28x28 PNGs (photo tiles)",
        lambda root: _small_pngs(root, 4000) or 4000,
        workers,
    )
    results = [camera, stripped, small]
    from benchmarks.fashion_mnist import PACKAGE_DIR

    if os.path.exists(os.path.join(PACKAGE_DIR, "train-images-idx3-ubyte.gz")):
        results.append(
            _hashing_cost(
                "near-duplicate hashing, Fashion-MNIST PNGs",
                "the first 4,000 Fashion-MNIST training images as 28x28 PNGs (Debian's "
                "dataset-fashion-mnist)",
                _fashion_pngs,
                workers,
            )
        )
    return [*results, _index_cost(), _candidate_cost()]
