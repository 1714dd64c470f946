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
    shard_megabytes: int,
    shard_examples: int,
    seed: int,
) -> list[int]:
    from components.bit.errors import exit_on_error, report_result

    exit_on_error()
    from components.bit import params
    from components.bit.preprocess import PreprocessConfig, worker_plan

    params.require_inputs(locals())
    config = PreprocessConfig(
        analysis.path,
        "",
        seed=seed,
        shard_bytes=shard_megabytes * 2**20,
        shard_examples=shard_examples,
    )
    count, message = worker_plan(config, preprocess_workers)
    report_result(message)
    return list(range(count))


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
    shard_megabytes: int,
    shard_examples: int,
    seed: int,
    train_shards: dsl.Output[dsl.Dataset],
    holdout_shards: dsl.Output[dsl.Dataset],
    summary: dsl.Output[dsl.Artifact],
):
    from components.bit.errors import exit_on_error, report_result

    exit_on_error()
    import json

    from components.bit import params
    from components.bit.preprocess import PreprocessConfig, worker_plan, write_shards

    params.require_inputs(locals())
    params.require_worker(worker_index, preprocess_workers)
    config = PreprocessConfig(
        analysis.path,
        train_shards.path,
        data_dir=data_dir or None,
        seed=seed,
        shard_bytes=shard_megabytes * 2**20,
        shard_examples=shard_examples,
        progress=False,
    )
    folders = {"train": train_shards.path, "validation": holdout_shards.path}
    folders["test"] = holdout_shards.path
    workers, _ = worker_plan(config, preprocess_workers)  # the count plan_workers chose
    params.require_worker(worker_index, workers)
    summaries = write_shards(config, int(worker_index), workers, folders)
    with open(summary.path, "w", encoding="utf-8") as f:
        json.dump(summaries, f, ensure_ascii=False)
    examples = sum(s["examples"] for s in summaries)
    summary.metadata.update(shards=len(summaries), examples=examples)
    report_result(f"{len(summaries)} shard(s), {examples:,} examples written")


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
    shard_megabytes: int,
    shard_examples: int,
    seed: int,
    dataset: dsl.Output[dsl.Dataset],
) -> int:
    from components.bit.errors import exit_on_error, report_result

    exit_on_error()
    import json

    from components.bit import params
    from components.bit.preprocess import PreprocessConfig, gather

    params.require_inputs(locals())
    config = PreprocessConfig(
        analysis.path,
        dataset.path,
        seed=seed,
        shard_bytes=shard_megabytes * 2**20,
        shard_examples=shard_examples,
    )
    found = []
    for artifact in summaries:
        with open(artifact.path, encoding="utf-8") as f:
            found += json.load(f)
    manifest = gather(config, found)
    dataset.metadata.update(manifest.totals)
    totals = manifest.totals
    report_result(f"{totals['inputs']:,} inputs = {totals['written']:,} written + "
                  f"{totals['rejected']:,} rejected")  # fmt: skip
    return manifest.examples("train")
