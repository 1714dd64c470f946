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


# --- Near-duplicates on real look-alike data, with planted copies whose truth is known ---
# `python -m benchmarks.fashion_mnist near-duplicates` (docs/data-quality.md quotes its output).

ICONS = "/usr/share/icons/Adwaita/48x48"  # adwaita-icon-theme (GNOME's icons)
STAMPS = "/usr/share/tuxpaint/stamps"  # tuxpaint-stamps-default (photos and clip art)
COPY_KINDS = ("jpeg", "resize80", "crop4", "shift2", "brightness")


def altered(image: Image.Image, kind: str) -> tuple[bytes, str]:
    """A copy of ``image`` as a user's data holds one: (bytes, extension)."""
    import io

    from components.bit import images

    buffer = io.BytesIO()
    if kind == "jpeg":
        images.to_rgb(image).save(buffer, format="JPEG", quality=75)  # alpha composited
        return buffer.getvalue(), ".jpg"
    if kind == "resize80":
        size = (max(1, round(image.width * 0.8)), max(1, round(image.height * 0.8)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    elif kind == "crop4":
        dx, dy = max(1, round(image.width * 0.04)), max(1, round(image.height * 0.04))
        image = image.crop((dx, dy, image.width - dx, image.height - dy))
    elif kind == "shift2":
        moved = Image.new(image.mode, image.size)
        moved.paste(image, (2, 2))
        image = moved
    elif kind == "brightness":
        bands = image.split()
        lit = [b.point(lambda v: min(255, int(v * 1.2 + 10))) for b in bands[:3]]
        image = Image.merge(image.mode, lit + list(bands[3:])) if len(bands) > 1 else lit[0]
    image.save(buffer, format="PNG")
    return buffer.getvalue(), ".png"


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _plant(root: str, train: list, test: list, per_kind: int, seed: int) -> dict[str, str]:
    """Write ``train``/``test`` (lists of (class, name, PIL image)) under root/{train,test}, and
    ``per_kind`` altered copies of distinct training images per kind into test. Returns
    planted test file -> kind."""
    import io

    rng = np.random.default_rng(seed)
    for split, items in (("train", train), ("test", test)):
        for label, name, image in items:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            _write(os.path.join(root, split, label, f"{name}.png"), buffer.getvalue())
    chosen = rng.permutation(len(train))[: per_kind * len(COPY_KINDS)]
    planted = {}
    for n, index in enumerate(chosen.tolist()):
        kind = COPY_KINDS[n % len(COPY_KINDS)]
        label, name, image = train[index]
        data, ext = altered(image, kind)
        path = os.path.join(root, "test", label, f"copy-{kind}-{name}{ext}")
        _write(path, data)
        planted[os.path.relpath(path, root)] = kind
    return planted


def _measure(name: str, root: str, planted: dict[str, str]) -> dict:
    """Analyse ``root`` (fixed train/test) and score the leak report against the truth."""
    started = time.perf_counter()
    result = analyze(AnalysisConfig(root, progress=False))
    seconds = time.perf_counter() - started
    near = result.stats["near_duplicates"]
    found = {kind: [0, 0] for kind in COPY_KINDS}
    alarms, unplanted = 0, 0
    for r in result.valid:
        if r.split != "test":
            continue
        relative = os.path.relpath(r.item.uri, root)
        if relative in planted:
            found[planted[relative]][0] += r.leaks_train
            found[planted[relative]][1] += 1
        else:
            unplanted += 1
            alarms += r.leaks_train
    return {
        "dataset": name,
        "images": result.stats["totals"]["valid"],
        "recall": {k: round(a / b, 3) if b else None for k, (a, b) in found.items()},
        "false alarms": f"{alarms} of {unplanted} unplanted test images",
        "largest group": near["largest_group"],
        "groups": near["groups"],
        "min similarity": near["calibration"]["min_similarity"],
        "typical neighbour similarity": near["calibration"]["typical_neighbour_similarity"],
        "seconds": round(seconds, 1),
    }


def _balance(name: str, items: list, fractions=(0.8, 0.1, 0.1)) -> dict:
    """bittune's own splits of a flat class folder: the split balance line."""
    import io

    from components.bit.splits import balance_line

    with tempfile.TemporaryDirectory() as root:
        for label, item_name, image in items:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            _write(os.path.join(root, label, f"{item_name}.png"), buffer.getvalue())
        result = analyze(AnalysisConfig(root, split_fractions=fractions, progress=False))
    near = result.stats["near_duplicates"]
    return {
        "dataset": name,
        "balance": balance_line(result.stats["split_balance"]),
        "examples": {s: e["total"] for s, e in result.stats["examples"].items()},
        "largest group": near["largest_group"],
        "placed whole": near["placed_whole"],
    }


def _fashion(train_n: int = 3000, test_n: int = 600) -> tuple[list, list]:
    images, labels = _idx("train-images-idx3-ubyte.gz"), _idx("train-labels-idx1-ubyte.gz")
    timages, tlabels = _idx("t10k-images-idx3-ubyte.gz"), _idx("t10k-labels-idx1-ubyte.gz")
    train = [(CLASSES[labels[i]], f"{i:05d}", Image.fromarray(images[i])) for i in range(train_n)]
    test = [(CLASSES[tlabels[i]], f"t{i:05d}", Image.fromarray(timages[i])) for i in range(test_n)]
    return train, test


def _folder_images(root: str, pattern: str, skip: str = "") -> list:
    """(class, name, image) for every PNG under root: the class is its first folder."""
    import glob

    out, seen = [], set()
    for path in sorted(glob.glob(os.path.join(root, pattern), recursive=True)):
        relative = os.path.relpath(path, root)
        base = os.path.basename(path)
        if (skip and relative.startswith(skip)) or base in seen:
            continue
        seen.add(base)
        with Image.open(path) as image:
            image.load()
            out.append((relative.split(os.sep)[0], os.path.splitext(base)[0], image.copy()))
    return out


def _split(items: list, seed: int, test_share: float = 0.2) -> tuple[list, list]:
    order = np.random.default_rng(seed).permutation(len(items))
    cut = int(len(items) * (1 - test_share))
    return [items[i] for i in order[:cut]], [items[i] for i in order[cut:]]


def near_duplicate_quality(per_kind: int = 40) -> list[dict]:
    """Planted copies in three real datasets; Fashion-MNIST's own-split balance."""
    results, inputs = [], []
    if os.path.exists(os.path.join(PACKAGE_DIR, "train-images-idx3-ubyte.gz")):
        inputs.append(("Fashion-MNIST 3,000 train + 600 test", *_fashion()))
    if os.path.isdir(ICONS):
        icons = _folder_images(ICONS, "*/*.png", skip="legacy")
        inputs.append((f"Adwaita icons 48x48 ({len(icons)})", *_split(icons, 1)))
    if os.path.isdir(STAMPS):
        stamps = [s for s in _folder_images(STAMPS, "**/*.png") if min(s[2].size) >= 64]
        stamps = [(c, n, im.convert("RGB")) for c, n, im in stamps]
        inputs.append((f"tuxpaint stamps ({len(stamps)})", *_split(stamps, 2)))
    for name, train, test in inputs:
        with tempfile.TemporaryDirectory() as root:
            planted = _plant(root, train, test, per_kind, seed=len(train))
            results.append(_measure(name, root, planted))
        print(results[-1], flush=True)
    if inputs:
        name, train, test = inputs[0]
        results.append(_balance(name.split(" ")[0] + " own splits", train + test))
        print(results[-1], flush=True)
    return results


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["near-duplicates"]:
        near_duplicate_quality()
