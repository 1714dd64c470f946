"""The ``bittune`` command line: the stage commands call the same library functions as the KFP
components, and their options come from the one parameter table (:mod:`components.bit.params`)
and the HyperRule's field table. Heavy imports (TensorFlow, KFP) happen inside the commands
that need them: ``hyperrule`` and ``analyze`` import neither, ``compile``, ``submit`` and
``trigger`` no TensorFlow."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from components.bit import hyperrule, params, storage
from components.bit.errors import ERROR_PREFIX, BittuneError

# ---------------------------------------------------------------------------------------------
# Option types and shared option groups


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


def _add_overrides(
    parser: argparse.ArgumentParser, variant: bool = True, model: bool = True
) -> None:
    """The HyperRule's overridable fields as typed options (``--total-steps 300`` …)."""
    group = parser.add_argument_group("HyperRule choices and overrides (default: the rule)")
    if variant:
        params.add_option(group, "hyperrule_variant")
    if model:
        group.add_argument(
            "--model", help="model name (the paper variant keeps 512/480 for R152x4)"
        )
    for name, field in hyperrule.FIELDS.items():
        kind = {int: int, float: float, list: _steps}[field.type]
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, help=field.help)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        name: getattr(args, name)
        for name in hyperrule.OVERRIDABLE
        if getattr(args, name) is not None
    }


def _merged_overrides(text: str, args: argparse.Namespace) -> str:
    """The hyperrule_overrides parameter: its JSON form with the typed options on top."""
    typed = _overrides(args)
    if not typed:
        return text
    return json.dumps({**params.parse_overrides(text or "{}"), **typed})


def _writable(output: str) -> str:
    """An output location, checked before any work (one clear line when it cannot be used)."""
    storage.check_writable(output)
    return output


# ---------------------------------------------------------------------------------------------
# Stage commands


def cmd_hyperrule(args: argparse.Namespace) -> None:
    height, width = args.image_size
    rule = hyperrule.derive(
        args.examples,
        height * width,
        variant=args.hyperrule_variant,
        model=args.model,
        overrides=_overrides(args),
    )
    print(
        rule.to_json() if args.json else hyperrule.format_table(rule), end="" if args.json else "\n"
    )


def cmd_analyze(args: argparse.Namespace) -> None:
    from components.bit.analysis import AnalysisConfig, analyze
    from components.bit.splits import balance_line

    config = AnalysisConfig.from_params(
        vars(args), data_source=args.source, hyperrule_overrides=_overrides(args)
    )
    result = analyze(config, _writable(args.output))
    stats, rule = result.stats, result.hyperrule
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
    near = stats.get("near_duplicates")
    if near:
        pairs = ", ".join(f"{k} {v:,}" for k, v in near["pairs"].items()) or "none"
        leaked = ", ".join(f"{k} {v:,}" for k, v in near["leaked"].items()) or "none"
        small = near["too_small"]
        small = f"; {small:,} image{'s' * (small != 1)} too small to hash" if small else ""
        print(
            f"near-duplicates: {near['items_in_groups']:,} images in {near['groups']:,} groups "
            f"(pairs: {pairs}); held out with a near-duplicate in training: {leaked}{small}"
        )
    if "split_balance" in stats:
        print(balance_line(stats["split_balance"]))
    if "drift" in stats:
        print(stats["drift"].get("summary") or stats["drift"]["note"])
    excluded = stats["source"].get("exclude_list")
    if excluded:
        print(
            f"exclude list {excluded['uri']} (SHA-256 {excluded['sha256'][:12]}…): "
            f"{excluded['excluded']:,} images left out, {excluded['entries']:,} entries"
        )
    print(
        f"HyperRule: resize {rule.resize}, crop {rule.crop}, {rule.total_steps} steps at batch "
        f"{rule.batch_size}, lr {rule.base_lr:g}, mixup {rule.mixup_alpha:g}"
    )
    print(f"wrote stats.json, hyperrule.json, items.jsonl, report.md, report.html to {args.output}")


def cmd_preprocess(args: argparse.Namespace) -> None:
    from components.bit import preprocess as pp

    config = pp.PreprocessConfig.from_params(
        vars(args),
        analysis_dir=args.analysis,
        output_dir=_writable(args.output),
        few_shot=args.few_shot or None,
    )
    pp.check_source_matches(config, args.source)
    done, planned = pp.completed_shards(config)
    if done:
        print(f"resuming: {done} of {planned} shards already done", file=sys.stderr)
    try:
        manifest = pp.preprocess(config)
    except KeyboardInterrupt:
        kept, planned = pp.completed_shards(config)
        print(
            f"interrupted; {kept} of {planned} shards kept (run the same command to resume)",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    _print_dataset(manifest, args.output)


def _print_dataset(manifest, output: str) -> None:
    totals = manifest.totals
    print(
        f"{totals['inputs']:,} inputs = {totals['written']:,} written + "
        f"{totals['rejected']:,} rejected (see rejects.json)"
    )
    for name, split in manifest.splits.items():
        print(
            f"  {name}: {split.examples:,} examples in {len(split.shards)} shard(s), "
            f"{split.bytes / 2**20:,.1f} MiB"
        )
    pre = manifest.preresize
    change = pre["bytes_saved"] / 2**20
    effect = f"{change:,.1f} MiB saved" if change >= 0 else f"grew by {-change:,.1f} MiB"
    print(f"images: {', '.join(f'{n:,} {a}' for a, n in pre['actions'].items())}; {effect}")
    print(f"wrote shards, labels.json, manifest.json, rejects.json to {output}")


def cmd_train(args: argparse.Namespace) -> None:
    _writable(args.output)
    from components.bit import dataset as ds
    from components.bit.training import TrainConfig, train

    rule = hyperrule.load(args.hyperrule) if args.hyperrule else ds.read_manifest(args.data).rule
    rule = hyperrule.with_overrides(rule, _overrides(args))
    config = TrainConfig.from_params(
        vars(args),
        dataset_dir=args.data,
        output_dir=args.output,
        hyperrule=rule,
        xla={"auto": None, "on": True, "off": False}[args.xla],
    )
    result = train(config)
    if result.already_finished:
        print(f"already trained: {args.output} holds this schedule's finished model")
    state = "finished" if result.finished else "stopped (resume by running it again)"
    print(f"training {state} at step {result.steps}/{result.total_steps}")
    if result.validation:
        last = result.validation[-1]
        print(f"validation accuracy {last['accuracy']:.4f}, loss {last['loss']:.4f}")
    print(f"wrote checkpoints, logs (TensorBoard) and saved_model to {args.output}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    _writable(args.output)
    from components.bit.evaluation import EvalConfig, evaluate

    result = evaluate(
        EvalConfig.from_params(
            vars(args),
            dataset_dir=args.data,
            output_dir=args.output,
            serving_root=args.serving_root or None,
        )
    )
    m = result.metrics
    print(
        f"{result.split}: {m['examples']:,} examples, accuracy {m['accuracy']:.4f}, "
        f"top-{m['top5_k']} {m['top5_accuracy']:.4f}, loss {m['loss']:.4f}, macro F1 "
        f"{m['macro_f1']:.4f}, ECE {m['expected_calibration_error']:.4f}"
    )
    without = m["without_leaked"]
    if without["leaked"]:
        print(
            f"without the {without['leaked']:,} examples with a near-duplicate in training: "
            f"accuracy {without['accuracy']:.4f}"
        )
    if result.label_issues:
        print(
            f"{len(result.label_issues):,} likely label errors (confident learning), listed in "
            "label_issues.json: review them, then pass it as --exclude-list"
        )
    if result.baseline_accuracy is not None:
        print(f"baseline {result.baseline}: accuracy {result.baseline_accuracy:.4f}")
    served = m.get("served_data") or {}
    if served.get("examples"):
        print(
            f"on {result.baseline}'s own test data ({served['examples']:,} examples): accuracy "
            f"{served['accuracy']:.4f}, the served model {served['served_accuracy']:.4f}"
        )
    elif served.get("note"):
        print(served["note"])
    for c in result.comparisons:
        print(f"paired with {result.baseline} {c['sentence']}")
    print(f"{'BLESSED' if result.blessed else 'NOT BLESSED'}: {result.reason}")
    print(f"wrote metrics.json, label_issues.json and report.html to {args.output}")


def cmd_predict(args: argparse.Namespace) -> None:
    from components.bit import serving, serving_extras

    if args.format == "savedmodel":
        results = serving.predict(args.run, args.images)
    else:
        results = serving_extras.predict(args.run, args.images, args.format)
    failed = 0
    for result in results:
        if result.error:
            failed += 1
            print(f"{result.image}: error: {result.error}", file=sys.stderr)
            continue
        ranked = ", ".join(f"{name} {score:.3f}" for name, score in result.top_k)
        print(f"{result.image}: {ranked}")
    if failed:
        raise BittuneError(f"{failed} of {len(args.images)} image(s) could not be classified")


# ---------------------------------------------------------------------------------------------
# The pipeline: run locally, compile, submit, trigger

# Run parameters that only mean something on a cluster.
_CLUSTER_ONLY = (
    "data_fingerprint",
    "checkpoint_root",
    "training_cpu",
    "training_memory",
    *params.KUBEFLOW_ONLY,
)
RUN_PARAMETERS = [n for n in params.names() if n not in (*_CLUSTER_ONLY, "data_source")]


def cmd_run(args: argparse.Namespace) -> None:
    from pipelines.local_run import run_locally, summary_lines

    values = params.values_of(args, RUN_PARAMETERS)
    values["hyperrule_overrides"] = _merged_overrides(values["hyperrule_overrides"], args)
    values["serving_root"] = os.path.abspath(
        args.serving_root or os.path.join(args.output, "serving")
    )
    outputs = run_locally(
        args.data,
        pipeline_root=os.path.abspath(args.output),
        runner=args.runner,
        image_registry=args.image_registry,
        image_tag=args.image_tag,
        verbose=args.verbose,
        accelerator=args.accelerator,
        **values,
    )
    print("\n".join(summary_lines(outputs)))


def _machine(args: argparse.Namespace):
    """The training machine the compile-time options name (None: none was given)."""
    from components.bit.machines import TrainingMachine

    given = {n: getattr(args, n) for n in params.COMPILE_TIME if getattr(args, n) is not None}
    return TrainingMachine.from_values(given) if given else None


def cmd_compile(args: argparse.Namespace) -> None:
    from pipelines.submit import compile_pipeline

    path = compile_pipeline(
        args.output, args.image_registry, args.image_tag, args.target, _machine(args)
    )
    print(f"wrote {path}")


def cmd_bench(args: argparse.Namespace) -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, "benchmarks", "__main__.py")):
        raise BittuneError(
            "the benchmarks come with bittune's source, not its package: run `bittune bench` "
            "in a clone (./dev bench)"
        )
    # A process of their own: the shipped command line never imports the benchmarks.
    output = args.output if args.output == "-" else os.path.abspath(args.output)
    command = [sys.executable, "-m", "benchmarks", *args.names, "--output", output]
    status = subprocess.run(command, cwd=root).returncode
    if status == 1:
        raise BittuneError("a benchmark missed its target (see the table above)")
    if status:
        raise SystemExit(status)  # the benchmarks' own message is already on stderr


def _submitter(args: argparse.Namespace) -> Callable[[dict[str, Any]], dict[str, str]]:
    """A function that submits a run with the given parameters, to KFP or Vertex AI."""
    from pipelines import submit

    pipeline = _pipeline_file(args)
    if args.vertex:
        missing = [
            f"--{n.replace('_', '-')}"
            for n in ("project", "region", "pipeline_root")
            if not getattr(args, n)
        ]
        if missing:
            raise BittuneError(f"--vertex needs {', '.join(missing)}")
        return lambda values: submit.submit_vertex(
            values,
            args.project,
            args.region,
            args.pipeline_root,
            pipeline,
            service_account=args.service_account,
            experiment=args.experiment,
            api_endpoint=args.api_endpoint,
            network=args.network,
            encryption_spec_key_name=args.encryption_spec_key_name,
        )
    if not args.host:
        raise BittuneError("give --host (the KFP API), or --vertex for Vertex AI Pipelines")
    return lambda values: submit.submit(
        args.host,
        values,
        args.experiment or "bittune",
        pipeline,
        token=args.token,
        namespace=args.namespace,
        ssl_ca_cert=args.ssl_ca_cert,
    )


def _pipeline_file(args: argparse.Namespace) -> str:
    """--pipeline, or the pipeline compiled for the machine and image options given, or the
    shipped one."""
    from pipelines import submit

    target = "vertex" if args.vertex else "kubeflow"
    machine = _machine(args)
    compiled = machine is not None or args.image_registry is not None
    if args.pipeline and compiled:
        raise BittuneError(
            "--pipeline is compiled already (its training machine and images are fixed): give "
            "the machine and image options to bittune compile, or leave out --pipeline"
        )
    if not compiled:
        return args.pipeline or submit.default_pipeline_file(target)
    if getattr(args, "compiled_file", None) is None:
        import tempfile

        folder = tempfile.mkdtemp(prefix="bittune-compiled-")
        registry = args.image_registry or submit.IMAGE_REGISTRY
        args.compiled_file = submit.compile_pipeline(
            os.path.join(folder, "bit_finetune.yaml"), registry, args.image_tag, target, machine
        )
    return args.compiled_file


def _params(args: argparse.Namespace, **given: str) -> dict[str, Any]:
    """The --param values typed by the pipeline's parameters, then the typed HyperRule options
    (``--hyperrule-variant``, ``--micro-batch-size`` …); ``given`` ones win."""
    from pipelines import submit

    pairs = [p for p in args.param if p.partition("=")[0] not in given]
    pairs += [f"{name}={value}" for name, value in given.items()]
    values = submit.parse_params(pairs, submit.load_pipeline(_pipeline_file(args))[1])
    if args.hyperrule_variant is not None:
        values["hyperrule_variant"] = args.hyperrule_variant
    if _overrides(args):
        values["hyperrule_overrides"] = _merged_overrides(
            values.get("hyperrule_overrides", "{}"), args
        )
    return values


def cmd_submit(args: argparse.Namespace) -> None:
    run = _submitter(args)(_params(args))
    print(f"submitted run {run['run_id']}: {run['url']}")
    _warned(run)


class SubmittedWithWarning(Exception):
    """A run was created though a follow-up failed (Vertex: joining the Experiment): one
    warning line and exit status 1 (2 means nothing was submitted)."""


def _warned(run: dict[str, Any]) -> None:
    if run.get("warning"):
        raise SubmittedWithWarning(run["warning"])


def cmd_trigger(args: argparse.Namespace) -> None:
    from pipelines.submit import trigger

    submit_run = _submitter(args)
    values = _params(args, data_source=args.data)
    result = trigger(
        args.data,
        args.state,
        lambda fingerprint: submit_run({**values, "data_fingerprint": fingerprint}),
    )
    messages = {
        "submitted": lambda r: (
            f"data changed ({r['change']}): submitted run {r['run']['run_id']}: {r['run']['url']}"
        ),
        "unchanged": lambda r: "data unchanged since the last triggered run: nothing submitted",
        "busy": lambda r: "another trigger is submitting this change: nothing submitted",
    }
    print(messages[result["action"]](result))
    if result["action"] == "submitted":
        _warned(result["run"])


# ---------------------------------------------------------------------------------------------
# The parser: one small function per command


def _add_hyperrule(sub) -> None:
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
    _add_overrides(p)
    p.set_defaults(func=cmd_hyperrule)


def _add_analyze(sub) -> None:
    p = sub.add_parser(
        "analyze",
        help="analyze a dataset: counts, sizes, broken files, HyperRule",
        description="Analyze an image folder, CSV/JSONL manifest or tfds:NAME (local or gs://) "
        "and write stats.json, hyperrule.json, items.jsonl and reports.",
    )
    p.add_argument("source", help="image folder, manifest (.csv/.jsonl) or tfds:NAME")
    p.add_argument("--output", required=True, help="output folder (local or gs://)")
    params.add_option(p, "data_dir", default=None)
    params.add_option(p, "split_fractions", type=_fractions, default=(0.8, 0.1, 0.1))
    params.add_option(p, "max_pixels")
    params.add_option(p, "near_duplicates")
    params.add_option(p, "exclude_list")
    params.add_option(p, "baseline_model")
    params.add_option(p, "serving_root")
    params.add_option(p, "few_shot")
    p.add_argument("--workers", type=int, default=0, help="parallel readers (default: automatic)")
    _add_overrides(p)
    p.set_defaults(func=cmd_analyze)


def _add_preprocess(sub) -> None:
    p = sub.add_parser(
        "preprocess",
        help="write the analysed dataset as sharded TFRecords",
        description="Write an analysed dataset as sharded TFRecords (pre-resized; RGB or "
        "grayscale), with labels.json, manifest.json and rejects.json. Ctrl-C keeps finished "
        "shards: the same command resumes.",
    )
    p.add_argument("source", help="the data source the analysis was made of")
    p.add_argument("--analysis", required=True, help="the folder `bittune analyze` wrote")
    p.add_argument("--output", required=True, help="output folder (local or gs://)")
    params.add_option(p, "data_dir", default=None)
    params.add_option(p, "few_shot", help="k training images per class (as at analysis)")
    params.add_option(p, "seed")
    params.add_option(p, "shard_megabytes")
    params.add_option(p, "shard_examples")
    params.add_option(
        p, "preprocess_workers", default=None, help="processes writing shards (default: every core)"
    )
    p.add_argument(
        "--jpeg-quality", type=int, default=95, help="quality of re-encoded JPEGs (default 95)"
    )
    p.set_defaults(func=cmd_preprocess)


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a BiT model on preprocessed TFRecords",
        description="Fine-tune BiT with the BiT-HyperRule the dataset was prepared for (or "
        "--hyperrule, and any override); resumes from the latest checkpoint in --output, and "
        "says so when the output already holds the finished model.",
    )
    p.add_argument("--data", required=True, help="the folder `bittune preprocess` wrote")
    p.add_argument("--output", required=True, help="run folder (local or gs://)")
    params.add_option(p, "model")
    p.add_argument("--hyperrule", help="a hyperrule.json to use instead of the dataset's")
    params.add_option(p, "random_crop")
    params.add_option(p, "random_flip")
    params.add_option(p, "mixup")
    params.add_option(p, "training_strategy")
    params.add_option(p, "precision")
    p.add_argument(
        "--xla",
        choices=("auto", "on", "off"),
        default="auto",
        help="XLA compilation (auto: on for GPU/TPU; default auto)",
    )
    params.add_option(p, "checkpoint_every")
    p.add_argument("--eval-every", type=int, default=100, help="steps between validations")
    p.add_argument("--max-steps", type=int, help="stop at this step (schedule unchanged)")
    params.add_option(p, "seed")
    p.add_argument("--deterministic", action="store_true", help="deterministic TensorFlow ops")
    _add_overrides(p, variant=False, model=False)
    p.set_defaults(func=cmd_train)


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a trained model and decide whether to bless it",
        description="Evaluate on the test split (validation if none): accuracy, top-5, loss, "
        "per-class precision/recall/F1, confusion matrix, calibration; HTML report; the gate "
        "(beat the majority class, the threshold if set, and the baseline).",
    )
    p.add_argument("--data", required=True, help="the folder `bittune preprocess` wrote")
    p.add_argument("--run", required=True, help="a training output folder (or a SavedModel)")
    p.add_argument("--output", required=True, help="folder for metrics.json and report.html")
    p.add_argument("--split", choices=("train", "validation", "test"), help="default: test")
    params.add_option(p, "baseline_model")
    params.add_option(p, "serving_root")
    for name in gate_parameters():  # every gate rule's knob, named as in the table
        params.add_option(p, name)
    p.set_defaults(func=cmd_evaluate)


def gate_parameters() -> tuple[str, ...]:
    from components.bit.evaluation.rules import PARAMETERS

    return PARAMETERS


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="classify images with a trained model",
        description="Print the top-k classes of each image; a bad file gets one error line, "
        "the others their results; exits non-zero if any failed.",
    )
    p.add_argument("--run", required=True, help="a training output folder (or a SavedModel)")
    p.add_argument(
        "--format",
        choices=("savedmodel", "tflite", "tflite-int8", "onnx"),
        default="savedmodel",
        help="run the SavedModel (default) or, with --run a pushed version, one of its "
        "exports (LiteRT float32 or int8, ONNX Runtime)",
    )
    p.add_argument("images", nargs="+", help="image files (local or gs://)")
    p.set_defaults(func=cmd_predict)


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


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run the bit-finetune pipeline locally (kfp.local)",
        description="Run the bit-finetune pipeline locally with kfp.local: one line per step, "
        "each step's whole log in a file. Without --data it runs on the embedded default "
        "dataset (digits) with a short demo schedule.",
    )
    p.add_argument("--data", help="dataset source (default: the embedded digits dataset)")
    for name in RUN_PARAMETERS:
        params.add_option(p, name)
    _add_overrides(p, variant=False, model=False)
    p.add_argument(
        "--output", default="bittune-runs", help="local pipeline root (default ./bittune-runs)"
    )
    p.set_defaults(serving_root="")
    params.add_option(p, "accelerator", default="",
                      help="training accelerator: gpu, tpu or cpu (default: whatever this "
                      "machine has)")  # fmt: skip
    p.add_argument(
        "--runner",
        choices=("subprocess", "docker"),
        default="subprocess",
        help="kfp.local runner: subprocess (this environment) or docker (every step in "
        "the CPU image, built by docker/build.sh); default subprocess",
    )
    p.add_argument("--verbose", action="store_true", help="print every step's whole log")
    _add_image_options(p, "with --runner docker: ")
    p.set_defaults(func=cmd_run)


def _add_compile(sub) -> None:
    p = sub.add_parser(
        "compile",
        help="write the pipeline's IR YAML",
        description="Compile bit-finetune to KFP IR YAML for Kubeflow Pipelines "
        "or Vertex AI Pipelines.",
    )
    p.add_argument(
        "--output",
        default=None,
        help="file (default: the shipped pipelines/bit_finetune[_vertex].yaml)",
    )
    p.add_argument(
        "--target",
        choices=("kubeflow", "vertex"),
        default="kubeflow",
        help="kubeflow (KFP on Kubernetes) or vertex (Vertex AI Pipelines); default kubeflow",
    )
    _add_image_options(p)
    _add_machine_options(p)
    p.set_defaults(func=cmd_compile)


def _add_machine_options(p: argparse.ArgumentParser) -> None:
    """The compile-time parameters (training's machine), None when not given."""
    group = p.add_argument_group("training machine (fixed when the pipeline is compiled)")
    for name in params.COMPILE_TIME:
        params.add_option(group, name, default=None)


def _add_submit_options(p: argparse.ArgumentParser) -> None:
    from components.image import IMAGE_TAG

    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="pipeline parameter (repeatable), e.g. --param model=bit-m-r50x1",
    )
    p.add_argument(
        "--pipeline",
        help="compiled pipeline YAML (default: the one bittune ships, or one compiled here for "
        "the machine and image options given)",
    )
    _add_overrides(p, model=False)
    p.set_defaults(hyperrule_variant=None)
    images = p.add_argument_group("images (compile the pipeline for them)")
    images.add_argument("--image-registry", help="registry of the component images")
    images.add_argument("--image-tag", default=IMAGE_TAG, help=f"image tag (default {IMAGE_TAG})")
    _add_machine_options(p)
    p.add_argument(
        "--experiment",
        help="experiment the run joins (KFP: default bittune; Vertex AI: a Vertex AI "
        "Experiment, created when missing; default none)",
    )
    kfp = p.add_argument_group("Kubeflow Pipelines")
    kfp.add_argument("--host", help="KFP API endpoint, e.g. https://…/pipeline")
    kfp.add_argument("--token", help="bearer token for the KFP API (kfp.Client existing_token)")
    kfp.add_argument("--namespace", help="Kubeflow namespace (multi-user deployments)")
    kfp.add_argument("--ssl-ca-cert", help="CA bundle for the KFP API's TLS certificate")
    vertex = p.add_argument_group("Vertex AI Pipelines")
    vertex.add_argument("--vertex", action="store_true", help="submit to Vertex AI Pipelines")
    vertex.add_argument("--project", help="Google Cloud project")
    vertex.add_argument("--region", help="Vertex AI region, e.g. us-central1 (not us, eu)")
    vertex.add_argument("--pipeline-root", help="gs:// folder for the run's artifacts")
    vertex.add_argument(
        "--service-account",
        help="service account the run's steps (and its training CustomJob) run as; it needs "
        "Service Account User on itself (default: the Compute Engine default service account)",
    )
    vertex.add_argument(
        "--network", help="VPC the run is peered with: projects/NUMBER/global/networks/NAME"
    )
    vertex.add_argument(
        "--encryption-spec-key-name",
        help="Cloud KMS key (CMEK) for the run and its CustomJob: projects/P/locations/R/"
        "keyRings/K/cryptoKeys/KEY",
    )
    vertex.add_argument(
        "--api-endpoint", help="Vertex AI API endpoint (default: the region's public one)"
    )


def _add_submit(sub) -> None:
    p = sub.add_parser(
        "submit",
        help="start a run on Kubeflow Pipelines or Vertex AI",
        description="Upload bit-finetune (a new version when it changed) and "
        "start a run on a KFP server, or submit a Vertex AI PipelineJob; "
        "prints its URL. Parameters are checked first.",
    )
    _add_submit_options(p)
    p.set_defaults(func=cmd_submit)


def _add_trigger(sub) -> None:
    p = sub.add_parser(
        "trigger",
        help="start a run only when the data changed",
        description="Fingerprint the data (object names, sizes, generations); "
        "submit a run only when it changed since the last successful trigger, and say how "
        "(folders new, removed, grown, shrunk or with files replaced).",
    )
    p.add_argument("--data", required=True, help="data prefix (gs://…), also the data_source")
    p.add_argument("--state", required=True, help="state object, gs://…/state.json")
    _add_submit_options(p)
    p.set_defaults(func=cmd_trigger)


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="run the benchmarks side by side and write BENCHMARKS.md",
        description="Run every benchmark (or the named ones: analysis, preprocess, scale, "
        "training, cpu-step, end-to-end), each against its side-by-side baseline, and write "
        "the table to BENCHMARKS.md. cpu-step needs the bench extra (pip install -e '.[bench]'). "
        "On a GPU: python -m benchmarks.gpu_benchmark.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    p.add_argument("--output", default="BENCHMARKS.md", help="report file ('-': print only)")
    p.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bittune",
        description="Fine-tune BiT image classifiers with the BiT-HyperRule on Kubeflow Pipelines.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_hyperrule,
        _add_analyze,
        _add_preprocess,
        _add_train,
        _add_evaluate,
        _add_predict,
        _add_run,
        _add_compile,
        _add_submit,
        _add_trigger,
        _add_bench,
    ):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:  # a process of its own (not a call from Python): quiet TensorFlow
        from components.bit.tf_env import filter_native_noise

        filter_native_noise()
    try:
        args.func(args)
    except SubmittedWithWarning as exc:
        print(f"bittune: warning: {exc}", file=sys.stderr)
        return 1
    except BittuneError as exc:
        print(f"{ERROR_PREFIX}{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
