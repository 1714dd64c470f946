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
    """Write the digits as an image folder (once) and return its path.

    The folder is written beside ``root`` and renamed into place when complete, so that runs
    started at the same time never read a half-written image."""
    root = root or os.path.join(default_cache_dir(), DIGITS_NAME)
    if os.path.exists(os.path.join(root, _COMPLETE_MARKER)):
        return root
    import shutil
    import tempfile

    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(partial, 0o777 & ~umask)  # as a plain mkdir would (mkdtemp's is owner-only)
    try:
        count = _write_digits(partial)
        with open(os.path.join(partial, _COMPLETE_MARKER), "w") as marker:
            marker.write(f"{count}\n")
        if os.path.isdir(root) and not os.path.exists(os.path.join(root, _COMPLETE_MARKER)):
            shutil.rmtree(root, ignore_errors=True)  # left incomplete by an older bittune
        try:
            os.rename(partial, root)
        except OSError:  # another run put its complete copy there first
            if not os.path.exists(os.path.join(root, _COMPLETE_MARKER)):
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return root


def _write_digits(folder: str) -> int:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    for index, (image, target) in enumerate(zip(pixels, digits.target, strict=True)):
        label = os.path.join(folder, str(int(target)))
        os.makedirs(label, exist_ok=True)
        Image.fromarray(image, mode="L").save(os.path.join(label, f"{index:04d}.png"))
    return len(pixels)


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
