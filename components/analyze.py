"""KFP component: analyze a dataset and derive its BiT-HyperRule."""

from kfp import dsl

from components.component import component
from components.image import BITTUNE_IMAGE


@component(
    BITTUNE_IMAGE,
    "Count and measure a labelled image dataset, flag broken files, derive the BiT-HyperRule.",
    {
        "analysis": "stats.json, hyperrule.json, items.jsonl and the reports.",
        "report": "The analysis report (Markdown).",
        "report_html": "The analysis report with its plots (HTML).",
    },
    returns="The number of valid training examples.",
)
def analyze_dataset(
    data_source: str,
    data_dir: str,
    data_fingerprint: str,
    split_fractions: str,
    max_pixels: int,
    hyperrule_variant: str,
    model: str,
    hyperrule_overrides: str,
    few_shot: int,
    analysis: dsl.Output[dsl.Dataset],
    report: dsl.Output[dsl.Markdown],
    report_html: dsl.Output[dsl.HTML],
) -> int:
    from components.bit.errors import exit_on_error, report_result

    exit_on_error()
    import shutil

    from components.bit import params
    from components.bit.analysis import AnalysisConfig, analyze

    params.require_inputs(locals())
    del data_fingerprint  # an input only so that changed data is not a cache hit
    result = analyze(
        AnalysisConfig(
            source=data_source,
            data_dir=data_dir or None,
            split_fractions=params.parse_fractions(split_fractions),
            max_pixels=max_pixels,
            variant=hyperrule_variant,
            model=model or None,
            overrides=params.parse_overrides(hyperrule_overrides),
            few_shot=few_shot or None,
            progress=False,
        ),
        analysis.path,
    )
    shutil.copyfile(f"{analysis.path}/report.md", report.path)
    shutil.copyfile(f"{analysis.path}/report.html", report_html.path)
    analysis.metadata.update(result.stats["totals"])
    analysis.metadata.update(resize=result.hyperrule.resize, crop=result.hyperrule.crop)
    for warning in result.stats["warnings"]:
        print(f"warning: {warning}")
    totals = result.stats["totals"]
    report_result(f"{totals['inputs']:,} images analysed, {totals['valid']:,} valid, "
                  f"{totals['flagged']:,} flagged")  # fmt: skip
    return result.hyperrule.examples
