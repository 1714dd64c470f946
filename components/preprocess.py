"""KFP components: plan the preprocessing workers, write TFRecord shards in parallel, gather."""

from kfp import dsl

from components.component import component
from components.image import BITTUNE_IMAGE

_ANALYSIS = "The analyze step's output (items.jsonl, stats.json, hyperrule.json)."


@component(
    BITTUNE_IMAGE,
    "Plan the shard-writing workers: no more workers than the dataset has shards.",
    {"analysis": _ANALYSIS},
    returns="The indices of the workers to fan out over.",
)
def plan_workers(
    analysis: dsl.Input[dsl.Dataset],
    preprocess_workers: int,
    shard_megabytes: float,
    shard_examples: int,
    seed: int,
) -> list[int]:
    from components.bit import stages

    return stages.plan_workers(locals())


@component(
    BITTUNE_IMAGE,
    "Write this worker's TFRecord shards (shard i where i % workers == worker_index, workers "
    "being preprocess_workers or, when fewer, the number of shards).",
    {
        "analysis": _ANALYSIS,
        "worker_index": "This worker's index.",
        "train_shards": "The training shards this worker wrote.",
        "holdout_shards": "The validation and test shards this worker wrote.",
        "summary": "What each shard holds and what was rejected (for the gather step).",
    },
)
def write_shards(
    analysis: dsl.Input[dsl.Dataset],
    worker_index: int,
    preprocess_workers: int,
    data_dir: str,
    shard_megabytes: float,
    shard_examples: int,
    seed: int,
    train_shards: dsl.Output[dsl.Dataset],
    holdout_shards: dsl.Output[dsl.Dataset],
    summary: dsl.Output[dsl.Artifact],
):
    from components.bit import stages

    stages.write_shards(locals())


@component(
    BITTUNE_IMAGE,
    "Check that inputs = written + rejected; write labels.json, manifest.json, rejects.json.",
    {
        "analysis": _ANALYSIS,
        "summaries": "Every worker's shard summaries.",
        "dataset": "The dataset's manifest (shards by name), labels and rejects.",
    },
    returns="The number of training examples written.",
)
def gather_dataset(
    analysis: dsl.Input[dsl.Dataset],
    summaries: dsl.Input[list[dsl.Artifact]],
    shard_megabytes: float,
    shard_examples: int,
    seed: int,
    dataset: dsl.Output[dsl.Dataset],
) -> int:
    from components.bit import stages

    return stages.gather_dataset(locals())
