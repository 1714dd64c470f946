"""Header-only dataset analysis against fully decoding the same large JPEGs.

Both sides use the same thread count and read the same files (warm page cache), so the ratio
measures what analysis saves by never decoding pixels (near-duplicate hashing, which decodes
a reduced image, is off here: benchmarks/near_duplicate_speed.py measures it). Target:
analysis >= 20x faster.
"""

from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from benchmarks.synthetic import write_large_jpegs
from components.bit.analysis import AnalysisConfig, analyze

TARGET_RATIO = 20.0


def _decode(path: str) -> int:
    with Image.open(path) as image:
        return image.convert("RGB").size[0]


def run(count: int = 32, size: tuple[int, int] = (3000, 4000)) -> list[dict]:
    with tempfile.TemporaryDirectory() as root:
        paths = write_large_jpegs(root, count, size)
        workers = 2 * (os.cpu_count() or 1)
        config = AnalysisConfig(root, workers=workers, near_duplicates=False, progress=False)
        analyze(config)  # warm the page cache and imports for both sides
        start = time.perf_counter()
        result = analyze(config)
        analysis_s = time.perf_counter() - start
        assert result.stats["totals"]["valid"] == count
        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(_decode, paths))
        decode_s = time.perf_counter() - start
    ratio = decode_s / analysis_s
    return [
        {
            "name": "analysis vs full decode",
            "setup": f"{count} JPEGs of {size[0]}x{size[1]} px, {workers} threads each side",
            "figures": {
                "analysis images/s": count / analysis_s,
                "full decode images/s": count / decode_s,
                "analysis s": analysis_s,
                "full decode s": decode_s,
            },
            "ratio": ratio,
            "ratio_label": "analysis speed-up over full decode",
            "target": TARGET_RATIO,
            "passed": ratio >= TARGET_RATIO,
        }
    ]
