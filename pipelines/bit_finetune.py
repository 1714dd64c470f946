"""The bit-finetune pipeline: wiring, display names, resources, caching and retries only (every
stage is a library call inside a component)."""

from kfp import dsl, kubernetes

from components.analyze import analyze_dataset
from components.evaluate import evaluate_model, push_model
from components.preprocess import gather_dataset, plan_workers, write_shards
from components.train import train_model

PIPELINE_NAME = "bit-finetune"
TRAINING_TIMEOUT_SECONDS = 48 * 3600


def _storage_bound(task, cpu: str, memory: str):
    """Resources, and retries with exponential backoff for tasks that mostly move data."""
    task.set_cpu_request(cpu).set_memory_request(memory)
    return task.set_retry(num_retries=3, backoff_duration="30s", backoff_factor=2.0)


@dsl.pipeline(
    name=PIPELINE_NAME, description="Fine-tune BiT on an image dataset with the BiT-HyperRule."
)
def bit_finetune(
    data_source: str,
    data_dir: str = "",
    split_fractions: str = "0.8,0.1,0.1",
    few_shot: int = 0,
    hyperrule_variant: str = "reference",
    model: str = "bittune-tiny",
    hyperrule_overrides: str = "{}",
    max_pixels: int = 100_000_000,
    preprocess_workers: int = 2,
    shard_megabytes: int = 150,
    seed: int = 0,
    random_crop: bool = True,
    random_flip: bool = True,
    mixup: bool = True,
    training_strategy: str = "auto",
    precision: str = "auto",
    checkpoint_every: int = 100,
    accelerator_type: str = "nvidia.com/gpu",
    accelerator_count: int = 1,
    training_node_selector: dict = {},  # noqa: B006 (KFP pipeline parameter default)
    training_tolerations: list = [],  # noqa: B006 (KFP pipeline parameter default)
    blessing_threshold: float = 0.0,
    baseline_model: str = "",
    baseline_tolerance: float = 0.0,
    serving_root: str = "",
):
    """Fine-tune BiT on an image dataset with the BiT-HyperRule.

    Args:
        data_source: Image folder (gs:// or /gcs/...), CSV/JSONL manifest, or tfds:NAME.
        data_dir: TFDS data folder, or the data root manifest paths must stay inside.
        split_fractions: train,validation,test fractions for sources without splits.
        few_shot: Keep k training images per class (BiT's k-shot setting); 0 keeps all.
        hyperrule_variant: reference (BiT code) or paper.
        model: BiT model name (bit-m-r50x1, BiT-M-R50x1, …), .npz or SavedModel path.
        hyperrule_overrides: JSON object overriding HyperRule fields, e.g. {"batch_size": 128}.
        max_pixels: Larger images are flagged as decompression bombs.
        preprocess_workers: Parallel TFRecord-writing workers.
        shard_megabytes: Target TFRecord shard size in MiB.
        seed: Seed for shard order, few-shot choice, shuffling and augmentation.
        random_crop: Random-crop augmentation (off for counting tasks).
        random_flip: Random-flip augmentation (off for localisation tasks).
        mixup: MixUp when the HyperRule turns it on.
        training_strategy: auto, default, mirrored, multiworker or tpu.
        precision: auto, float32, bfloat16 or float16.
        checkpoint_every: Steps between training checkpoints (a retried task resumes).
        accelerator_type: nvidia.com/gpu on Kubernetes; NVIDIA_L4, TPU_V5_LITEPOD… on Vertex.
        accelerator_count: Accelerators for training (0: CPU only).
        training_node_selector: Node selector for training, e.g.
            {"cloud.google.com/gke-accelerator": "nvidia-l4"}.
        training_tolerations: Tolerations for training, e.g. [{"key": "nvidia.com/gpu",
            "operator": "Exists", "effect": "NoSchedule"}].
        blessing_threshold: Minimum test accuracy for the model to be pushed.
        baseline_model: Baseline model (training output or SavedModel) to beat; "" for none.
        baseline_tolerance: How much below the baseline's accuracy is still blessed.
        serving_root: Versioned serving location (gs://…); "" keeps versions in the push artifact.
    """
    analyze = analyze_dataset(
        source=data_source,
        data_dir=data_dir,
        split_fractions=split_fractions,
        few_shot=few_shot,
        max_pixels=max_pixels,
        variant=hyperrule_variant,
        model=model,
        hyperrule_overrides=hyperrule_overrides,
    )
    _storage_bound(analyze, "4", "8G").set_display_name("analyze dataset").set_caching_options(True)

    workers = plan_workers(num_workers=preprocess_workers).set_display_name("plan workers")
    with dsl.ParallelFor(workers.output, name="preprocess-workers") as worker_index:
        shards = write_shards(
            analysis=analyze.outputs["analysis"],
            worker_index=worker_index,
            num_workers=preprocess_workers,
            data_dir=data_dir,
            shard_megabytes=shard_megabytes,
            seed=seed,
        )
        _storage_bound(shards, "4", "8G").set_display_name("write TFRecord shards")
        shards.set_caching_options(True)
    dataset = gather_dataset(
        analysis=analyze.outputs["analysis"],
        shards=dsl.Collected(shards.outputs["shards"]),
        shard_megabytes=shard_megabytes,
        seed=seed,
    )
    _storage_bound(dataset, "1", "2G").set_display_name("gather dataset").set_caching_options(True)

    trained = train_model(
        dataset=dataset.outputs["dataset"],
        analysis=analyze.outputs["analysis"],
        model_source=model,
        random_crop=random_crop,
        random_flip=random_flip,
        mixup=mixup,
        strategy=training_strategy,
        precision=precision,
        checkpoint_every=checkpoint_every,
        seed=seed,
    )
    trained.set_display_name("fine-tune BiT").set_caching_options(False)
    trained.set_accelerator_type(accelerator_type).set_accelerator_limit(accelerator_count)
    trained.set_cpu_request("8").set_memory_request("32G")
    trained.set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2.0)  # resumes
    kubernetes.add_node_selector_json(trained, training_node_selector)
    kubernetes.add_toleration_json(trained, training_tolerations)
    kubernetes.set_timeout(trained, TRAINING_TIMEOUT_SECONDS)

    evaluated = evaluate_model(
        dataset=dataset.outputs["dataset"],
        model=trained.outputs["model"],
        baseline_model=baseline_model,
        threshold=blessing_threshold,
        tolerance=baseline_tolerance,
    )
    evaluated.set_display_name("evaluate and gate").set_cpu_request("4").set_memory_request("16G")
    with dsl.If(evaluated.outputs["Output"] == True, name="blessed"):  # noqa: E712
        pushed = push_model(
            model=trained.outputs["model"],
            evaluation=evaluated.outputs["evaluation"],
            dataset=dataset.outputs["dataset"],
            serving_root=serving_root,
            model_source=model,
            pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        )
        _storage_bound(pushed, "1", "2G").set_display_name("push blessed model")
        pushed.set_caching_options(False)
