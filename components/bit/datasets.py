"""The embedded default dataset: scikit-learn's bundled handwritten digits as an image folder.

Real labelled images that install with a package (no download): 1,797 grayscale 8x8 digits,
ten classes. Written once as PNGs ``ROOT/<digit>/<index>.png`` and reused afterwards.
"""

from __future__ import annotations

import os

DIGITS_NAME = "digits"
_COMPLETE_MARKER = ".complete"


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bittune", "datasets")


def materialize_digits(root: str | None = None) -> str:
    """Write the digits as an image folder (once) and return its path."""
    root = root or os.path.join(default_cache_dir(), DIGITS_NAME)
    if os.path.exists(os.path.join(root, _COMPLETE_MARKER)):
        return root
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    for index, (image, target) in enumerate(zip(pixels, digits.target, strict=True)):
        folder = os.path.join(root, str(int(target)))
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(image, mode="L").save(os.path.join(folder, f"{index:04d}.png"))
    with open(os.path.join(root, _COMPLETE_MARKER), "w") as marker:
        marker.write(f"{len(pixels)}\n")
    return root


# The embedded default's demo schedule: a shortened HyperRule so that the whole pipeline runs in
# a few minutes on 2 CPU cores. Every value is recorded as an override in hyperrule.json.
# (The rule itself would give resize 160 / crop 128 and 500 steps at batch 512.)
DIGITS_DEMO_OVERRIDES = {
    "resize": 32,
    "crop": 28,
    "batch_size": 128,
    "micro_batch_size": 128,
    "base_lr": 0.02,
    "warmup_steps": 30,
    "decay_steps": [150, 220, 270],
    "total_steps": 300,
}
