"""The bit-finetune pipeline: wiring, display names, resources, caching and retries only (every
stage is a library call inside a component; every parameter comes from the one table,
:mod:`components.bit.params`, and reaches each component input of the same name).

Targets: ``kubeflow`` (KFP on Kubernetes: resource requests, node selector, tolerations and a
timeout for training through kfp-kubernetes), ``vertex`` (Vertex AI Pipelines: one YAML
document, resource limits, Vertex accelerator names) and ``local`` (kfp.local).

Only constructs every supported backend (KFP 2.14.0 and newer, Vertex AI) handles: training's
machine is fixed at compile time (:mod:`components.bit.machines`), so training is one task at
the root that takes the collected shard lists directly, as evaluation does -- no condition
branch, no sub-pipeline, no ``dsl.OneOf``; accelerator type and count are constants.
"""

from __future__ import annotations

from typing import Any

from kfp import dsl, kubernetes

from components.analyze import analyze_dataset
from components.bit import params
from components.bit.machines import TrainingMachine
from components.evaluate import evaluate_model
from components.export import export_model
from components.image import BITTUNE_GPU_IMAGE, BITTUNE_TPU_IMAGE
from components.preprocess import gather_dataset, plan_workers, write_shards
from components.push import push_model
from components.train import train_model, train_model_tpu
from components.vertex_job import training_job

PIPELINE_NAME = "bit-finetune"
DESCRIPTION = "Fine-tune BiT on an image dataset with the BiT-HyperRule."
TARGETS = ("kubeflow", "vertex", "local")
TRAINING_TIMEOUT_SECONDS = 48 * 3600
# Argo refuses a retry, and ends a retried attempt, once the first attempt's start plus the
# retry strategy's backoff.maxDuration has passed (the SDK's default is one hour); a schedule
# can run for the whole timeout, so a preempted training task must stay retryable that long.
RETRY_WINDOW_SECONDS = TRAINING_TIMEOUT_SECONDS + 3600
# The same window for the steps that move data (analyze, plan, write-shards, gather, push): with
# the default hour, a step whose first attempt ran an hour on a large dataset is not retried,
# and a retry still running an hour after the first start is killed (Argo processNodeRetries,
# workflowpod.go getDeadline: ARGO_DEADLINE).
DATA_RETRY_WINDOW_SECONDS = 24 * 3600
TRAINING_RETRIES = 2


def _args(component, p: dict[str, Any], **wired: Any) -> dict[str, Any]:
    """The component's inputs: the pipeline parameters of the same names, plus ``wired``."""
    names = component.component_spec.inputs or {}
    return {**{name: p[name] for name in names if name in p}, **wired}


def _resources(task, cpu, memory, target: str):
    """Vertex AI sizes machines from limits; Kubernetes schedules by requests."""
    if target == "vertex":
        return task.set_cpu_limit(cpu).set_memory_limit(memory)
    return task.set_cpu_request(cpu).set_memory_request(memory)


def _storage_bound(task, name: str, cpu: str, memory: str, target: str):
    """Display name, resources, and retries with backoff for tasks that mostly move data."""
    _resources(task.set_display_name(name), cpu, memory, target)
    return task.set_retry(
        num_retries=3,
        backoff_duration="30s",
        backoff_factor=2.0,
        backoff_max_duration=f"{DATA_RETRY_WINDOW_SECONDS}s",
    )


def _retried_training(task, machine: TrainingMachine):
    """A training task's display name (what it runs on), no caching, and retries for as long as
    a schedule can run (it resumes from its checkpoints)."""
    task.set_display_name(f"fine-tune BiT ({machine.describe()})").set_caching_options(False)
    return task.set_retry(
        num_retries=TRAINING_RETRIES,
        backoff_duration="60s",
        backoff_factor=2.0,
        backoff_max_duration=f"{RETRY_WINDOW_SECONDS}s",
    )


def _training(task, p: dict[str, Any], machine: TrainingMachine, target: str):
    """Training's display name, retries, accelerator and resources and, on Kubernetes, its
    node selector, tolerations and timeout."""
    _retried_training(task, machine)
    if target == "local":  # kfp.local can resolve no resource settings
        return task
    if machine.accelerator != "cpu":  # constants: every backend turns them into a pod limit
        task.set_accelerator_type(machine.accelerator_type)
        task.set_accelerator_limit(machine.accelerator_count)
    _resources(task, p["training_cpu"], p["training_memory"], target)
    if target == "kubeflow":
        kubernetes.add_node_selector_json(task, p["training_node_selector"])
        kubernetes.add_toleration_json(task, p["training_tolerations"])
        kubernetes.set_timeout(task, TRAINING_TIMEOUT_SECONDS)
    return task


def _train(p: dict[str, Any], inputs: dict[str, Any], machine: TrainingMachine, target: str):
    """One training task at the root, taking the collected shard lists directly: the TPU or
    the GPU image; on Vertex AI, a TPU host or several machines train as a CustomJob that names
    its machine type (components/vertex_job.py)."""
    component = train_model_tpu if machine.accelerator == "tpu" else train_model
    inputs = {**inputs, "accelerator": machine.accelerator}
    if machine.custom_job(target):  # several machines, a TPU VM, or a machine type asked for
        image = BITTUNE_TPU_IMAGE if machine.accelerator == "tpu" else BITTUNE_GPU_IMAGE
        job = training_job(component, machine, image)
        return _retried_training(_resources(job(**_args(job, p, **inputs)), "1", "2G", target),
                                 machine)  # fmt: skip
    return _training(component(**_args(component, p, **inputs)), p, machine, target)


def build(target: str = "kubeflow", machine: TrainingMachine | None = None):
    """The bit-finetune pipeline for ``target`` (kubeflow, vertex or local), training on
    ``machine`` (default: one GPU; locally, whatever this machine has)."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r} (use {', '.join(TARGETS)})")
    signature_target = "vertex" if target == "vertex" else "kubeflow"
    machine = (machine or TrainingMachine("" if target == "local" else "gpu")).resolved(target)
    description = f"{DESCRIPTION} Training: {machine.describe()}."

    @dsl.pipeline(name=PIPELINE_NAME, description=description)
    @params.pipeline_signature(signature_target, description)
    def bit_finetune(**p: Any) -> None:
        analyzed = analyze_dataset(**_args(analyze_dataset, p))
        _storage_bound(analyzed, "analyze dataset", "4", "8G", target).set_caching_options(True)
        analysis = analyzed.outputs["analysis"]

        planned = plan_workers(**_args(plan_workers, p, analysis=analysis))
        _storage_bound(planned, "plan workers", "1", "2G", target).set_caching_options(True)
        # Unnamed: before KFP 2.16.0 the loop's drivers record it under its display name and the
        # collecting consumers look it up by its key (for-loop-1), so a named loop fails there
        # (kubeflow/pipelines issue 11964, PR 12808). Its tasks keep their display names.
        with dsl.ParallelFor(planned.output) as index:
            wired = {"analysis": analysis, "worker_index": index}
            shards = write_shards(**_args(write_shards, p, **wired))
            _storage_bound(shards, "write TFRecord shards", "4", "8G", target)
            shards.set_caching_options(True)

        def collected(name: str):  # one per consumer: the compiler rewrites the one it is given
            return dsl.Collected(shards.outputs[name])

        wired = {"analysis": analysis, "summaries": collected("summary")}
        gathered = gather_dataset(**_args(gather_dataset, p, **wired))
        _storage_bound(gathered, "gather dataset", "1", "2G", target).set_caching_options(True)
        dataset = gathered.outputs["dataset"]

        inputs = {
            "dataset": dataset,
            "train_shards": collected("train_shards"),
            "holdout_shards": collected("holdout_shards"),
            "pipeline_run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            "training_replicas": machine.training_replicas,
        }
        trained = _train(p, inputs, machine, target)
        model, logs = trained.outputs["trained_model"], trained.outputs["logs"]

        wired = {"dataset": dataset, "holdout_shards": collected("holdout_shards")}
        evaluated = evaluate_model(
            **_args(evaluate_model, p, trained_model=model, logs=logs, **wired)
        )
        _resources(evaluated.set_display_name("evaluate and gate"), "4", "16G", target)
        # at the root: a collected list cannot enter a condition (KFP's compiler refuses it)
        wired = {"trained_model": model, "dataset": dataset}
        wired["evaluation"] = evaluated.outputs["evaluation"]
        wired |= {name: collected(name) for name in ("holdout_shards", "train_shards")}
        exported = export_model(**_args(export_model, p, **wired))  # nothing unless blessed
        _resources(exported.set_display_name("export and warm up"), "2", "8G", target)
        with dsl.If(evaluated.outputs["Output"] == True, name="blessed"):  # noqa: E712
            wired = {"trained_model": model, "dataset": dataset}
            wired["evaluation"] = evaluated.outputs["evaluation"]
            wired["extras"] = exported.outputs["extras"]
            wired["pipeline_run"] = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
            pushed = push_model(**_args(push_model, p, **wired))
            _storage_bound(pushed, "push blessed model", "1", "2G", target)
            pushed.set_caching_options(False)

    return bit_finetune


bit_finetune = build("kubeflow")
