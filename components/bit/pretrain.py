"""Pretrain ``bittune-tiny``: a small BiT-architecture checkpoint, shipped in the official .npz
layout, for demos and tests that must run offline.

Pretraining data: scikit-learn's two bundled sample photographs (real images that install with
the package; not the demo's target, the digits). The task: name which of 2 photos x 4 regions
(8 classes) a random, randomly flipped and colour-jittered patch comes from — enough to learn
edge, colour and texture filters. Run ``python -m components.bit.pretrain`` to rebuild it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from components.bit import model_sources, models
from components.bit.models import Architecture, tf

TINY_ARCHITECTURE = Architecture(units=(1, 1, 1, 1), width=0.5)
PATCH = 48
INPUT = 32
REGIONS = 4


def patch_dataset(seed: int, batch_size: int):
    """Endless batches of ([0, 1] patches, region-class labels) from the sample photographs."""
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(p, np.float32) / 255.0 for p in load_sample_images().images]
    rng = np.random.default_rng(seed)

    def generate():
        while True:
            images, labels = [], []
            for _ in range(batch_size):
                index = int(rng.integers(len(photos)))
                photo = photos[index]
                height, width = photo.shape[:2]
                row = int(rng.integers(height - PATCH))
                col = int(rng.integers(width - PATCH))
                region = 2 * int(row + PATCH / 2 >= height / 2) + int(col + PATCH / 2 >= width / 2)
                patch = photo[row : row + PATCH, col : col + PATCH]
                if rng.random() < 0.5:
                    patch = patch[:, ::-1]
                patch = np.clip(patch * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1), 0, 1)
                images.append(patch)
                labels.append(index * REGIONS + region)
            yield np.stack(images), np.asarray(labels, np.int32)

    spec = (
        tf.TensorSpec((batch_size, PATCH, PATCH, 3), tf.float32),
        tf.TensorSpec((batch_size,), tf.int32),
    )
    dataset = tf.data.Dataset.from_generator(generate, output_signature=spec)
    resize = lambda x, y: (tf.image.resize(x, (INPUT, INPUT), antialias=True), y)  # noqa: E731
    return dataset.map(resize).prefetch(2)


def pretrain(output: str, steps: int = 1500, batch_size: int = 64, seed: int = 0) -> float:
    """Train the tiny backbone plus an 8-class head; save both in the .npz layout; return the
    final accuracy over the last 100 steps."""
    tf.keras.utils.set_random_seed(seed)
    backbone = models.build_resnet(TINY_ARCHITECTURE)
    head = tf.keras.layers.Dense(2 * REGIONS, name="head")
    model = tf.keras.Sequential([backbone, head])
    schedule = tf.keras.optimizers.schedules.CosineDecay(
        0.0, steps, alpha=0.01, warmup_target=0.05, warmup_steps=100
    )
    model.compile(
        optimizer=tf.keras.optimizers.SGD(schedule, momentum=0.9),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    started = time.time()
    history = model.fit(
        patch_dataset(seed, batch_size), steps_per_epoch=100, epochs=steps // 100, verbose=2
    )
    print(f"pretrained {steps} steps in {time.time() - started:.0f} s")
    kernel, bias = head.get_weights()
    models.save_npz(output, backbone, kernel, bias, dtype=np.float16)
    return float(history.history["accuracy"][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=model_sources.tiny_checkpoint_path())
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    accuracy = pretrain(args.output, args.steps, seed=args.seed)
    print(f"final training accuracy {accuracy:.3f}; wrote {args.output}")


if __name__ == "__main__":
    main()
