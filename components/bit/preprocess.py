"""Preprocessing: the analysed dataset as sharded, deterministic TFRecords, nothing valid lost.

The analysis's ``items.jsonl`` is the input table: every listed item with its split, header
facts and flag. From it a :class:`Plan` is derived (pure and deterministic): which items are
written, which are rejected and why, how many shards each split gets and which shard holds each
item. Work fans out by shard: worker ``w`` of ``W`` writes the shards ``i`` with
``i % W == w`` (each under a temporary name, renamed when complete, with a small summary beside
it), so the shards are byte-identical whatever the number of workers. :func:`gather` then checks
that inputs = written + rejected for every split and class and writes ``labels.json``,
``manifest.json`` (last: its presence marks a complete dataset) and ``rejects.json``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from components.bit import analysis, hyperrule, images, sources, storage, tfrecords
from components.bit.errors import BittuneError

SCHEMA = "bittune.tfrecords/v1"
MANIFEST_FILE = "manifest.json"
LABELS_FILE = "labels.json"
REJECTS_FILE = "rejects.json"
SUMMARIES_DIR = "_shards"
DEFAULT_SHARD_BYTES = 150 * 2**20
# Stored JPEG bytes per pixel after pre-resizing, for planning shard counts (quality 95).
_JPEG_BYTES_PER_PIXEL = 0.5


class PreprocessError(BittuneError):
    """Preprocessing cannot run, or its output would lose or invent items."""


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """What preprocessing needs besides the analysis folder."""

    analysis_dir: str
    output_dir: str
    data_dir: str | None = None  # TFDS data folder (TFDS sources only)
    few_shot: int | None = None  # None: as the analysis was made
    seed: int = 0
    shard_bytes: int = DEFAULT_SHARD_BYTES
    processes: int = 0  # 0: every core
    jpeg_quality: int = images.DEFAULT_JPEG_QUALITY
    background: tuple[int, int, int] = images.DEFAULT_BACKGROUND
    progress: bool | None = None


@dataclasses.dataclass(frozen=True)
class PlannedItem:
    row: Mapping[str, Any]
    split: str
    shard: int
    order: str  # position inside the shard (a stable hash)
    reject: str | None  # reason, when the item will not be written


@dataclasses.dataclass(frozen=True)
class Plan:
    labels: list[str]
    resize: int
    shard_counts: dict[str, int]
    items: list[PlannedItem]
    few_shot: int | None
    source: Mapping[str, Any]

    def shards(self) -> list[tuple[str, int]]:
        """Every (split, index), in a fixed global order."""
        return [(s, i) for s in sources.SPLITS for i in range(self.shard_counts.get(s, 0))]

    def shard_items(self, split: str, index: int) -> list[PlannedItem]:
        chosen = [p for p in self.items if p.split == split and p.shard == index]
        return sorted(chosen, key=lambda p: p.order)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make_plan(
    rows: Sequence[Mapping[str, Any]],
    stats: Mapping[str, Any],
    resize: int,
    few_shot: int | None = None,
    seed: int = 0,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> Plan:
    """Decide, for every analysed item, whether and where it is written."""
    if shard_bytes < 1:
        raise PreprocessError(f"shard size must be positive, got {shard_bytes}")
    if few_shot is not None and few_shot < 1:
        raise PreprocessError(f"few-shot k must be at least 1, got {few_shot}")
    labels = list(stats["classes"])
    known = set(labels)
    chosen = _few_shot_choice(rows, few_shot, seed) if few_shot else None
    decided: list[tuple[Mapping[str, Any], str | None]] = []
    for row in rows:
        if row["code"]:
            reason = f"{row['code']}: {row['reason']}"
        elif row["label"] not in known:
            reason = f"class {row['label']!r} is not among the analysed classes"
        elif chosen is not None and row["split"] == "train" and row["key"] not in chosen:
            reason = f"few-shot: not among the {few_shot} training examples kept per class"
        else:
            reason = None
        decided.append((row, reason))
    estimates: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.Counter()
    for row, reason in decided:
        if reason is None:
            estimates[row["split"]] += _estimated_bytes(row, resize)
            counts[row["split"]] += 1
    shard_counts = {
        split: min(counts[split], max(1, math.ceil(estimates[split] / shard_bytes)))
        for split in sources.SPLITS
        if counts[split]
    }
    items = []
    for row, reason in decided:
        digest = _hash(f"{seed}:{row['key']}")
        count = shard_counts.get(row["split"], 1)
        items.append(PlannedItem(row, row["split"], int(digest[:12], 16) % count, digest, reason))
    return Plan(labels, resize, shard_counts, items, few_shot, dict(stats["source"]))


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


def _read(analysis_dir: str, name: str) -> str:
    try:
        return storage.read_text(storage.join(analysis_dir, name))
    except (FileNotFoundError, storage.StorageError):
        raise PreprocessError(
            f"{analysis_dir} is not an analysis folder: no {name} (run `bittune analyze` first)"
        ) from None


def load_plan(config: PreprocessConfig) -> Plan:
    """Read the analysis folder and plan the run."""
    stats = json.loads(_read(config.analysis_dir, analysis.STATS_FILE))
    lines = _read(config.analysis_dir, analysis.ITEMS_FILE).splitlines()
    rows = [json.loads(line) for line in lines if line]
    rule = hyperrule.from_dict(json.loads(_read(config.analysis_dir, analysis.HYPERRULE_FILE)))
    analysed_k = stats["source"].get("few_shot")
    if config.few_shot is not None and config.few_shot != analysed_k:
        raise PreprocessError(
            f"few-shot k={config.few_shot} differs from the analysis (k={analysed_k}): "
            "the HyperRule depends on it, so re-run analyze with the same --few-shot"
        )
    return make_plan(rows, stats, rule.resize, analysed_k, config.seed, config.shard_bytes)


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
    out_dir: str | None = None,
    progress: Callable[[int], object] | None = None,
) -> list[dict[str, Any]]:
    """Write this worker's shards into ``out_dir`` (default: the output folder); return their
    summaries. Shards already complete from an earlier, interrupted run are kept.

    Items are normalised in ``config.processes`` processes (0: every core); ``progress(n)`` is
    called as items are done, and a log line is printed per shard.
    """
    if not 0 <= worker_index < num_workers:
        raise PreprocessError(f"worker index {worker_index} is not in [0, {num_workers})")
    plan = load_plan(config)
    out_dir = out_dir or config.output_dir
    mine = [shard for n, shard in enumerate(plan.shards()) if n % num_workers == worker_index]
    payloads = _tfds_payloads(plan, mine, config.data_dir)
    processes = config.processes or os.cpu_count() or 1
    progress = progress or (lambda n: None)
    summaries = []
    with ProcessPoolExecutor(processes) if processes > 1 else _InlineExecutor() as pool:
        for split, index in mine:
            summary = _existing_summary(out_dir, split, index, plan)
            if summary is None:
                started = time.monotonic()
                summary = _write_shard(
                    plan, config, split, index, out_dir, pool, payloads, progress
                )
                elapsed = time.monotonic() - started
                print(
                    f"worker {worker_index}/{num_workers}: {summary['name']}: "
                    f"{summary['examples']} examples, {summary['bytes'] / 2**20:.1f} MiB, "
                    f"{summary['inputs'] / max(elapsed, 1e-9):.0f} img/s",
                    file=sys.stderr,
                    flush=True,
                )
            else:
                progress(summary["inputs"])
            summaries.append(summary)
    return summaries


class _InlineExecutor:
    """The executor interface, in this process (one process: no pickling, no start-up)."""

    def map(self, fn, iterable, chunksize=1):
        return map(fn, iterable)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _summary_uri(out_dir: str, name: str) -> str:
    return storage.join(out_dir, SUMMARIES_DIR, name + ".json")


def _existing_summary(out_dir: str, split: str, index: int, plan: Plan) -> dict[str, Any] | None:
    name = tfrecords.shard_name(split, index, plan.shard_counts[split])
    uri = _summary_uri(out_dir, name)
    if not (storage.exists(uri) and storage.exists(storage.join(out_dir, name))):
        return None
    summary = json.loads(storage.read_text(uri))
    keys = [p.row["key"] for p in plan.shard_items(split, index)]
    return summary if summary.get("input_keys_sha256") == _hash("\n".join(keys)) else None


def _write_shard(plan, config, split, index, out_dir, pool, payloads, progress) -> dict[str, Any]:
    name = tfrecords.shard_name(split, index, plan.shard_counts[split])
    planned = plan.shard_items(split, index)
    label_index = {label: i for i, label in enumerate(plan.labels)}
    max_pixels = int(plan.source.get("max_pixels") or images.DEFAULT_MAX_PIXELS)
    todo = [p for p in planned if p.reject is None]
    jobs = [
        _Job(
            p.row["uri"],
            payloads.get(p.row["key"]),
            p.row["sha256"],
            max_pixels,
            plan.resize,
            config.background,
            config.jpeg_quality,
        )
        for p in todo
    ]
    rejects = [_reject(p, p.reject) for p in planned if p.reject is not None]
    progress(len(rejects))
    per_class: collections.Counter[str] = collections.Counter()
    actions: collections.Counter[str] = collections.Counter()
    bytes_in = bytes_out = 0
    digest = hashlib.sha256()
    with _AtomicFile(storage.join(out_dir, name)) as f:
        for item, result in zip(todo, pool.map(_process, jobs, chunksize=8), strict=True):
            progress(1)
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
    summary = {
        "name": name,
        "split": split,
        "index": index,
        "inputs": len(planned),
        "examples": sum(per_class.values()),
        "per_class": dict(sorted(per_class.items())),
        "inputs_per_class": dict(
            sorted(collections.Counter(p.row["label"] for p in planned).items())
        ),
        "bytes": f.size,
        "sha256": digest.hexdigest(),
        "actions": dict(sorted(actions.items())),
        "image_bytes_in": bytes_in,
        "image_bytes_out": bytes_out,
        "rejects": rejects,
        "input_keys_sha256": _hash("\n".join(p.row["key"] for p in planned)),
    }
    storage.write_text(_summary_uri(out_dir, name), json.dumps(summary, ensure_ascii=False))
    return summary


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
        self._file = os.fdopen(self._fd, "wb")

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


def gather(
    config: PreprocessConfig,
    shard_dirs: Sequence[str] | None = None,
    shard_uris: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Check every shard is complete and nothing was lost, then write labels, manifest, rejects.

    ``shard_dirs`` are the folders the workers wrote into (default: the output folder), as this
    process sees them; ``shard_uris`` the same folders as storage URIs (KFP artifact URIs), if
    they differ. The manifest records both for each shard.
    """
    plan = load_plan(config)
    shard_dirs = list(shard_dirs or [config.output_dir])
    uris = dict(zip(shard_dirs, shard_uris or shard_dirs, strict=True))
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for folder in shard_dirs:
        summaries = storage.join(folder, SUMMARIES_DIR)
        if not storage.is_dir(summaries):
            continue
        for entry in storage.list_files(summaries):
            summary = json.loads(storage.read_text(entry.uri))
            if storage.exists(storage.join(folder, summary["name"])):
                found[summary["name"]] = (folder, summary)
    splits: dict[str, Any] = {}
    rejects: list[dict[str, Any]] = []
    actions: collections.Counter[str] = collections.Counter()
    bytes_in = bytes_out = 0
    for split, index in plan.shards():
        name = tfrecords.shard_name(split, index, plan.shard_counts[split])
        if name not in found:
            raise PreprocessError(f"shard {name} is missing: a worker did not finish")
        folder, summary = found[name]
        entry = splits.setdefault(
            split, {"examples": 0, "bytes": 0, "per_class": {}, "rejected": 0, "shards": []}
        )
        entry["shards"].append(
            {
                "name": name,
                "path": storage.join(folder, name),
                "uri": storage.join(uris[folder], name),
                "examples": summary["examples"],
                "bytes": summary["bytes"],
                "sha256": summary["sha256"],
            }
        )
        entry["examples"] += summary["examples"]
        entry["bytes"] += summary["bytes"]
        entry["rejected"] += len(summary["rejects"])
        for label, n in summary["per_class"].items():
            entry["per_class"][label] = entry["per_class"].get(label, 0) + n
        rejects += summary["rejects"]
        actions.update(summary["actions"])
        bytes_in += summary["image_bytes_in"]
        bytes_out += summary["image_bytes_out"]
    rejects += [_reject(p, p.reject) for p in plan.items if p.split not in plan.shard_counts]
    check_accounting(plan, splits, rejects)
    manifest = {
        "schema": SCHEMA,
        "labels": plan.labels,
        "num_classes": len(plan.labels),
        "resize": plan.resize,
        "few_shot": plan.few_shot,
        "seed": config.seed,
        "source": plan.source,
        "analysis": config.analysis_dir,
        "splits": {s: splits[s] for s in sources.SPLITS if s in splits},
        "totals": {
            "inputs": len(plan.items),
            "written": sum(e["examples"] for e in splits.values()),
            "rejected": len(rejects),
        },
        "preresize": {
            "actions": dict(sorted(actions.items())),
            "image_bytes_in": bytes_in,
            "image_bytes_out": bytes_out,
            "bytes_saved": bytes_in - bytes_out,
        },
    }
    out = config.output_dir
    storage.write_text(
        storage.join(out, LABELS_FILE),
        json.dumps(
            {"labels": plan.labels, "index": {label: i for i, label in enumerate(plan.labels)}},
            indent=2,
            ensure_ascii=False,
        )
        + "\n",
    )
    storage.write_text(
        storage.join(out, REJECTS_FILE), json.dumps(rejects, indent=1, ensure_ascii=False) + "\n"
    )
    storage.write_text(
        storage.join(out, MANIFEST_FILE), json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    )
    return manifest


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
    analysed = json.loads(_read(config.analysis_dir, analysis.STATS_FILE))["source"]["uri"]

    def norm(uri: str) -> str:
        local = not (storage.is_gcs(uri) or uri.startswith(sources.TFDS_PREFIX))
        return os.path.abspath(uri) if local else uri.rstrip("/")

    if norm(source) != norm(analysed):
        raise PreprocessError(
            f"the analysis in {config.analysis_dir} is of {analysed}, not {source}"
        )


def preprocess(config: PreprocessConfig) -> dict[str, Any]:
    """The whole step on this machine, on every core, then :func:`gather`.

    With several shards, the cores split the shards between them exactly as the pipeline's
    workers do (each process writes whole shards: nothing is shipped between processes);
    with fewer shards than cores, the cores share the items of each shard instead.
    """
    plan = load_plan(config)
    processes = config.processes or os.cpu_count() or 1
    total = len(plan.items)
    workers = min(processes, len(plan.shards()))
    show = sys.stderr.isatty() if config.progress is None else config.progress
    from tqdm import tqdm

    with tqdm(total=total, unit="img", desc="preprocessing", disable=not show) as bar:
        if workers < 2:
            write_shards(config, progress=bar.update)
        else:
            _fan_out(dataclasses.replace(config, processes=1), workers, bar)
    return gather(config)


_done_counter = None


def _count_done(n: int) -> None:
    with _done_counter.get_lock():
        _done_counter.value += n


def _init_worker(counter) -> None:
    global _done_counter
    _done_counter = counter


def _run_worker(config: PreprocessConfig, index: int, workers: int) -> None:
    write_shards(config, index, workers, progress=_count_done)


def _fan_out(config: PreprocessConfig, workers: int, bar) -> None:
    """Run ``workers`` shard writers in parallel processes, updating ``bar`` as they go."""
    counter = multiprocessing.Value("q", 0)
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(counter,)) as pool:
        futures = [pool.submit(_run_worker, config, i, workers) for i in range(workers)]
        while concurrent.futures.wait(futures, timeout=0.2).not_done:
            bar.update(counter.value - bar.n)
        for future in futures:
            future.result()  # re-raise a worker's error here
    bar.update(counter.value - bar.n)


def load_manifest(dataset_dir: str) -> dict[str, Any]:
    uri = storage.join(dataset_dir, MANIFEST_FILE)
    if not storage.exists(uri):
        raise PreprocessError(f"no {MANIFEST_FILE} in {dataset_dir}: not a complete dataset")
    return json.loads(storage.read_text(uri))
