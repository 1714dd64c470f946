"""The ``bittune`` command line: the stage commands call the same library functions as the
KFP components. Heavy imports (TensorFlow, KFP) happen inside the commands that need them."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from components.bit import hyperrule
from components.bit.errors import ERROR_PREFIX, BittuneError


def _image_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 224x224, got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"image size must be positive, got {text!r}")
    return height, width


def _steps(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated steps, got {text!r}") from None


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 0.8,0.1,0.1, got {text!r}") from None


def _add_hyperrule_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("HyperRule choices and overrides (default: the rule)")
    group.add_argument(
        "--variant",
        choices=hyperrule.VARIANTS,
        default="reference",
        help="reference: BiT's code (default); paper: decays at 30/60/90%%, "
        "448/384 for all but R152x4",
    )
    group.add_argument("--model", help="model name (the paper variant keeps 512/480 for R152x4)")
    group.add_argument(
        "--batch-size",
        type=int,
        help="global batch; other than 512 applies the linear rule to lr and steps",
    )
    group.add_argument(
        "--micro-batch-size",
        type=int,
        help="per-step batch; accumulation steps = batch / micro-batch (default 64)",
    )
    group.add_argument("--resize", type=int, help="resize side, px")
    group.add_argument("--crop", type=int, help="random-crop side, px")
    group.add_argument("--base-lr", type=float, help="learning rate after warm-up")
    group.add_argument("--warmup-steps", type=int, help="linear warm-up length, steps")
    group.add_argument(
        "--decay-steps", type=_steps, help="steps after which lr x 0.1, e.g. 200,300,400"
    )
    group.add_argument("--total-steps", type=int, help="training length, steps")
    group.add_argument("--mixup-alpha", type=float, help="MixUp Beta(alpha, alpha); 0 turns it off")
    group.add_argument("--momentum", type=float, help="SGD momentum")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        name: getattr(args, name)
        for name in hyperrule.OVERRIDABLE
        if getattr(args, name) is not None
    }


def cmd_hyperrule(args: argparse.Namespace) -> None:
    height, width = args.image_size
    rule = hyperrule.derive(
        args.examples,
        height * width,
        variant=args.variant,
        model=args.model,
        overrides=_overrides(args),
    )
    print(
        rule.to_json() if args.json else hyperrule.format_table(rule), end="" if args.json else "\n"
    )


def cmd_analyze(args: argparse.Namespace) -> None:
    from components.bit.analysis import AnalysisConfig, analyze

    config = AnalysisConfig(
        source=args.source,
        data_dir=args.data_dir,
        split_fractions=args.split_fractions,
        max_pixels=args.max_pixels,
        workers=args.workers,
        variant=args.variant,
        model=args.model,
        overrides=_overrides(args),
        few_shot=args.few_shot,
    )
    result = analyze(config, args.output)
    stats = result.stats
    totals = stats["totals"]
    print(
        f"{totals['inputs']:,} images, {totals['valid']:,} valid, {totals['flagged']:,} flagged, "
        f"{totals['ignored']:,} non-items ignored; {len(stats['classes'])} classes"
    )
    print("examples: " + ", ".join(f"{s} {e['total']:,}" for s, e in stats["examples"].items()))
    for code, count in stats["flag_counts"].items():
        print(f"  flagged {code}: {count}")
    for warning in stats["warnings"]:
        print(f"  warning: {warning}")
    rule = result.hyperrule
    print(
        f"HyperRule: resize {rule.resize}, crop {rule.crop}, {rule.total_steps} steps at batch "
        f"{rule.batch_size}, lr {rule.base_lr:g}, mixup {rule.mixup_alpha:g}"
    )
    print(f"wrote stats.json, hyperrule.json, items.jsonl, report.md, report.html to {args.output}")


def cmd_preprocess(args: argparse.Namespace) -> None:
    from components.bit.preprocess import PreprocessConfig, check_source_matches, preprocess

    config = PreprocessConfig(
        analysis_dir=args.analysis,
        output_dir=args.output,
        data_dir=args.data_dir,
        few_shot=args.few_shot,
        seed=args.seed,
        shard_bytes=int(args.shard_mb * 2**20),
        processes=args.workers,
        jpeg_quality=args.jpeg_quality,
    )
    check_source_matches(config, args.source)
    manifest = preprocess(config)
    totals = manifest["totals"]
    print(
        f"{totals['inputs']:,} inputs = {totals['written']:,} written + "
        f"{totals['rejected']:,} rejected (see rejects.json)"
    )
    for split, entry in manifest["splits"].items():
        print(
            f"  {split}: {entry['examples']:,} examples in {len(entry['shards'])} shard(s), "
            f"{entry['bytes'] / 2**20:,.1f} MiB"
        )
    saved = manifest["preresize"]
    print(
        f"images: {', '.join(f'{n:,} {a}' for a, n in saved['actions'].items())}; "
        f"{saved['bytes_saved'] / 2**20:,.1f} MiB saved by pre-resizing"
    )
    print(f"wrote shards, labels.json, manifest.json, rejects.json to {args.output}")


def cmd_train(args: argparse.Namespace) -> None:
    from components.bit.training import TrainConfig, train

    config = TrainConfig(
        data_dir=args.data,
        hyperrule_path=args.hyperrule,
        model=args.model,
        output_dir=args.output,
        crop=not args.no_crop,
        flip=not args.no_flip,
        mixup=not args.no_mixup,
        strategy=args.strategy,
        precision=args.precision,
        xla={"auto": None, "on": True, "off": False}[args.xla],
        checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every,
        max_steps=args.max_steps,
        seed=args.seed,
        deterministic=args.deterministic,
    )
    summary = train(config)
    state = "finished" if summary["finished"] else "stopped (resume by running it again)"
    print(f"training {state} at step {summary['steps']}/{summary['total_steps']}")
    if summary["validation"]:
        last = summary["validation"][-1]
        print(f"validation accuracy {last['accuracy']:.4f}, loss {last['loss']:.4f}")
    print(f"wrote checkpoints, logs (TensorBoard) and saved_model to {args.output}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from components.bit.evaluation import EvalConfig, evaluate

    result = evaluate(
        EvalConfig(
            data_dir=args.data,
            model_dir=args.model,
            output_dir=args.output,
            split=args.split,
            baseline_model=args.baseline,
            threshold=args.threshold,
            tolerance=args.tolerance,
        )
    )
    m = result["metrics"]
    print(
        f"{result['split']}: {m['examples']:,} examples, accuracy {m['accuracy']:.4f}, "
        f"top-{m['top5_k']} {m['top5_accuracy']:.4f}, loss {m['loss']:.4f}, macro F1 "
        f"{m['macro_f1']:.4f}, ECE {m['expected_calibration_error']:.4f}"
    )
    if result["baseline_accuracy"] is not None:
        print(f"baseline accuracy {result['baseline_accuracy']:.4f}")
    print(f"{'BLESSED' if result['blessed'] else 'NOT BLESSED'}: {result['reason']}")
    print(f"wrote metrics.json and report.html to {args.output}")


def cmd_predict(args: argparse.Namespace) -> None:
    from components.bit.training import predict

    for result in predict(args.model, args.images):
        ranked = ", ".join(f"{name} {score:.3f}" for name, score in result["top_k"])
        print(f"{result['image']}: {ranked}")


def cmd_run(args: argparse.Namespace) -> None:
    from components.bit.datasets import DIGITS_DEMO_OVERRIDES, materialize_digits
    from components.bit.validation import ParameterError, parse_overrides
    from pipelines.local_run import run_locally

    overrides_text = args.hyperrule_overrides or "{}"
    source = args.data
    if not source:
        # Docker runs read it from inside the pipeline root, which the containers can reach.
        inside = os.path.join(os.path.abspath(args.output), "inputs", "digits")
        source = materialize_digits(inside if args.runner == "docker" else None)
        with contextlib.suppress(ParameterError):  # run_locally names every bad parameter
            overrides_text = json.dumps(
                {**DIGITS_DEMO_OVERRIDES, **parse_overrides(overrides_text)}
            )
        print(
            f"no --data given: the embedded default dataset (scikit-learn digits) at {source};\n"
            f"model {args.model}; demo schedule {json.dumps(DIGITS_DEMO_OVERRIDES)}"
        )
    outputs = run_locally(
        source,
        pipeline_root=os.path.abspath(args.output),
        runner=args.runner,
        image_registry=args.image_registry,
        image_tag=args.image_tag,
        data_dir=args.data_dir or "",
        model=args.model,
        preprocess_workers=args.preprocess_workers,
        hyperrule_overrides=overrides_text,
        serving_root=os.path.abspath(args.serving_root or os.path.join(args.output, "serving")),
        blessing_threshold=args.threshold,
        baseline_model=args.baseline or "",
    )
    totals = outputs["totals"]
    print(
        f"pipeline finished: {totals['inputs']:,} inputs = {totals['written']:,} written + "
        f"{totals['rejected']:,} rejected; {outputs['examples']:,} training examples"
    )
    print(
        f"{outputs['test_split']} accuracy {outputs['test_accuracy']:.4f} — "
        f"{'BLESSED' if outputs['blessed'] else 'NOT BLESSED'}: {outputs['reason']}"
    )
    print(f"  analysis report:   {outputs['report_html']}")
    print(f"  dataset:           {outputs['dataset']}")
    print(f"  model:             {outputs['model']}")
    print(f"  evaluation report: {outputs['evaluation_report']}")
    print(f"  pushed version:    {outputs['pushed'] or '(not pushed)'}")
    print(f"open a report in a browser, e.g. xdg-open {outputs['evaluation_report']}")


def cmd_compile(args: argparse.Namespace) -> None:
    from pipelines.submit import DEFAULT_PIPELINE_FILE, compile_pipeline

    output = args.output or DEFAULT_PIPELINE_FILE
    path = compile_pipeline(output, args.image_registry, args.image_tag)
    print(f"wrote {path}")


def cmd_bench(args: argparse.Namespace) -> None:
    from benchmarks.__main__ import main as bench_main

    code = bench_main([*args.names, "--output", args.output])
    if code:
        raise BittuneError("a benchmark missed its target (see the table above)")


def _add_image_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    from components.image import IMAGE_REGISTRY, IMAGE_TAG

    p.add_argument(
        "--image-registry",
        default=IMAGE_REGISTRY,
        help=f"{prefix}registry of the component images (default {IMAGE_REGISTRY})",
    )
    p.add_argument(
        "--image-tag", default=IMAGE_TAG, help=f"{prefix}image tag (default {IMAGE_TAG})"
    )


def _submit_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"token": args.token, "namespace": args.namespace, "ssl_ca_cert": args.ssl_ca_cert}


def _params(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.submit import load_pipeline, parse_params

    return parse_params(args.param, load_pipeline(args.pipeline)[1])


def cmd_submit(args: argparse.Namespace) -> None:
    from pipelines.submit import submit

    run = submit(args.host, _params(args), args.experiment, args.pipeline, **_submit_options(args))
    print(f"submitted run {run['run_id']}: {run['url']}")


def cmd_trigger(args: argparse.Namespace) -> None:
    from pipelines.submit import submit, trigger

    params = {"data_source": args.data, **_params_with_default_data(args)}
    result = trigger(
        args.data,
        args.state,
        lambda: submit(args.host, params, args.experiment, args.pipeline, **_submit_options(args)),
    )
    messages = {
        "submitted": lambda r: (
            f"data changed: submitted run {r['run']['run_id']}: {r['run']['url']}"
        ),
        "unchanged": lambda r: "data unchanged since the last triggered run: nothing submitted",
        "busy": lambda r: "another trigger is submitting this change: nothing submitted",
    }
    print(messages[result["action"]](result))


def _params_with_default_data(args: argparse.Namespace) -> dict[str, Any]:
    args.param = [p for p in args.param if not p.startswith("data_source=")]
    args.param.append(f"data_source={args.data}")
    return _params(args)


def _add_submit_options(p: argparse.ArgumentParser) -> None:
    from pipelines.submit import DEFAULT_PIPELINE_FILE

    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://…/pipeline")
    p.add_argument("--experiment", default="bittune", help="experiment name (default bittune)")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="pipeline parameter (repeatable), e.g. --param model=bit-m-r50x1",
    )
    p.add_argument(
        "--pipeline",
        default=DEFAULT_PIPELINE_FILE,
        help="compiled pipeline YAML (default: the one shipped with bittune)",
    )
    p.add_argument("--token", help="bearer token for the KFP API (kfp.Client existing_token)")
    p.add_argument("--namespace", help="Kubeflow namespace (multi-user deployments)")
    p.add_argument("--ssl-ca-cert", help="CA bundle for the KFP API's TLS certificate")


STRATEGY_CHOICES = ("auto", "default", "mirrored", "multiworker", "tpu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bittune",
        description="Fine-tune BiT image classifiers with the BiT-HyperRule on Kubeflow Pipelines.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "hyperrule",
        help="print the BiT-HyperRule for a dataset size and resolution",
        description="Print the BiT-HyperRule for N examples of HxW images.",
    )
    p.add_argument("--examples", type=int, required=True, help="number of training examples")
    p.add_argument(
        "--image-size",
        type=_image_size,
        required=True,
        metavar="HxW",
        help="typical (median) image size, e.g. 375x500",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_hyperrule_options(p)
    p.set_defaults(func=cmd_hyperrule)

    p = sub.add_parser(
        "analyze",
        help="analyze a dataset: counts, sizes, broken files, HyperRule",
        description="Analyze an image folder, CSV/JSONL manifest or tfds:NAME "
        "(local or gs://) and write stats.json, hyperrule.json and reports.",
    )
    p.add_argument("source", help="image folder, manifest (.csv/.jsonl) or tfds:NAME")
    p.add_argument("--output", required=True, help="output folder (local or gs://)")
    p.add_argument("--data-dir", help="TFDS data folder, or the root manifest paths must stay in")
    p.add_argument(
        "--split-fractions",
        type=_fractions,
        default=(0.8, 0.1, 0.1),
        help="train,validation,test for sources without splits (default 0.8,0.1,0.1)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=100_000_000,
        help="flag larger images as decompression bombs (default 100,000,000)",
    )
    p.add_argument("--workers", type=int, default=0, help="parallel readers (default: automatic)")
    p.add_argument(
        "--few-shot", type=int, help="keep k training images per class (BiT's k-shot setting)"
    )
    _add_hyperrule_options(p)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser(
        "preprocess",
        help="write the analysed dataset as sharded TFRecords",
        description="Write an analysed dataset as sharded TFRecords (pre-resized, RGB), with "
        "labels.json, manifest.json and rejects.json.",
    )
    p.add_argument("source", help="the data source the analysis was made of")
    p.add_argument("--analysis", required=True, help="the folder `bittune analyze` wrote")
    p.add_argument("--output", required=True, help="output folder (local or gs://)")
    p.add_argument("--data-dir", help="TFDS data folder (TFDS sources only)")
    p.add_argument(
        "--few-shot", type=int, help="k training images per class (must match the analysis)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for shard order and few-shot choice")
    p.add_argument(
        "--shard-mb", type=float, default=150, help="target shard size in MiB (default 150)"
    )
    p.add_argument("--workers", type=int, default=0, help="processes (default: every core)")
    p.add_argument(
        "--jpeg-quality", type=int, default=95, help="quality of re-encoded JPEGs (default 95)"
    )
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser(
        "train",
        help="fine-tune a BiT model on preprocessed TFRecords",
        description="Fine-tune BiT with the BiT-HyperRule; resumes from the latest checkpoint "
        "in --output.",
    )
    p.add_argument("--data", required=True, help="the folder `bittune preprocess` wrote")
    p.add_argument("--hyperrule", required=True, help="hyperrule.json (from `bittune analyze`)")
    p.add_argument(
        "--model",
        default="bittune-tiny",
        help="bit-{s,m}-r50x1…, BiT-{S,M}-R50x1…, an .npz, a SavedModel folder or hub handle, "
        "or bittune-tiny (default)",
    )
    p.add_argument("--output", required=True, help="run folder (local or gs://)")
    p.add_argument("--no-crop", action="store_true", help="no random crop (counting tasks)")
    p.add_argument("--no-flip", action="store_true", help="no random flip (localisation tasks)")
    p.add_argument("--no-mixup", action="store_true", help="no MixUp even if the rule has it")
    p.add_argument(
        "--strategy",
        choices=STRATEGY_CHOICES,
        default="auto",
        help="tf.distribute strategy (auto: TPU, several GPUs, or default)",
    )
    p.add_argument(
        "--precision",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="mixed precision (auto: bfloat16 on TPU/recent GPUs)",
    )
    p.add_argument(
        "--xla",
        choices=("auto", "on", "off"),
        default="auto",
        help="XLA compilation (auto: on for GPU/TPU)",
    )
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--eval-every", type=int, default=100, help="steps between validations")
    p.add_argument("--max-steps", type=int, help="stop at this step (schedule unchanged)")
    p.add_argument("--seed", type=int, default=0, help="seed of shuffle and augmentation")
    p.add_argument("--deterministic", action="store_true", help="deterministic TensorFlow ops")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="evaluate an exported model and decide whether to bless it",
        description="Evaluate on the test split (validation if none): accuracy, top-5, loss, "
        "per-class precision/recall/F1, confusion matrix, calibration; HTML report; gate.",
    )
    p.add_argument("--data", required=True, help="the folder `bittune preprocess` wrote")
    p.add_argument("--model", required=True, help="a training output folder or its saved_model")
    p.add_argument("--output", required=True, help="folder for metrics.json and report.html")
    p.add_argument("--split", choices=("train", "validation", "test"), help="default: test")
    p.add_argument("--baseline", help="a baseline model to compare on the same data")
    p.add_argument("--threshold", type=float, default=0.0, help="minimum accuracy to bless")
    p.add_argument(
        "--tolerance", type=float, default=0.0, help="accepted accuracy drop below the baseline"
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "predict",
        help="classify images with an exported model",
        description="Print the top-k classes of each image with a model exported by train.",
    )
    p.add_argument("--model", required=True, help="a training output folder or its saved_model")
    p.add_argument("images", nargs="+", help="image files (local or gs://)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "run",
        help="run the bit-finetune pipeline locally (kfp.local)",
        description="Run the bit-finetune pipeline locally with kfp.local. "
        "Without --data it runs on the embedded default dataset (digits).",
    )
    p.add_argument("--data", help="dataset source (default: the embedded digits dataset)")
    p.add_argument("--data-dir", help="TFDS data folder / manifest data root")
    p.add_argument("--model", default="bittune-tiny", help="BiT model (default bittune-tiny)")
    p.add_argument(
        "--hyperrule-overrides",
        help="JSON object of HyperRule fields to override, e.g. '{\"batch_size\": 128}'",
    )
    p.add_argument(
        "--preprocess-workers", type=int, default=2, help="parallel TFRecord workers (default 2)"
    )
    p.add_argument(
        "--output", default="bittune-runs", help="local pipeline root (default ./bittune-runs)"
    )
    p.add_argument("--serving-root", help="where blessed versions go (default OUTPUT/serving)")
    p.add_argument("--threshold", type=float, default=0.0, help="minimum test accuracy to push")
    p.add_argument("--baseline", help="baseline model the new one must not fall behind")
    p.add_argument(
        "--runner",
        choices=("subprocess", "docker"),
        default="subprocess",
        help="kfp.local runner: subprocess (this environment) or docker (every step in the "
        "CPU image, built by docker/build.sh); default subprocess",
    )

    _add_image_options(p, "with --runner docker: ")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "compile",
        help="write the pipeline's IR YAML",
        description="Compile bit-finetune to KFP IR YAML.",
    )
    p.add_argument("--output", default=None, help="file (default: pipelines/bit_finetune.yaml)")
    _add_image_options(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser(
        "submit",
        help="upload the pipeline and start a run on a KFP server",
        description="Upload bit-finetune (a new version when it changed) and "
        "create a run; prints its URL.",
    )
    _add_submit_options(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser(
        "trigger",
        help="start a run only when the data changed",
        description="Fingerprint the data (object names, sizes, generations); "
        "submit a run only when it changed since the last successful trigger.",
    )
    p.add_argument("--data", required=True, help="data prefix (gs://…), also the data_source")
    p.add_argument("--state", required=True, help="state object, gs://…/state.json")
    _add_submit_options(p)
    p.set_defaults(func=cmd_trigger)

    p = sub.add_parser(
        "bench",
        help="run the benchmarks and write BENCHMARKS.md",
        description="Run every benchmark side by side (or the named ones) and "
        "write BENCHMARKS.md; GPU: python -m benchmarks.gpu_benchmark.",
    )
    p.add_argument("names", nargs="*", help="analysis, preprocess, training, end-to-end")
    p.add_argument("--output", default="BENCHMARKS.md", help="report file (default BENCHMARKS.md)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except BittuneError as exc:
        print(f"{ERROR_PREFIX}{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
