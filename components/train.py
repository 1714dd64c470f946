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
    from components.bit import stages

    return stages.train_model(locals())


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
    returns="The last validation accuracy (-1 without a validation split).",
)
_function = train_model
train_model = component(BITTUNE_GPU_IMAGE, **_DOCS)(_function)  # GPUs (or the CPU)
train_model_tpu = component(BITTUNE_TPU_IMAGE, **_DOCS)(_function)  # Cloud TPUs
