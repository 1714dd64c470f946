"""KFP components: write TFRecord shards in parallel workers, then gather them into a dataset."""

from kfp import dsl

from components.image import BITTUNE_IMAGE


@dsl.component(base_image=BITTUNE_IMAGE, install_kfp_package=False)
def plan_workers(num_workers: int) -> list:
    """List the preprocessing worker indices for the fan-out.

    Args:
        num_workers: Number of parallel preprocessing workers (at least 1).

    Returns:
        The worker indices 0..num_workers-1.
    """
    from components.bit.errors import exit_on_error

    exit_on_error()
    from components.bit import validation as v

    v.require(v.check_int("num_workers", num_workers, 1, 1000))
    return list(range(num_workers))


@dsl.component(base_image=BITTUNE_IMAGE, install_kfp_package=False)
def write_shards(
    analysis: dsl.Input[dsl.Dataset],
    shards: dsl.Output[dsl.Dataset],
    worker_index: int,
    num_workers: int,
    data_dir: str = "",
    shard_megabytes: int = 150,
    seed: int = 0,
):
    """Write this worker's share of the TFRecord shards (shard i where i % num_workers == worker).

    Args:
        analysis: The analyze step's output (items.jsonl, stats.json, hyperrule.json).
        worker_index: This worker's index.
        num_workers: Number of workers in the fan-out.
        data_dir: TFDS data folder (TFDS sources only).
        shard_megabytes: Target shard size in MiB.
        seed: Seed for shard order and few-shot choice.
    """
    from components.bit.errors import exit_on_error

    exit_on_error()
    from components.bit import validation as v
    from components.bit.preprocess import PreprocessConfig
    from components.bit.preprocess import write_shards as write

    v.require(
        v.check_int("num_workers", num_workers, 1, 1000),
        v.check_int("worker_index", worker_index, 0, num_workers - 1),
        v.check_int("shard_megabytes", shard_megabytes, 1, 10_000),
    )
    config = PreprocessConfig(
        analysis_dir=analysis.path,
        output_dir=shards.path,
        data_dir=data_dir or None,
        shard_bytes=shard_megabytes * 2**20,
        seed=seed,
        progress=False,
    )
    summaries = write(config, int(worker_index), num_workers)
    shards.metadata["shards"] = len(summaries)
    shards.metadata["examples"] = sum(s["examples"] for s in summaries)


@dsl.component(base_image=BITTUNE_IMAGE, install_kfp_package=False)
def gather_dataset(
    analysis: dsl.Input[dsl.Dataset],
    shards: dsl.Input[list[dsl.Dataset]],
    dataset: dsl.Output[dsl.Dataset],
    shard_megabytes: int = 150,
    seed: int = 0,
) -> int:
    """Check that inputs = written + rejected, then write labels.json, manifest.json, rejects.json.

    Args:
        analysis: The analyze step's output.
        shards: Every worker's shards.
        shard_megabytes: Target shard size in MiB (as the workers used).
        seed: Seed (as the workers used).

    Returns:
        The number of training examples written.
    """
    from components.bit.errors import exit_on_error

    exit_on_error()
    from components.bit import validation as v
    from components.bit.preprocess import PreprocessConfig, gather

    v.require(v.check_int("shard_megabytes", shard_megabytes, 1, 10_000))

    config = PreprocessConfig(
        analysis_dir=analysis.path,
        output_dir=dataset.path,
        shard_bytes=shard_megabytes * 2**20,
        seed=seed,
    )
    manifest = gather(config, [s.path for s in shards], [s.uri for s in shards])
    for key, value in manifest["totals"].items():
        dataset.metadata[key] = value
    return manifest["splits"]["train"]["examples"]
