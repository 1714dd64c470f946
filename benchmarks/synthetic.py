"""Synthetic benchmark inputs: large photo-like JPEGs (smooth gradients plus sensor-like noise)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def write_large_jpegs(
    root: str, count: int, size: tuple[int, int] = (3000, 4000), seed: int = 0
) -> list[str]:
    """Write ``count`` JPEGs of ``size`` (height, width) at quality 90 into ``root/{a,b}/``."""
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
        Image.fromarray(shifted).save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def core_scaling(n: int = 2_000_000) -> float:
    """How much faster two processes run a pure-Python loop than one, on this machine now:
    the ceiling any 1 -> 2 worker ratio measured beside it can reach (shared hosts give
    less than 2x)."""
    import multiprocessing
    import time

    seconds = {}
    for workers in (1, 2):
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            pool.map(_spin, [1] * workers)  # started
            started = time.perf_counter()
            pool.map(_spin, [n] * 2, chunksize=1)
            seconds[workers] = time.perf_counter() - started
    return seconds[1] / seconds[2]
