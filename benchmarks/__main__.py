"""Run every benchmark side by side and write BENCHMARKS.md: ``python -m benchmarks``."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys

from benchmarks import analysis_speed, fashion_mnist, near_duplicate_speed, preprocess_speed
from benchmarks.synthetic import CEILING


def _training():
    from benchmarks import training_speed  # imports TensorFlow

    return training_speed.run()


def _cpu_step():
    from benchmarks import cpu_step  # each model in a process of its own

    return cpu_step.run()


def _group_norm():
    from benchmarks import group_norm  # imports TensorFlow

    return group_norm.run()


def _end_to_end():
    from benchmarks import end_to_end

    return end_to_end.run()


def _export():
    from benchmarks import export_speed  # imports TensorFlow, LiteRT, ONNX Runtime

    return export_speed.run()


BENCHMARKS = {
    "analysis": analysis_speed.run,
    "near-duplicates": near_duplicate_speed.run,
    "preprocess": preprocess_speed.run,
    "scale": fashion_mnist.run,
    "training": _training,
    "cpu-step": _cpu_step,
    "group-norm": _group_norm,
    "end-to-end": _end_to_end,
    "export": _export,
}


def machine() -> str:
    import PIL

    from components.bit import tf_env

    tf_env.prepare_environment()  # what every bittune process sets before TensorFlow loads
    kernels = "on" if os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1" else "off"
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores, {tf_env.cpu_model()}, {memory:.0f} GiB, Python "
        f"{platform.python_version()}, Pillow {PIL.__version__}, {platform.system()} "
        f"{platform.release()}; TensorFlow's CPU kernels: oneDNN {kernels} (TF_ENABLE_ONEDNN_OPTS;"
        " rows that compare both say so)"
    )


def render(results: list[dict]) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Machine: {machine()}. Run: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC "
        "with `python -m benchmarks`.",
        "",
        "| benchmark | setup | figures | ratio | target | met |",
        "|---|---|---|---:|---:|---|",
    ]
    for r in results:
        figures = "; ".join(f"{k} {v:,.2f}" for k, v in r["figures"].items())
        target = f"{r['target']:g}x" if r["target"] is not None else "—"
        met = ("yes" if r["passed"] else "NO") if r["target"] is not None else "—"
        ceiling = r["figures"].get(CEILING)
        if met == "NO" and ceiling and ceiling < r["target"] and r["ratio"] >= 0.95 * ceiling:
            met = f"NO: machine-bound (a pure-Python loop gets {ceiling:.2f}x here now)"
        lines.append(
            f"| {r['name']} | {r['setup']} | {figures} | {r['ratio']:.2f}x "
            f"({r['ratio_label']}) | {target} | {met} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", choices=[[], *BENCHMARKS], help="benchmarks to run")
    parser.add_argument("--output", default="BENCHMARKS.md", help="report file ('-': none)")
    args = parser.parse_args(argv)
    results = []
    for name in args.names or BENCHMARKS:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        for result in BENCHMARKS[name]():
            results.append(result)
            target = f"{result['target']:g}x" if result["target"] is not None else "none"
            print(f"{result['name']}: {result['ratio']:.2f}x (target {target})")
            for key, value in result["figures"].items():
                print(f"  {key}: {value:,.2f}")
    text = render(results)
    if args.output != "-" and os.path.exists(args.output):
        with open(args.output, encoding="utf-8") as f:
            previous = f.read()
        if "\n## GPU\n" in previous:  # written on a GPU machine by benchmarks.gpu_benchmark
            text += "\n## GPU\n" + previous.split("\n## GPU\n", 1)[1]
    if args.output != "-":
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {args.output}")
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
