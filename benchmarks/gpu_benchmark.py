"""The prepared GPU benchmark: R50x1 at 480 px, bfloat16, XLA — images/s and model FLOP
utilisation, for each batch size asked for, and the input pipeline's ceiling on the same
machine's CPUs (can it feed the GPU?). One command on a fresh GPU machine, install included
(``benchmarks/gpu.sh``; about 3 minutes of install and 2 of measuring on one H100):

    bash benchmarks/gpu.sh            # = venv + pip install -c constraints.txt -e . \
                                      #   'tensorflow[and-cuda]==2.21.*', then the line below
    python -m benchmarks.gpu_benchmark --batch 64 128 --output BENCHMARKS.md

It writes the "GPU" section of BENCHMARKS.md; target MFU >= 40% on a recent data-centre GPU.
MFU = (3 x forward FLOPs per image x images/s) / the card's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

from benchmarks.training_speed import model_flops
from components.bit import devices, hyperrule, models, training
from components.bit.models import tf

# Dense bf16 peaks (TFLOP/s) by device-name fragment.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "V100": 125.0}


TARGET_MFU = 0.40


def measure(batch: int, size: int, steps: int, name: str) -> dict:
    """One optimizer step per batch of ``batch`` images (uint8 in, as training feeds them)."""
    backbone = models.build_resnet(models.Architecture((3, 4, 6, 3), 1.0))
    model = models.build_classifier(backbone, 1000)
    rule = hyperrule.derive(
        100_000, size**2, overrides={"batch_size": batch, "micro_batch_size": batch}
    )
    optimizer = tf.keras.optimizers.SGD(0.003, momentum=0.9)
    step = training._make_train_step(
        tf.distribute.get_strategy(), model, optimizer, [], rule, xla=True
    )
    images = tf.cast(tf.random.uniform((batch, size, size, 3), 0, 255), tf.uint8)
    labels = tf.one_hot(tf.random.uniform((batch,), 0, 1000, tf.int32), 1000)
    iterator = iter(tf.data.Dataset.from_tensors(({"images": images}, labels)).repeat())
    for _ in range(3):
        step(iterator)  # compile and warm up
    start = time.perf_counter()
    for _ in range(steps):
        loss, _ = step(iterator)
    float(loss)
    rate = steps * batch / (time.perf_counter() - start)
    flops = 3 * model_flops(backbone, size, 1000)
    peak = next((p for key, p in PEAK_TFLOPS.items() if key in name), None)
    return {
        "device": name,
        "batch": batch,
        "size": size,
        "images_per_second": rate,
        "train_gflops_per_image": flops / 1e9,
        "mfu": rate * flops / (peak * 1e12) if peak else None,
    }


def input_ceiling() -> float:
    """Images/s the training input pipeline delivers on this machine's CPUs at 512/480 px
    (pre-resized TFRecords -> decode, crop, flip), measured without the GPU."""
    from benchmarks.training_speed import input_pipelines

    return input_pipelines()["bittune pipeline images/s"]


def section(results: list[dict], ceiling: float | None = None) -> str:
    """The "GPU" section of BENCHMARKS.md."""
    lines = ["## GPU", "", "| device | batch | px | images/s | GFLOPs/image (train) | MFU |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in results:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "?"
        rate, flops = r["images_per_second"], r["train_gflops_per_image"]
        lines.append(f"| {r['device']} | {r['batch']} | {r['size']} | {rate:,.1f} | "
                     f"{flops:.1f} | {mfu} |")  # fmt: skip
    best = max((r["mfu"] or 0) for r in results)
    lines += ["", f"R50x1, bfloat16, XLA; target MFU {TARGET_MFU:.0%}: "
              f"{'met' if best >= TARGET_MFU else 'NOT met'} (best {best:.1%})."]  # fmt: skip
    if ceiling is not None:
        fastest = max(r["images_per_second"] for r in results)
        verdict = "keeps up" if ceiling >= fastest else "is the bottleneck"
        lines.append(
            f"Input pipeline ceiling on this machine's CPUs: {ceiling:,.0f} images/s at "
            f"512/480 px: it {verdict} (training {fastest:,.0f} images/s)."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=480)
    parser.add_argument("--output", help="BENCHMARKS.md to write the GPU section into")
    args = parser.parse_args()
    devices.configure_devices()
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        raise SystemExit("no GPU visible")
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    results = [measure(batch, args.size, args.steps, name) for batch in args.batch]
    print(json.dumps(results, indent=2))
    ceiling = input_ceiling()
    print(f"input pipeline ceiling: {ceiling:,.0f} images/s")
    if args.output:
        path = pathlib.Path(args.output)
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        text = text.split("\n## GPU\n")[0].rstrip("\n") + "\n\n" + section(results, ceiling)
        path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
