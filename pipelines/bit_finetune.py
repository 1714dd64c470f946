"""The bit-finetune pipeline: wiring only (stages are library calls inside components)."""

from kfp import dsl

from components.analyze import analyze_dataset

PIPELINE_NAME = "bit-finetune"


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Fine-tune BiT on an image dataset with the BiT-HyperRule.",
)
def bit_finetune(
    data_source: str,
    data_dir: str = "",
    split_fractions: str = "0.8,0.1,0.1",
    hyperrule_variant: str = "reference",
    model: str = "",
    hyperrule_overrides: str = "{}",
    max_pixels: int = 100_000_000,
):
    """Fine-tune BiT on an image dataset with the BiT-HyperRule.

    Args:
        data_source: Image folder (gs:// or /gcs/...), CSV/JSONL manifest, or tfds:NAME.
        data_dir: TFDS data folder, or the data root manifest paths must stay inside.
        split_fractions: train,validation,test fractions for sources without splits.
        hyperrule_variant: reference (BiT code) or paper.
        model: BiT model name or checkpoint.
        hyperrule_overrides: JSON object overriding HyperRule fields.
        max_pixels: Larger images are flagged as decompression bombs.
    """
    analyze = analyze_dataset(
        source=data_source,
        data_dir=data_dir,
        split_fractions=split_fractions,
        max_pixels=max_pixels,
        variant=hyperrule_variant,
        model=model,
        hyperrule_overrides=hyperrule_overrides,
    )
    analyze.set_display_name("analyze dataset")
    analyze.set_caching_options(True)
