"""The bit-finetune pipeline: wiring only (every stage is a library call inside a component)."""

from kfp import dsl

from components.analyze import analyze_dataset
from components.evaluate import evaluate_model, push_model
from components.preprocess import gather_dataset, plan_workers, write_shards
from components.train import train_model

PIPELINE_NAME = "bit-finetune"


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Fine-tune BiT on an image dataset with the BiT-HyperRule.",
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
        checkpoint_every: Steps between training checkpoints.
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
    analyze.set_display_name("analyze dataset").set_caching_options(True)

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
        shards.set_display_name("write TFRecord shards").set_caching_options(True)
    dataset = gather_dataset(
        analysis=analyze.outputs["analysis"],
        shards=dsl.Collected(shards.outputs["shards"]),
        shard_megabytes=shard_megabytes,
        seed=seed,
    )
    dataset.set_display_name("gather dataset").set_caching_options(True)

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
    trained.set_display_name("fine-tune BiT")

    evaluated = evaluate_model(
        dataset=dataset.outputs["dataset"],
        model=trained.outputs["model"],
        baseline_model=baseline_model,
        threshold=blessing_threshold,
        tolerance=baseline_tolerance,
    ).set_display_name("evaluate and gate")
    with dsl.If(evaluated.outputs["Output"] == True, name="blessed"):  # noqa: E712
        push_model(
            model=trained.outputs["model"],
            evaluation=evaluated.outputs["evaluation"],
            dataset=dataset.outputs["dataset"],
            serving_root=serving_root,
            model_source=model,
            pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        ).set_display_name("push blessed model")
