"""The prepared GPU benchmark: R50x1 at 480 px, bfloat16, XLA — images/s and model FLOP
utilisation. Run on a GPU machine: ``python -m benchmarks.gpu_benchmark [--batch 64]``.

MFU = (3 x forward FLOPs per image x images/s) / the card's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks.training_speed import model_flops
from components.bit import hyperrule, models, training
from components.bit.models import tf

# Dense bf16 peaks (TFLOP/s) by device-name fragment.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "V100": 125.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=480)
    args = parser.parse_args()
    training.configure_devices()
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        raise SystemExit("no GPU visible")
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    backbone = models.build_resnet(models.Architecture((3, 4, 6, 3), 1.0))
    model = models.build_classifier(backbone, 1000)
    rule = hyperrule.derive(
        100_000, args.size**2, overrides={"batch_size": args.batch, "micro_batch_size": args.batch}
    )
    optimizer = tf.keras.optimizers.SGD(0.003, momentum=0.9)
    step = training._make_train_step(
        tf.distribute.get_strategy(), model, optimizer, [], rule, xla=True
    )
    images = tf.cast(tf.random.uniform((args.batch, args.size, args.size, 3), 0, 255), tf.uint8)
    labels = tf.one_hot(tf.random.uniform((args.batch,), 0, 1000, tf.int32), 1000)
    iterator = iter(tf.data.Dataset.from_tensors((images, labels)).repeat())
    for _ in range(3):
        step(iterator)  # compile and warm up
    start = time.perf_counter()
    for _ in range(args.steps):
        loss, _ = step(iterator)
    float(loss)
    rate = args.steps * args.batch / (time.perf_counter() - start)
    flops = 3 * model_flops(backbone, args.size, 1000)
    peak = next((p for key, p in PEAK_TFLOPS.items() if key in name), None)
    result = {
        "device": name,
        "batch": args.batch,
        "size": args.size,
        "images_per_second": rate,
        "train_gflops_per_image": flops / 1e9,
        "mfu": rate * flops / (peak * 1e12) if peak else None,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
