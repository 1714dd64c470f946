"""The library entry of each pipeline step: what its KFP component runs, in one call.

A component passes its inputs (``locals()``: table parameters by their table names, KFP
artifacts by theirs) to the entry of the same name. :func:`stage` owns what every step shares:
a :class:`BittuneError` ends the step with its one line instead of a traceback
(:func:`errors.exit_on_error`), every input that is a table parameter is checked against the
table before any work, and the step's headline is reported when it is done. Each entry builds
its stage's config from the inputs in one call (``…Config.from_params``), runs the stage and
fills in the output artifacts' metadata. No KFP import: artifacts are used by their ``path``,
``uri`` and ``metadata``.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from components.bit import params
from components.bit.errors import exit_on_error, report_result

T = TypeVar("T")
Inputs = Mapping[str, Any]


def stage(run: Callable[[Inputs], tuple[T, str]]) -> Callable[[Inputs], T]:
    """A step's entry: one-line errors, the table's checks, then ``run`` (which returns the
    step's output value and its headline), then the headline."""

    @functools.wraps(run)
    def entry(inputs: Inputs) -> T:
        exit_on_error()
        params.require_inputs(inputs)
        value, headline = run(inputs)
        report_result(headline)
        return value

    return entry


def _read_json(*parts: str) -> Any:
    with open(os.path.join(*parts), encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------
# analyze


@stage
def analyze_dataset(inputs: Inputs) -> tuple[int, str]:
    from components.bit.analysis import AnalysisConfig, analyze
    from components.bit.splits import balance_line

    analysis, report, report_html = inputs["analysis"], inputs["report"], inputs["report_html"]
    # data_fingerprint is an input only so that changed data is not a cache hit
    result = analyze(AnalysisConfig.from_params(inputs, progress=False), analysis.path)
    shutil.copyfile(os.path.join(analysis.path, "report.md"), report.path)
    shutil.copyfile(os.path.join(analysis.path, "report.html"), report_html.path)
    totals = result.stats["totals"]
    analysis.metadata.update(totals)
    analysis.metadata.update(resize=result.hyperrule.resize, crop=result.hyperrule.crop)
    for warning in result.stats["warnings"]:
        print(f"warning: {warning}")
    headline = (
        f"{totals['inputs']:,} images analysed, {totals['valid']:,} valid, "
        f"{totals['flagged']:,} flagged"
    )
    near = result.stats.get("near_duplicates")
    if near:
        leaked = sum(near["leaked"].values())
        analysis.metadata.update(near_duplicate_groups=near["groups"], leaked=leaked)
        headline += f", {near['groups']:,} near-duplicate groups ({leaked:,} held out leaked)"
    if "split_balance" in result.stats:
        headline += f"; {balance_line(result.stats['split_balance'])}"
    drifted = result.stats.get("drift", {}).get("drifted")
    if drifted is not None:
        analysis.metadata.update(drifted=", ".join(drifted) or "none")
        headline += f"; drift: {', '.join(drifted) or 'none'}"
    return result.hyperrule.examples, headline


# ---------------------------------------------------------------------------------------------
# preprocess: plan the workers, write shards, gather


def _preprocess_config(inputs: Inputs, output_dir: str, **fields: Any):
    from components.bit.preprocess import PreprocessConfig

    # a pipeline worker is one of preprocess_workers tasks, and uses every core of its pod
    return PreprocessConfig.from_params(
        inputs,
        analysis_dir=inputs["analysis"].path,
        output_dir=output_dir,
        preprocess_workers=None,
        **fields,
    )


@stage
def plan_workers(inputs: Inputs) -> tuple[list[int], str]:
    from components.bit.preprocess import worker_plan

    count, message = worker_plan(_preprocess_config(inputs, ""), inputs["preprocess_workers"])
    return list(range(count)), message


@stage
def write_shards(inputs: Inputs) -> tuple[None, str]:
    from components.bit.preprocess import worker_plan, write_shards

    worker_index = inputs["worker_index"]
    train, holdout = inputs["train_shards"], inputs["holdout_shards"]
    params.require_worker(worker_index, inputs["preprocess_workers"])
    config = _preprocess_config(
        inputs, train.path, data_dir=inputs["data_dir"] or None, progress=False
    )
    folders = {"train": train.path, "validation": holdout.path, "test": holdout.path}
    workers, _ = worker_plan(config, inputs["preprocess_workers"])  # the count planned
    params.require_worker(worker_index, workers)
    summaries = write_shards(config, int(worker_index), workers, folders)
    summary = inputs["summary"]
    with open(summary.path, "w", encoding="utf-8") as f:
        json.dump(summaries, f, ensure_ascii=False)
    examples = sum(s["examples"] for s in summaries)
    summary.metadata.update(shards=len(summaries), examples=examples)
    return None, f"{len(summaries)} shard(s), {examples:,} examples written"


@stage
def gather_dataset(inputs: Inputs) -> tuple[int, str]:
    from components.bit.preprocess import gather

    dataset = inputs["dataset"]
    found = [row for artifact in inputs["summaries"] for row in _read_json(artifact.path)]
    manifest = gather(_preprocess_config(inputs, dataset.path), found)
    totals = manifest.totals
    dataset.metadata.update(totals)
    headline = (
        f"{totals['inputs']:,} inputs = {totals['written']:,} written + "
        f"{totals['rejected']:,} rejected"
    )
    return manifest.examples("train"), headline


# ---------------------------------------------------------------------------------------------
# train


@stage
def train_model(inputs: Inputs) -> tuple[float, str]:
    from components.bit import devices
    from components.bit.model_sources import check_model
    from components.bit.training import TrainConfig, durable_folder, train

    check_model(inputs["model"])
    model = inputs["trained_model"]

    def durable(name: str) -> str:
        artifact = inputs[name]
        root, run_id = inputs["checkpoint_root"], inputs["pipeline_run_id"]
        return durable_folder(name, artifact.uri, artifact.path, root, run_id)

    shards = [*inputs["train_shards"], *inputs["holdout_shards"]]
    config = TrainConfig.from_params(
        inputs,
        dataset_dir=inputs["dataset"].path,
        output_dir=model.path,
        shard_dirs=tuple(a.path for a in shards),
        checkpoint_dir=durable("checkpoints"),
        log_dir=durable("logs"),
        eval_every=inputs["checkpoint_every"],
    )
    result = train(config)
    if not devices.is_chief_replica():  # several machines: only the chief reports
        devices.end_worker_replica()
    model.metadata.update(framework="tensorflow", steps=result.steps, model_source=inputs["model"])
    if not result.validation:  # KFP cannot carry NaN: -1 stands for "no validation split"
        return -1.0, f"{result.steps} steps (no validation split)"
    accuracy = result.validation_accuracy
    model.metadata.update(validation_accuracy=accuracy)
    return accuracy, f"{result.steps} steps, validation accuracy {accuracy:.4f}"


# ---------------------------------------------------------------------------------------------
# evaluate and push


@stage
def evaluate_model(inputs: Inputs) -> tuple[bool, str]:
    from components.bit.evaluation import EvalConfig, evaluate, kfp_confusion_matrix

    evaluation, metrics = inputs["evaluation"], inputs["metrics"]
    os.makedirs(evaluation.path, exist_ok=True)
    config = EvalConfig.from_params(
        inputs,
        dataset_dir=inputs["dataset"].path,
        run=inputs["trained_model"].path,
        output_dir=evaluation.path,
        shard_dirs=tuple(a.path for a in inputs["holdout_shards"]),
        shard_uris=tuple(a.uri for a in inputs["holdout_shards"]),
        log_dir=inputs["logs"].path,
        serving_root=inputs["serving_root"] or None,
    )
    result = evaluate(config)
    values = result.metrics
    for name in ("accuracy", "top5_accuracy", "loss", "macro_f1", "expected_calibration_error"):
        metrics.log_metric(name, values[name])
    metrics.log_metric("examples", values["examples"])
    metrics.log_metric("accuracy_without_leaked", values["without_leaked"]["accuracy"])
    metrics.log_metric("leaked_examples", values["without_leaked"]["leaked"])
    metrics.log_metric("label_issues", len(result.label_issues))
    served = values.get("served_data") or {}
    if served.get("examples"):
        metrics.log_metric("accuracy_on_served_data", served["accuracy"])
        metrics.log_metric("served_accuracy_on_served_data", served["served_accuracy"])
    for c in result.comparisons:  # paired with the served model: the difference and its interval
        where = "" if c["rule"] == "baseline" else "_on_served_data"
        for name, key in (("difference", "difference"), ("difference_low", "low"),
                          ("difference_high", "high"), ("mcnemar_p", "p_value")):  # fmt: skip
            metrics.log_metric(f"accuracy_{name}{where}", c[key])
    inputs["confusion"].log_confusion_matrix(*kfp_confusion_matrix(result))
    shutil.copyfile(os.path.join(evaluation.path, "report.html"), inputs["report"].path)
    evaluation.metadata.update(blessed=result.blessed, reason=result.reason)
    verdict = "BLESSED" if result.blessed else "NOT BLESSED"
    compared = "".join(f"; {c['sentence']}" for c in result.comparisons)
    return result.blessed, f"{result.split} accuracy {values['accuracy']:.4f}, {verdict}{compared}"


@stage
def export_model(inputs: Inputs) -> tuple[str, str]:
    from components.bit import serving_extras

    evaluation = _read_json(inputs["evaluation"].path, "metrics.json")
    folder, metrics = inputs["extras"].path, inputs["metrics"]
    os.makedirs(folder, exist_ok=True)
    if not evaluation["blessed"]:
        return "", "not blessed: nothing to export"
    shards = {k: [a.path for a in inputs[f"{k}_shards"]] for k in ("holdout", "train")}
    extras = serving_extras.for_dataset(inputs["trained_model"].path, inputs["dataset"].path,
                                        evaluation["split"], shards["holdout"], shards["train"],
                                        inputs)  # fmt: skip
    serving_extras.write(extras, folder)
    for line in extras.notes:  # an export not pushed, and why
        print(line)
    for row in extras.parity:
        for name in ("agreement", "max_abs_diff", "accuracy"):
            metrics.log_metric(f"{row.format.replace('-', '_')}_{name}", getattr(row, name))
    kept = [p.format for p in extras.parity if p.pushed]
    warm = "warm-up requests" if serving_extras.WARMUP_FILE in extras.files else "no warm-up"
    return ",".join(kept), f"{warm}; exports: {', '.join(kept) or 'none'}"


@stage
def push_model(inputs: Inputs) -> tuple[str, str]:
    from components.bit import serving_extras
    from components.bit.push import model_card, push

    trained, evaluation, dataset = inputs["trained_model"], inputs["evaluation"], inputs["dataset"]
    pushed, serving_root = inputs["pushed"], inputs["serving_root"]
    card = model_card(
        _read_json(evaluation.path, "metrics.json"),
        _read_json(trained.path, "hyperrule.json"),
        _read_json(dataset.path, "manifest.json"),
        {
            "model_source": inputs["model"],
            "pipeline_run": inputs["pipeline_run"],
            "model": trained.uri,
            "dataset": dataset.uri,
            "evaluation": evaluation.uri,
        },
    )
    extras = serving_extras.read(inputs["extras"].path)  # warm-up requests, exports
    if extras.parity:
        card["exports"] = extras.card()
    target = push(trained.path, serving_root or pushed.path, card, extras.files).uri
    if not serving_root:  # kept in this step's artifact: name it by its storage URI
        target = pushed.uri + target[len(pushed.path) :]
    pushed.metadata["version_uri"] = target
    kept = [p.format for p in extras.parity if p.pushed]
    return target, f"pushed {target}" + (f" with {', '.join(kept)}" if kept else "")
