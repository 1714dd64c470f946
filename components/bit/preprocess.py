"""Preprocessing: the analysed dataset as sharded, deterministic TFRecords, nothing valid lost.

The analysis's ``items.jsonl`` is the input table: every listed item with its split, header
facts and flag. From it a :class:`Plan` is derived (pure and deterministic): which items are
written, which are rejected and why, how many shards each split gets and which shard holds each
item.

**The shard plan.** A split gets ``max(ceil(estimated bytes / shard_bytes), ceil(examples /
shard_examples))`` shards (at most one per example): large images are capped by size (150 MiB by
default), small ones by count (2,048 examples by default), so that a dataset of small images
still has enough shards for many workers and parallel reads. Items are ordered by a seeded hash
of their identity and cut into equal runs, so shards differ by at most one example. The plan
depends on the data, the seed and the two limits only — never on the number of workers — so
shards are byte-identical whatever the number of workers.

**Work** fans out by shard: pipeline worker ``w`` of ``W`` writes the shards ``i`` with
``i % W == w`` (on one machine, each core takes the next unwritten shard)
(each under a temporary name, renamed when complete, with a small summary beside it in
``_shards/``). :func:`gather` then checks that inputs = written + rejected for every split and
class and writes the dataset files (:func:`components.bit.dataset.write_dataset_files`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from components.bit import dataset as ds
from components.bit import hyperrule, images, params, sources, storage, tfrecords
from components.bit.errors import BittuneError

SUMMARIES_DIR = "_shards"
DEFAULT_SHARD_MEGABYTES = params.PARAMETERS["shard_megabytes"].default
DEFAULT_SHARD_EXAMPLES = params.PARAMETERS["shard_examples"].default
# Stored JPEG bytes per pixel after pre-resizing, for planning shard counts (quality 95).
_JPEG_BYTES_PER_PIXEL = 0.5


class PreprocessError(BittuneError):
    """Preprocessing cannot run, or its output would lose or invent items."""


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """What preprocessing needs besides the analysis folder. Checked when made."""

    analysis_dir: str
    output_dir: str
    data_dir: str | None = None  # TFDS data folder (TFDS sources only)
    few_shot: int | None = None  # None: as the analysis was made
    seed: int = 0
    shard_megabytes: float = DEFAULT_SHARD_MEGABYTES
    shard_examples: int = DEFAULT_SHARD_EXAMPLES
    preprocess_workers: int | None = None  # processes on this machine; None: every core
    jpeg_quality: int = images.DEFAULT_JPEG_QUALITY
    background: tuple[int, int, int] = images.DEFAULT_BACKGROUND
    progress: bool | None = None

    def __post_init__(self) -> None:
        params.require_fields(self)
        if not 1 <= self.jpeg_quality <= 100:
            raise PreprocessError(f"JPEG quality must be in [1, 100], got {self.jpeg_quality}")

    @classmethod
    def from_params(cls, values: Mapping[str, Any], **fields: Any) -> PreprocessConfig:
        """The config from table values (component inputs, command-line options) and paths."""
        return params.config_from(cls, values, **fields)

    @property
    def shard_bytes(self) -> int:
        return int(self.shard_megabytes * 2**20)

    @property
    def processes(self) -> int:
        return self.preprocess_workers or os.cpu_count() or 1


class PlannedItem(NamedTuple):  # a tuple: a plan holds one per item, millions of them
    """One analysed item: whether and where it is written."""

    row: Mapping[str, Any]
    split: str
    shard: int
    order: str  # position inside the shard (a stable hash)
    reject: str | None  # reason, when the item will not be written


@dataclasses.dataclass(frozen=True)
class Plan:
    labels: list[str]
    rule: hyperrule.HyperRule
    shard_counts: dict[str, int]
    items: list[PlannedItem]
    few_shot: int | None
    source: Mapping[str, Any]
    profile: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # analysis' profile

    @property
    def resize(self) -> int:
        return self.rule.resize

    def shards(self) -> list[tuple[str, int]]:
        """Every (split, index), in a fixed global order."""
        return [(s, i) for s in ds.SPLITS for i in range(self.shard_counts.get(s, 0))]

    def shard_items(self, split: str, index: int) -> list[PlannedItem]:
        return self._by_shard().get((split, index), [])

    def name(self, split: str, index: int) -> str:
        return ds.shard_name(split, index, self.shard_counts[split])

    def _by_shard(self) -> dict[tuple[str, int], list[PlannedItem]]:
        cached = self.__dict__.get("_shard_index")
        if cached is None:
            cached = collections.defaultdict(list)
            for item in sorted(self.items, key=lambda p: p.order):
                cached[(item.split, item.shard)].append(item)
            object.__setattr__(self, "_shard_index", dict(cached))
        return cached


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make_plan(
    rows: Sequence[Mapping[str, Any]],
    stats: Mapping[str, Any],
    rule: hyperrule.HyperRule,
    few_shot: int | None = None,
    seed: int = 0,
    shard_bytes: int = int(DEFAULT_SHARD_MEGABYTES * 2**20),
    shard_examples: int = DEFAULT_SHARD_EXAMPLES,
) -> Plan:
    """Decide, for every analysed item, whether and where it is written."""
    labels = list(stats["classes"])
    known = set(labels)
    kept = _few_shot_choice(rows, few_shot, seed) if few_shot else None
    decided = [
        (row, _reject_reason(row, known, kept, few_shot), _hash(f"{seed}:{row['key']}"))
        for row in rows
    ]
    valid: dict[str, list[tuple[str, Mapping[str, Any]]]] = collections.defaultdict(list)
    estimates: dict[str, float] = collections.defaultdict(float)
    for row, reason, digest in decided:
        if reason is None:
            valid[row["split"]].append((digest, row))
            estimates[row["split"]] += _estimated_bytes(row, rule.resize)
    shard_counts = {
        split: shard_count(len(valid[split]), estimates[split], shard_bytes, shard_examples)
        for split in ds.SPLITS
        if split in valid
    }
    position: dict[str, int] = {}
    for split, members in valid.items():
        count, total = shard_counts[split], len(members)
        members.sort(key=lambda m: m[0])
        for rank, (_, row) in enumerate(members):
            position[row["key"]] = rank * count // total  # equal runs of the hash order
    items = [
        PlannedItem(
            row,
            row["split"],
            position.get(row["key"], int(digest[:12], 16) % shard_counts.get(row["split"], 1)),
            digest,
            reason,
        )
        for row, reason, digest in decided
    ]
    source, profile = dict(stats["source"]), dict(stats.get("profile", {}))
    return Plan(labels, rule, shard_counts, items, few_shot, source, profile)


def shard_count(examples: int, estimated_bytes: float, shard_bytes: int, shard_examples: int):
    """Shards for a split: enough for both limits, at most one per example."""
    wanted = max(math.ceil(estimated_bytes / shard_bytes), math.ceil(examples / shard_examples))
    return min(examples, max(1, wanted))


def _reject_reason(row, known: set[str], kept: set[str] | None, k: int | None) -> str | None:
    """Why an analysed item will not be written, or None."""
    if row["code"]:
        return f"{row['code']}: {row['reason']}"
    if row["label"] not in known:
        return f"class {row['label']!r} is not among the analysed classes"
    if kept is not None and row["split"] == "train" and row["key"] not in kept:
        return f"few-shot: not among the {k} training examples kept per class"
    return None


def _few_shot_choice(rows: Sequence[Mapping[str, Any]], k: int, seed: int) -> set[str]:
    """The k training items per class kept in few-shot mode, chosen by a seeded stable hash."""
    by_class: dict[str, list[str]] = collections.defaultdict(list)
    for row in rows:
        if row["split"] == "train" and not row["code"]:
            by_class[row["label"]].append(row["key"])
    keep: set[str] = set()
    for keys in by_class.values():
        keep.update(sorted(keys, key=lambda key: _hash(f"few-shot:{seed}:{key}"))[:k])
    return keep


def _estimated_bytes(row: Mapping[str, Any], resize: int) -> float:
    short = min(row["height"], row["width"])
    if short <= resize:
        return row["size_bytes"]
    scale = resize / short
    return row["height"] * row["width"] * scale * scale * _JPEG_BYTES_PER_PIXEL


def load_plan(config: PreprocessConfig) -> Plan:
    """Read the analysis folder and plan the run (once per process and analysis: the shard
    writers forked from this process, and gather afterwards, reuse it)."""
    key = (config.analysis_dir, _written_at(config.analysis_dir), config.few_shot, config.seed,
           config.shard_bytes, config.shard_examples)  # fmt: skip
    if key not in _plans or key[1] is None:
        analysis = ds.read_analysis(config.analysis_dir)
        analysed_k = analysis.stats["source"].get("few_shot")
        if config.few_shot is not None and config.few_shot != analysed_k:
            raise PreprocessError(
                f"few-shot k={config.few_shot} differs from the analysis (k={analysed_k}): "
                "the HyperRule depends on it, so re-run analyze with the same --few-shot"
            )
        _plans.clear()
        _plans[key] = make_plan(
            analysis.items,
            analysis.stats,
            analysis.rule,
            analysed_k,
            config.seed,
            config.shard_bytes,
            config.shard_examples,
        )
    return _plans[key]


_plans: dict[tuple, Plan] = {}


def _written_at(folder: str) -> tuple[int, ...] | None:
    """When a local analysis folder's files were written (None for gs://: not cached)."""
    if storage.is_gcs(folder):
        return None
    names = (ds.STATS_FILE, ds.ITEMS_FILE, ds.HYPERRULE_FILE)
    try:
        return tuple(os.stat(os.path.join(folder, name)).st_mtime_ns for name in names)
    except OSError:
        return None


def worker_plan(config: PreprocessConfig, workers: int) -> tuple[int, str]:
    """(workers to start, a line saying so): never more workers than shards, said aloud."""
    shards = len(load_plan(config).shards())
    used = max(1, min(workers, shards))
    line = f"{shards} shard(s) for {workers} worker(s)"
    if used < workers:
        line += f": starting {used}, since {workers - used} would have no shard to write"
    return used, line


# ---------------------------------------------------------------------------------------------
# Workers


@dataclasses.dataclass(frozen=True)
class _Job:
    """One item's work, sent to a worker process."""

    uri: str
    payload: bytes | None
    sha256: str
    max_pixels: int
    resize: int
    background: tuple[int, int, int]
    jpeg_quality: int


def _process(job: _Job) -> images.Stored | str:
    """Read, re-check and normalise one image; a reason string when it cannot be stored."""
    try:
        data = job.payload if job.payload is not None else storage.read_bytes(job.uri)
    except (OSError, storage.StorageError) as exc:
        return f"missing: cannot read ({exc})"
    info = images.inspect(data, None, job.max_pixels)
    if isinstance(info, images.Problem):
        return f"{info.code}: {info.reason}"
    if info.sha256 != job.sha256:
        return "changed since analysis: content hash differs (re-run analyze)"
    try:
        return images.prepare_for_storage(data, info, job.resize, job.background, job.jpeg_quality)
    except Exception as exc:  # a body that fails to decode despite a sound header
        return f"corrupt: cannot decode ({type(exc).__name__}: {exc})"


def write_shards(
    config: PreprocessConfig,
    worker_index: int = 0,
    num_workers: int = 1,
    out_dirs: Mapping[str, str] | None = None,
    progress: Callable[[int], object] | None = None,
) -> list[dict[str, Any]]:
    """Write this worker's shards; return their summaries. Each split's shards go to
    ``out_dirs[split]`` (default: the output folder). Shards already complete from an earlier,
    interrupted run are kept.

    Items are normalised in ``config.processes`` processes; ``progress(n)`` is
    called as items are done, and a log line is printed per shard.
    """
    if not 0 <= worker_index < num_workers:
        raise PreprocessError(f"worker index {worker_index} is not in [0, {num_workers})")
    plan = load_plan(config)
    mine = [shard for n, shard in enumerate(plan.shards()) if n % num_workers == worker_index]
    payloads = _tfds_payloads(plan, mine, config.data_dir)
    processes = config.processes
    folders = {split: (out_dirs or {}).get(split, config.output_dir) for split in ds.SPLITS}

    def log(summary: Mapping[str, Any], seconds: float) -> None:
        print(
            f"worker {worker_index}/{num_workers}: {summary['name']}: "
            f"{summary['examples']} examples, {summary['bytes'] / 2**20:.1f} MiB, "
            f"{summary['inputs'] / max(seconds, 1e-9):.0f} img/s",
            file=sys.stderr,
            flush=True,
        )

    return _write_in_turn(plan, config, mine, folders, payloads, processes, progress, log)


def _write_in_turn(plan, config, shards, folders, payloads, processes, progress, log=None):
    """Write ``shards`` one after another (keeping those already complete), their images
    normalised by ``processes`` processes as one stream, with no pause between shards;
    ``log(summary, seconds)`` after each shard written."""
    progress = progress or (lambda n: None)
    summaries: dict[tuple[str, int], dict[str, Any]] = {}
    todo = []
    for split, index in shards:
        found = _existing_summary(folders[split], split, index, plan)
        if found is None:
            todo.append(((split, index), _jobs(plan, config, split, index, payloads)))
        else:
            progress(found["inputs"])
            summaries[split, index] = found
    stream = [job for _, jobs in todo for job in jobs]
    with _processes(processes) as pool:
        chunk = max(1, min(8, len(stream) // 16))  # few images: every process gets work
        results = pool.imap(_process, stream, chunksize=chunk)
        for (split, index), jobs in todo:
            started = time.monotonic()
            mine = itertools.islice(results, len(jobs))
            summary = _write_shard(plan, split, index, folders[split], mine, progress)
            summaries[split, index] = summary
            if log:
                log(summary, time.monotonic() - started)
    return [summaries[shard] for shard in shards]


class _Inline:
    """The pool interface, in this process (one process: no pickling, no start-up)."""

    @staticmethod
    def imap(fn, iterable, chunksize=1):
        return map(fn, iterable)


def _quiet_worker() -> None:
    """Workers ignore Ctrl-C: the parent decides, and stops them (no traceback per worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _processes(count: int, always: bool = False) -> Iterator[Any]:
    """``count`` worker processes (or, for fewer than two unless ``always``, this process
    alone), stopped at once on an error or Ctrl-C instead of finishing the queued work."""
    if count < 2 and not always:
        yield _Inline()
        return
    pool = multiprocessing.get_context("fork").Pool(count, _quiet_worker)
    try:
        yield pool
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()


def _summary_uri(folder: str, name: str) -> str:
    return storage.join(folder, SUMMARIES_DIR, name + ".json")


def _existing_summary(folder: str, split: str, index: int, plan: Plan) -> dict[str, Any] | None:
    name = plan.name(split, index)
    uri = _summary_uri(folder, name)
    if not (storage.exists(uri) and storage.exists(storage.join(folder, name))):
        return None
    summary = json.loads(storage.read_text(uri))
    keys = [p.row["key"] for p in plan.shard_items(split, index)]
    return summary if summary.get("input_keys_sha256") == _hash("\n".join(keys)) else None


def _jobs(plan: Plan, config: PreprocessConfig, split: str, index: int, payloads) -> list[_Job]:
    """The work for each image of a shard that is not rejected by the plan, in order."""
    max_pixels = int(plan.source.get("max_pixels") or images.DEFAULT_MAX_PIXELS)
    return [
        _Job(
            p.row["uri"],
            payloads.get(p.row["key"]),
            p.row["sha256"],
            max_pixels,
            plan.resize,
            config.background,
            config.jpeg_quality,
        )
        for p in plan.shard_items(split, index)
        if p.reject is None
    ]


def _write_shard(plan: Plan, split: str, index: int, folder: str, results, progress):
    """Write one shard from ``results`` (one per image the plan keeps, in order) and its
    summary; return the summary."""
    name = plan.name(split, index)
    planned = plan.shard_items(split, index)
    label_index = {label: i for i, label in enumerate(plan.labels)}
    todo = [p for p in planned if p.reject is None]
    rejects = [_reject(p, p.reject) for p in planned if p.reject is not None]
    progress(len(rejects))
    per_class: collections.Counter[str] = collections.Counter()
    actions: collections.Counter[str] = collections.Counter()
    bytes_in = bytes_out = 0
    digest = hashlib.sha256()
    with _AtomicFile(storage.join(folder, name)) as f:
        for done, (item, result) in enumerate(zip(todo, results, strict=True), 1):
            if done % _PROGRESS_EVERY == 0:
                progress(_PROGRESS_EVERY)  # not per item: a shared counter costs a lock
            if isinstance(result, str):
                rejects.append(_reject(item, result))
                continue
            row = item.row
            record = tfrecords.Record(
                result.data,
                result.format,
                result.height,
                result.width,
                label_index[row["label"]],
                row["label"],
                row["uri"],
                row["sha256"],
            )
            framed = tfrecords.frame(tfrecords.encode_example(record))
            f.write(framed)
            digest.update(framed)
            per_class[row["label"]] += 1
            actions[result.action] += 1
            bytes_in += row["size_bytes"]
            bytes_out += len(result.data)
    progress(len(todo) % _PROGRESS_EVERY)
    summary = {
        "name": name,
        "split": split,
        "index": index,
        "inputs": len(planned),
        "examples": sum(per_class.values()),
        "per_class": dict(sorted(per_class.items())),
        "bytes": f.size,
        "sha256": digest.hexdigest(),
        "actions": dict(sorted(actions.items())),
        "image_bytes_in": bytes_in,
        "image_bytes_out": bytes_out,
        "rejects": rejects,
        "input_keys_sha256": _hash("\n".join(p.row["key"] for p in planned)),
    }
    storage.write_text(_summary_uri(folder, name), json.dumps(summary, ensure_ascii=False))
    return summary


_PROGRESS_EVERY = 64


def _reject(item: PlannedItem, reason: str) -> dict[str, Any]:
    row = item.row
    return {
        "key": row["key"],
        "uri": row["uri"],
        "label": row["label"],
        "split": item.split,
        "reason": reason,
    }


class _AtomicFile:
    """A file written under a hidden temporary name and renamed (or uploaded) when complete."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.size = 0
        if storage.is_gcs(uri):
            self._fd, self._tmp = tempfile.mkstemp(prefix="bittune-shard-")
        else:
            self._fd, self._tmp = storage.local_temp(uri)
        self._file = os.fdopen(self._fd, "wb", buffering=4 << 20)  # few, large writes

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.size += len(data)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self._file.close()
        try:
            if exc_type is None:
                if storage.is_gcs(self.uri):
                    storage.upload_file(self._tmp, self.uri)
                else:
                    storage.make_readable(self._tmp)
                    os.replace(self._tmp, self.uri)
        finally:
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)
        return False


def _tfds_payloads(plan: Plan, shards: Iterable[tuple[str, int]], data_dir: str | None):
    """Encoded images of the TFDS items in ``shards`` (other sources read from their URIs)."""
    if plan.source.get("kind") != "tfds":
        return {}
    wanted = {
        p.row["key"] for shard in shards for p in plan.shard_items(*shard) if p.reject is None
    }
    listing = sources.list_source(plan.source["uri"], data_dir)
    return {item.identity: item.payload for item in listing.items if item.identity in wanted}


# ---------------------------------------------------------------------------------------------
# Gathering


def read_summaries(folders: Iterable[str]) -> list[dict[str, Any]]:
    """The shard summaries workers left in ``folders`` (each a folder they wrote shards to),
    for shards that are there."""
    found = []
    for folder in folders:
        summaries = storage.join(folder, SUMMARIES_DIR)
        if not storage.is_dir(summaries):
            continue
        for entry in storage.list_files(summaries):
            summary = json.loads(storage.read_text(entry.uri))
            if storage.exists(storage.join(folder, summary["name"])):
                found.append(summary)
    return found


@dataclasses.dataclass
class _Totals:
    splits: dict[str, dict[str, Any]]
    rejects: list[dict[str, Any]]
    actions: collections.Counter
    bytes_in: int = 0
    bytes_out: int = 0


def _collect(plan: Plan, summaries: Sequence[Mapping[str, Any]]) -> _Totals:
    """Every planned shard's summary added up per split (a missing shard is an error)."""
    by_name = {summary["name"]: summary for summary in summaries}
    totals = _Totals({}, [], collections.Counter())
    for split, index in plan.shards():
        name = plan.name(split, index)
        if name not in by_name:
            raise PreprocessError(f"shard {name} is missing: a worker did not finish")
        summary = by_name[name]
        entry = totals.splits.setdefault(
            split, {"examples": 0, "bytes": 0, "per_class": {}, "rejected": 0, "shards": []}
        )
        entry["shards"].append(
            ds.Shard(name, summary["examples"], summary["bytes"], summary["sha256"])
        )
        entry["examples"] += summary["examples"]
        entry["bytes"] += summary["bytes"]
        entry["rejected"] += len(summary["rejects"])
        for label, n in summary["per_class"].items():
            entry["per_class"][label] = entry["per_class"].get(label, 0) + n
        totals.rejects += summary["rejects"]
        totals.actions.update(summary["actions"])
        totals.bytes_in += summary["image_bytes_in"]
        totals.bytes_out += summary["image_bytes_out"]
    totals.rejects += [_reject(p, p.reject) for p in plan.items if p.split not in plan.shard_counts]
    return totals


def gather(
    config: PreprocessConfig, summaries: Sequence[Mapping[str, Any]] | None = None
) -> ds.Manifest:
    """Check every shard is complete and nothing was lost, then write the dataset files.

    ``summaries`` are the workers' shard summaries (default: those in the output folder)."""
    plan = load_plan(config)
    if summaries is None:
        summaries = read_summaries([config.output_dir])
    totals = _collect(plan, summaries)
    check_accounting(plan, totals.splits, totals.rejects)
    manifest = ds.Manifest(
        labels=tuple(plan.labels),
        splits={
            name: ds.Split(
                examples=entry["examples"],
                bytes=entry["bytes"],
                per_class=dict(sorted(entry["per_class"].items())),
                rejected=entry["rejected"],
                shards=tuple(entry["shards"]),
            )
            for name, entry in sorted(totals.splits.items(), key=lambda e: ds.SPLITS.index(e[0]))
        },
        rule=plan.rule,
        source=dict(plan.source),
        totals={
            "inputs": len(plan.items),
            "written": sum(e["examples"] for e in totals.splits.values()),
            "rejected": len(totals.rejects),
        },
        preresize={
            "actions": dict(sorted(totals.actions.items())),
            "image_bytes_in": totals.bytes_in,
            "image_bytes_out": totals.bytes_out,
            "bytes_saved": totals.bytes_in - totals.bytes_out,
        },
        few_shot=plan.few_shot,
        seed=config.seed,
        shard_limits={"bytes": config.shard_bytes, "examples": config.shard_examples},
        leaked=_leaked(plan),
        profile=dict(plan.profile),
    )
    ds.write_dataset_files(config.output_dir, manifest, totals.rejects)
    return manifest


def _leaked(plan: Plan) -> dict[str, list[str]]:
    """Held-out split -> content hashes of its planned examples that analysis found to have
    a near-duplicate in training."""
    leaked: dict[str, list[str]] = collections.defaultdict(list)
    for p in plan.items:
        if p.reject is None and p.row.get("leaks_train"):
            leaked[p.split].append(p.row["sha256"])
    return {split: sorted(keys) for split, keys in sorted(leaked.items())}


def check_accounting(plan: Plan, splits: Mapping[str, Any], rejects: Sequence[Mapping[str, Any]]):
    """inputs = written + rejected, per split and class; raise loudly otherwise."""
    inputs = collections.Counter((p.split, p.row["label"]) for p in plan.items)
    done = collections.Counter((r["split"], r["label"]) for r in rejects)
    for split, entry in splits.items():
        for label, n in entry["per_class"].items():
            done[(split, label)] += n
    if inputs != done:
        diff = {
            f"{s}/{label}": inputs[(s, label)] - done[(s, label)]
            for s, label in set(inputs) | set(done)
            if inputs[(s, label)] != done[(s, label)]
        }
        raise PreprocessError(f"items lost or invented (inputs - written - rejected): {diff}")


def check_source_matches(config: PreprocessConfig, source: str) -> None:
    """Refuse a source other than the one the analysis was made of."""
    analysed = ds.read_analysis(config.analysis_dir).stats["source"]["uri"]

    def norm(uri: str) -> str:
        local = not (storage.is_gcs(uri) or uri.startswith(sources.TFDS_PREFIX))
        return os.path.abspath(uri) if local else uri.rstrip("/")

    if norm(source) != norm(analysed):
        raise PreprocessError(
            f"the analysis in {config.analysis_dir} is of {analysed}, not {source}"
        )


def completed_shards(config: PreprocessConfig) -> tuple[int, int]:
    """(shards already complete in the output folder, shards planned)."""
    plan = load_plan(config)
    done = sum(
        _existing_summary(config.output_dir, split, index, plan) is not None
        for split, index in plan.shards()
    )
    return done, len(plan.shards())


def preprocess(config: PreprocessConfig) -> ds.Manifest:
    """The whole step on this machine, on every core, then :func:`gather`.

    When the shards spread evenly over the cores, each core writes whole shards, taking the
    next unwritten one as it finishes (nothing is shipped between processes, and a slower core
    never holds the others up); otherwise (say 3 shards on 2 cores) the cores share the items
    of each shard in turn, and this process writes them.
    """
    plan = load_plan(config)
    processes = config.processes
    show = sys.stderr.isatty() if config.progress is None else config.progress
    from tqdm import tqdm

    shards = plan.shards()
    folders = dict.fromkeys(ds.SPLITS, config.output_dir)
    payloads = _tfds_payloads(plan, shards, config.data_dir)
    with tqdm(total=len(plan.items), unit="img", desc="preprocessing", disable=not show) as bar:
        if not _whole_shards_balance(len(shards), processes):
            _write_in_turn(plan, config, shards, folders, payloads, processes, bar.update)
        else:
            one_process = dataclasses.replace(config, preprocess_workers=1)
            _fan_out(one_process, plan, shards, folders, payloads, processes, bar)
    return gather(config)


def _whole_shards_balance(shards: int, processes: int) -> bool:
    """Whether whole shards keep ``processes`` busy nearly to the end: the last round of
    shards leaves at most a tenth of the processes' time idle."""
    if processes < 2:
        return False
    return shards / (processes * math.ceil(shards / processes)) >= 0.9


# What each forked shard writer works from (set in the parent before forking).
_writer: dict[str, Any] = {}


def _count_done(n: int) -> None:
    counter = _writer["counter"]
    with counter.get_lock():
        counter.value += n


def _write_one(shard: tuple[str, int]) -> None:
    w = _writer
    _write_in_turn(w["plan"], w["config"], [shard], w["folders"], w["payloads"], 1, _count_done)


def _fan_out(config, plan, shards, folders, payloads, workers: int, bar) -> None:
    """``workers`` processes write ``shards``, each taking the next one as it finishes;
    ``bar`` moves as they go."""
    counter = multiprocessing.get_context("fork").Value("q", 0)
    _writer.update(plan=plan, config=config, folders=folders, payloads=payloads, counter=counter)
    try:
        with _processes(workers, True) as pool:
            done = pool.imap_unordered(_write_one, shards)
            while True:
                try:
                    done.next(timeout=0.05)  # re-raises a writer's error here
                except multiprocessing.TimeoutError:
                    pass
                except StopIteration:
                    break
                bar.update(counter.value - bar.n)
    finally:
        _writer.clear()
    bar.update(counter.value - bar.n)
