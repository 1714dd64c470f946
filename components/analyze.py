"""KFP component: analyze a dataset and derive its BiT-HyperRule."""

from kfp import dsl

from components.image import BITTUNE_IMAGE


@dsl.component(base_image=BITTUNE_IMAGE, install_kfp_package=False)
def analyze_dataset(
    source: str,
    analysis: dsl.Output[dsl.Dataset],
    report: dsl.Output[dsl.Markdown],
    report_html: dsl.Output[dsl.HTML],
    data_dir: str = "",
    split_fractions: str = "0.8,0.1,0.1",
    max_pixels: int = 100_000_000,
    variant: str = "reference",
    model: str = "",
    hyperrule_overrides: str = "{}",
    few_shot: int = 0,
) -> int:
    """Count and measure a labelled image dataset, flag broken files, derive the BiT-HyperRule.

    Args:
        source: Image folder (one sub-folder per class), CSV/JSONL manifest, or tfds:NAME.
        data_dir: TFDS data folder, or the data root that manifest paths must stay inside.
        split_fractions: train,validation,test fractions for sources without splits.
        max_pixels: Images above this many pixels are flagged as decompression bombs.
        variant: HyperRule variant: reference (BiT code) or paper.
        model: Model name, used by the paper variant (R152x4 keeps 512/480).
        hyperrule_overrides: JSON object overriding HyperRule fields, e.g. {"batch_size": 128}.
        few_shot: Keep k training images per class (BiT's k-shot setting); 0 keeps all.

    Returns:
        The number of valid training examples.
    """
    from components.bit.errors import exit_on_error

    exit_on_error()
    import shutil

    from components.bit import validation as v
    from components.bit.analysis import AnalysisConfig, analyze

    v.require(
        v.check_int("max_pixels", max_pixels, 1),
        v.check_int("few_shot", few_shot, 0),
        v.check_choice("variant", variant, v.VARIANTS),
    )
    config = AnalysisConfig(
        source=source,
        data_dir=data_dir or None,
        split_fractions=v.parse_fractions(split_fractions),
        max_pixels=max_pixels,
        variant=variant,
        model=model or None,
        overrides=v.parse_overrides(hyperrule_overrides),
        few_shot=few_shot or None,
        progress=False,
    )
    result = analyze(config, analysis.path)
    shutil.copyfile(f"{analysis.path}/report.md", report.path)
    shutil.copyfile(f"{analysis.path}/report.html", report_html.path)
    for key, value in result.stats["totals"].items():
        analysis.metadata[key] = value
    analysis.metadata["resize"], analysis.metadata["crop"] = (
        result.hyperrule.resize,
        result.hyperrule.crop,
    )
    for warning in result.stats["warnings"]:
        print(f"warning: {warning}")
    return result.hyperrule.examples
