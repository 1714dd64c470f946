"""The bit-finetune pipeline: wiring, display names, resources, caching and retries only (every
stage is a library call inside a component; every parameter comes from the one table,
:mod:`components.bit.params`, and reaches each component input of the same name).

Targets: ``kubeflow`` (KFP on Kubernetes: resource requests, node selector, tolerations and a
timeout for training through kfp-kubernetes), ``vertex`` (Vertex AI Pipelines: one YAML
document, resource limits, Vertex accelerator names) and ``local`` (kfp.local, which cannot
merge branch outputs: training has no TPU branch there).
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl.types import type_annotations

from components.analyze import analyze_dataset
from components.bit import params
from components.evaluate import evaluate_model
from components.image import BITTUNE_GPU_IMAGE
from components.preprocess import gather_dataset, plan_workers, write_shards
from components.push import push_model
from components.route import choose_trainer
from components.train import train_model, train_model_tpu
from components.vertex_job import custom_job, worker_pools

PIPELINE_NAME = "bit-finetune"
DESCRIPTION = "Fine-tune BiT on an image dataset with the BiT-HyperRule."
TARGETS = ("kubeflow", "vertex", "local")
TRAINING_TIMEOUT_SECONDS = 48 * 3600


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
    return task.set_retry(num_retries=3, backoff_duration="30s", backoff_factor=2.0)


def _training(task, p: dict[str, Any], target: str, name: str):
    """Training's accelerator, resources, retries (it resumes from its checkpoints) and, on
    Kubernetes, its node selector, tolerations and timeout."""
    task.set_display_name(name).set_caching_options(False)
    task.set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2.0)
    if target == "local":  # kfp.local can resolve no runtime resource settings
        return task
    task.set_accelerator_type(p["accelerator_type"]).set_accelerator_limit(p["accelerator_count"])
    _resources(task, p["training_cpu"], p["training_memory"], target)
    if target == "kubeflow":
        kubernetes.add_node_selector_json(task, p["training_node_selector"])
        kubernetes.add_toleration_json(task, p["training_tolerations"])
        kubernetes.set_timeout(task, TRAINING_TIMEOUT_SECONDS)
    return task


# (The functional form: KFP reads the field types, which must not be postponed strings.)
Trained = NamedTuple("Trained", [("trained_model", dsl.Model), ("logs", dsl.Artifact)])  # noqa: UP014


_TRAINING_INPUTS = {
    "dataset": "The dataset's manifest (gather step).",
    "train_shards": "Every worker's training shards.",
    "holdout_shards": "Every worker's validation and test shards.",
    "pipeline_run_id": "The pipeline run, which keys checkpoints under checkpoint_root.",
    "accelerator": "What training was given: gpu, tpu or cpu.",
}


def _graph(name: str, summary: str, body, target: str, with_accelerator: bool, extra=()):
    """A sub-pipeline taking the training component's inputs (``accelerator`` too, or not)
    plus training's machine settings (and ``extra`` table parameters), returning its model
    and logs."""
    inputs = [
        parameter
        for parameter in inspect.signature(train_model.python_func).parameters.values()
        if not type_annotations.is_artifact_wrapped_in_Output(parameter.annotation)
        and (with_accelerator or parameter.name != "accelerator")
    ]
    settings = ["accelerator_type", "accelerator_count", *extra]
    settings += list(params.KUBEFLOW_ONLY) if target == "kubeflow" else []
    inputs += [
        inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          annotation=params.PARAMETERS[n].type)
        for n in settings
    ]  # fmt: skip
    documented = params.describe(summary, [p.name for p in inputs], _TRAINING_INPUTS)
    signature = inspect.Signature(inputs, return_annotation=Trained)
    return dsl.pipeline(name=name)(params.signed(body, signature, documented))


def _on_machine(component, target: str, name: str):
    """One training task with its accelerator and resources, as a sub-pipeline: KFP passes
    pipeline values that only resource settings use into a condition branch through the
    inputs of a sub-pipeline, not directly."""

    def body(**x: Any) -> Trained:
        task = _training(component(**_args(component, x)), x, target, name)
        return Trained(task.outputs["trained_model"], task.outputs["logs"])

    return _graph(f"{component.name}-on-machine", name, body, target, with_accelerator=True)


def _on_machines(target: str):
    """Training on ``training_replicas`` Vertex AI machines: a CustomJob whose worker pools
    run the training component (components/vertex_job.py), as a sub-pipeline."""
    job, command = custom_job(train_model)

    def body(**x: Any) -> Trained:
        pools = worker_pools(**_args(worker_pools, x, command=command, image=BITTUNE_GPU_IMAGE))
        _resources(pools.set_display_name("worker pools"), "1", "2G", target)
        task = job(**_args(job, x, worker_pool_specs=pools.output))
        _resources(task.set_display_name("fine-tune BiT on several machines"), "1", "2G", target)
        task.set_caching_options(False).set_retry(num_retries=2, backoff_duration="60s")
        return Trained(task.outputs["trained_model"], task.outputs["logs"])

    summary = "Fine-tune BiT on several machines (a Vertex AI CustomJob)."
    return _graph("train-on-machines", summary, body, target, True, ["training_machine_type"])


def _training_graph(target: str):
    """Training as a sub-pipeline taking the training component's inputs: it chooses the TPU
    or the GPU image (on Vertex AI also several machines) and merges the branch that ran
    (dsl.OneOf). (A sub-pipeline, because KFP cannot pass a loop's dsl.Collected outputs into
    a condition branch directly.)"""
    on_tpu = _on_machine(train_model_tpu, target, "fine-tune BiT on TPU")
    on_gpu = _on_machine(train_model, target, "fine-tune BiT")
    on_many = _on_machines(target) if target == "vertex" else None

    def train_on_accelerator(**x: Any) -> Trained:
        route = choose_trainer(**_args(choose_trainer, x)).set_display_name("choose trainer")
        _resources(route, "1", "2G", target)
        branches = []
        if on_many is not None:
            with dsl.If(x["training_replicas"] > 1, name="on-several-machines"):
                branches.append(on_many(**_args(on_many, x, accelerator=route.output)))
            first = dsl.Elif(route.output == "tpu", name="on-tpu")
        else:
            first = dsl.If(route.output == "tpu", name="on-tpu")
        with first:
            branches.append(on_tpu(**_args(on_tpu, x, accelerator=route.output)))
        with dsl.Else(name="on-gpu-or-cpu"):
            branches.append(on_gpu(**_args(on_gpu, x, accelerator=route.output)))
        return Trained(
            dsl.OneOf(*(b.outputs["trained_model"] for b in branches)),
            dsl.OneOf(*(b.outputs["logs"] for b in branches)),
        )

    summary = "Fine-tune BiT on the accelerator asked for (TPU image or GPU image)."
    extra = ["training_machine_type"] if target == "vertex" else []
    return _graph("train-on-accelerator", summary, train_on_accelerator, target, False, extra)


def build(target: str = "kubeflow"):
    """The bit-finetune pipeline for ``target`` (kubeflow, vertex or local)."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r} (use {', '.join(TARGETS)})")
    signature_target = "vertex" if target == "vertex" else "kubeflow"
    training = None if target == "local" else _training_graph(target)

    @dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)
    @params.pipeline_signature(signature_target, DESCRIPTION)
    def bit_finetune(**p: Any) -> None:
        analyzed = analyze_dataset(**_args(analyze_dataset, p))
        _storage_bound(analyzed, "analyze dataset", "4", "8G", target).set_caching_options(True)
        analysis = analyzed.outputs["analysis"]

        planned = plan_workers(**_args(plan_workers, p, analysis=analysis))
        _storage_bound(planned, "plan workers", "1", "2G", target).set_caching_options(True)
        with dsl.ParallelFor(planned.output, name="preprocess-workers") as index:
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

        inputs = _args(
            train_model,
            p,
            dataset=dataset,
            train_shards=collected("train_shards"),
            holdout_shards=collected("holdout_shards"),
            pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        if target == "local":  # whatever this machine has
            trained = _training(train_model(**inputs, accelerator=""), p, target, "fine-tune BiT")
        else:
            settings = {name: p[name] for name in training.component_spec.inputs if name in p}
            trained = training(**{**settings, **inputs}).set_display_name("fine-tune BiT")
        model, logs = trained.outputs["trained_model"], trained.outputs["logs"]

        wired = {"dataset": dataset, "holdout_shards": collected("holdout_shards")}
        evaluated = evaluate_model(
            **_args(evaluate_model, p, trained_model=model, logs=logs, **wired)
        )
        _resources(evaluated.set_display_name("evaluate and gate"), "4", "16G", target)
        with dsl.If(evaluated.outputs["Output"] == True, name="blessed"):  # noqa: E712
            wired = {"trained_model": model, "dataset": dataset}
            wired["evaluation"] = evaluated.outputs["evaluation"]
            wired["pipeline_run"] = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
            pushed = push_model(**_args(push_model, p, **wired))
            _storage_bound(pushed, "push blessed model", "1", "2G", target)
            pushed.set_caching_options(False)

    return bit_finetune


bit_finetune = build("kubeflow")
