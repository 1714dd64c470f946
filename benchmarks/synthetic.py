"""Synthetic benchmark inputs: large photo-like JPEGs (smooth gradients plus sensor-like noise)."""

from __future__ import annotations

import io
import os
import struct
import time
from collections.abc import Callable

import numpy as np
from PIL import Image


def camera_exif(image: Image.Image, orientation: int = 1) -> bytes:
    """An EXIF block as a camera writes it (TIFF, little-endian): IFD0 with the orientation,
    IFD1 with a 160 px JPEG thumbnail of ``image`` (JPEGInterchangeFormat and its length)."""
    thumb = image.copy()
    thumb.thumbnail((160, 160))
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=75)
    jpeg = buffer.getvalue()
    entry = struct.Struct("<HHII")  # tag, type (3 SHORT, 4 LONG), count, value
    ifd0 = struct.pack("<H", 1) + entry.pack(0x0112, 3, 1, orientation)
    ifd1_at = 8 + len(ifd0) + 4
    data_at = ifd1_at + 2 + 2 * entry.size + 4
    ifd1 = (
        struct.pack("<H", 2)
        + entry.pack(0x0201, 4, 1, data_at)
        + entry.pack(0x0202, 4, 1, len(jpeg))
    )
    tiff = b"II*\0" + struct.pack("<I", 8) + ifd0 + struct.pack("<I", ifd1_at) + ifd1
    return b"Exif\0\0" + tiff + struct.pack("<I", 0) + jpeg


def write_large_jpegs(
    root: str,
    count: int,
    size: tuple[int, int] = (3000, 4000),
    seed: int = 0,
    thumbnails: bool = False,
) -> list[str]:
    """Write ``count`` JPEGs of ``size`` (height, width) at quality 90 into ``root/{a,b}/``,
    with a camera's EXIF thumbnail when ``thumbnails``."""
    height, width = size
    rng = np.random.default_rng(seed)
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    xs = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    base = 128 + ys * rng.uniform(-100, 100, 3) + xs * rng.uniform(-100, 100, 3)
    base = np.clip(base + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)
    paths = []
    for index in range(count):
        shifted = np.roll(base, (index * 97 % height, index * 131 % width), axis=(0, 1))
        folder = os.path.join(root, "ab"[index % 2])
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"large_{index:04d}.jpg")
        photo = Image.fromarray(shifted)
        exif = camera_exif(photo) if thumbnails else b""
        photo.save(path, format="JPEG", quality=90, exif=exif)
        paths.append(path)
    return paths


# The figure that says how well this machine runs two processes at once right now.
CEILING = "machine ceiling (pure-Python loop, 2 over 1 process)"


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def _spin_seconds(workers: int, n: int = 2_000_000) -> float:
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(_spin, [1] * workers)  # started
        started = time.perf_counter()
        pool.map(_spin, [n] * 2, chunksize=1)
        return time.perf_counter() - started


def one_and_two_workers(timed: Callable[[int], float], repeats: int) -> dict[str, float]:
    """``timed(workers)`` for 1 and 2 workers, alternately ``repeats`` times, each side's best
    run (the one the shared host disturbed least), and beside each pair the same for a
    pure-Python loop: the 1 -> 2 ceiling this machine gives any work right now."""
    runs: dict[str, list[float]] = {"one": [], "two": [], "loop one": [], "loop two": []}
    for _ in range(repeats):
        runs["one"].append(timed(1))
        runs["two"].append(timed(2))
        runs["loop one"].append(_spin_seconds(1))
        runs["loop two"].append(_spin_seconds(2))
    best = {key: min(values) for key, values in runs.items()}
    return {
        "one_s": best["one"],
        "two_s": best["two"],
        "ratio": best["one"] / best["two"],
        "ceiling": best["loop one"] / best["loop two"],
    }
