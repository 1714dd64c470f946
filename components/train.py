"""KFP component: fine-tune BiT on the TFRecord dataset with the HyperRule."""

from kfp import dsl

from components.component import component
from components.image import BITTUNE_GPU_IMAGE, BITTUNE_TPU_IMAGE


def train_model(
    dataset: dsl.Input[dsl.Dataset],
    train_shards: dsl.Input[list[dsl.Dataset]],
    holdout_shards: dsl.Input[list[dsl.Dataset]],
    model: str,
    random_crop: bool,
    random_flip: bool,
    mixup: bool,
    training_strategy: str,
    precision: str,
    checkpoint_every: int,
    checkpoint_root: str,
    seed: int,
    accelerator: str,
    training_cpu: str,
    training_memory: str,
    training_replicas: int,
    pipeline_run_id: str,
    trained_model: dsl.Output[dsl.Model],
    checkpoints: dsl.Output[dsl.Artifact],
    logs: dsl.Output[dsl.Artifact],
) -> float:
    from components.bit.errors import exit_on_error, report_result

    exit_on_error()
    from components.bit import params

    params.require_inputs(locals())
    from components.bit.model_sources import check_model

    check_model(model)
    from components.bit.training import (
        TrainConfig,
        durable_folder,
        end_worker_replica,
        is_chief_replica,
        train,
    )

    def durable(name, artifact):
        return durable_folder(name, artifact.uri, artifact.path, checkpoint_root, pipeline_run_id)

    summary = train(
        TrainConfig(
            dataset_dir=dataset.path,
            model=model,
            output_dir=trained_model.path,
            shard_dirs=tuple(a.path for a in [*train_shards, *holdout_shards]),
            checkpoint_dir=durable("checkpoints", checkpoints),
            log_dir=durable("logs", logs),
            random_crop=random_crop,
            random_flip=random_flip,
            mixup=mixup,
            strategy=training_strategy,
            precision=precision,
            accelerator=accelerator,
            cpus=params.cpu_count(training_cpu),
            replicas=training_replicas,
            checkpoint_every=checkpoint_every,
            eval_every=checkpoint_every,
            seed=seed,
        )
    )
    if not is_chief_replica():  # several machines: only the chief reports
        end_worker_replica()
    trained_model.metadata.update(
        framework="tensorflow", steps=summary["steps"], model_source=model
    )
    history = summary["validation"]
    accuracy = history[-1]["accuracy"] if history else float("nan")
    trained_model.metadata["validation_accuracy"] = accuracy
    report_result(f"{summary['steps']} steps, validation accuracy {accuracy:.4f}")
    return accuracy


_DOCS = dict(
    summary="Fine-tune a BiT backbone with the BiT-HyperRule; export a SavedModel for serving.",
    own={
        "dataset": "The dataset's manifest (gather step).",
        "train_shards": "Every worker's training shards.",
        "holdout_shards": "Every worker's validation and test shards.",
        "pipeline_run_id": "The pipeline run, which keys checkpoints under checkpoint_root.",
        "accelerator": "What training was given: gpu, tpu or cpu (none found fails at once).",
        "trained_model": "The SavedModel with labels.json, hyperrule.json and training.json.",
        "checkpoints": "Training checkpoints (a retried task resumes from the latest).",
        "logs": "TensorBoard logs.",
    },
    returns="The last validation accuracy (NaN without a validation split).",
)
_function = train_model
train_model = component(BITTUNE_GPU_IMAGE, **_DOCS)(_function)  # GPUs (or the CPU)
train_model_tpu = component(BITTUNE_TPU_IMAGE, **_DOCS)(_function)  # Cloud TPUs
