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
    near_duplicates: bool,
    exclude_list: str,
    baseline_model: str,
    serving_root: str,
    hyperrule_variant: str,
    model: str,
    hyperrule_overrides: str,
    few_shot: int,
    analysis: dsl.Output[dsl.Dataset],
    report: dsl.Output[dsl.Markdown],
    report_html: dsl.Output[dsl.HTML],
) -> int:
    from components.bit import stages

    return stages.analyze_dataset(locals())
