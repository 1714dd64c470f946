"""KFP component: fine-tune BiT on the TFRecord dataset with the HyperRule."""

from kfp import dsl

from components.image import BITTUNE_GPU_IMAGE


@dsl.component(base_image=BITTUNE_GPU_IMAGE, install_kfp_package=False)
def train_model(
    dataset: dsl.Input[dsl.Dataset],
    analysis: dsl.Input[dsl.Dataset],
    model: dsl.Output[dsl.Model],
    model_source: str = "bittune-tiny",
    random_crop: bool = True,
    random_flip: bool = True,
    mixup: bool = True,
    strategy: str = "auto",
    precision: str = "auto",
    checkpoint_every: int = 100,
    seed: int = 0,
) -> float:
    """Fine-tune a BiT backbone with the BiT-HyperRule; export a SavedModel for serving.

    Args:
        dataset: TFRecord dataset from the gather step (manifest.json, labels.json).
        analysis: The analyze step's output (hyperrule.json).
        model_source: BiT model name (bit-m-r50x1, BiT-M-R50x1, …), .npz or SavedModel path.
        random_crop: Random crop augmentation (off for counting tasks).
        random_flip: Random horizontal flip (off for localisation tasks).
        mixup: MixUp when the HyperRule turns it on.
        strategy: auto, default, mirrored, multiworker or tpu.
        precision: auto, float32, bfloat16 or float16.
        checkpoint_every: Steps between checkpoints (a retried task resumes from the latest).
        seed: Seed of shuffling and augmentation.

    Returns:
        The last validation accuracy (NaN without a validation split).
    """
    from components.bit.errors import exit_on_error

    exit_on_error()
    from components.bit import validation as v
    from components.bit.model_sources import check_model

    v.require(
        v.check_choice("strategy", strategy, v.STRATEGIES),
        v.check_choice("precision", precision, v.PRECISIONS),
        v.check_int("checkpoint_every", checkpoint_every, 1),
    )
    check_model(model_source)
    from components.bit.training import TrainConfig, train

    summary = train(
        TrainConfig(
            data_dir=dataset.path,
            hyperrule_path=f"{analysis.path}/hyperrule.json",
            model=model_source,
            output_dir=model.path,
            crop=random_crop,
            flip=random_flip,
            mixup=mixup,
            strategy=strategy,
            precision=precision,
            checkpoint_every=checkpoint_every,
            eval_every=checkpoint_every,
            seed=seed,
        )
    )
    model.metadata.update(framework="tensorflow", steps=summary["steps"], model_source=model_source)
    accuracy = summary["validation"][-1]["accuracy"] if summary["validation"] else float("nan")
    model.metadata["validation_accuracy"] = accuracy
    return accuracy
