"""Dataset analysis: count, measure (headers only), flag, and derive the BiT-HyperRule.

``analyze(config)`` lists the source, inspects every image in parallel, flags what cannot be
used (each with a reason), and writes the analysis folder (:mod:`components.bit.dataset`:
``stats.json``, ``hyperrule.json``, ``items.jsonl``, ``report.md``, ``report.html``) — all or
nothing: any error is raised before a file is written.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import posixpath
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from components.bit import (
    dataset,
    drift,
    hyperrule,
    images,
    near_duplicates,
    near_verify,
    params,
    sources,
    splits,
    storage,
)
from components.bit.errors import BittuneError
from components.bit.report import write_reports

MISSING = "missing"
OUTSIDE_ROOT = "outside_root"
DUPLICATE = "duplicate"
LABEL_CONFLICT = "label_conflict"
EXCLUDED = "excluded"
MAX_PAIRS_SHOWN = 8  # near-duplicate pairs shown with thumbnails in the report
# A group is placed in one split only when no class of it holds more than this share of the
# class's images (or 2 images): a larger one would skew that split's class balance.
PLACE_SHARE = 0.02
HASH_BATCH = 4096  # reduced images hashed together (their DCTs in one product)
_PER_TASK = 16  # items a reader thread takes at once (fewer hand-overs between threads)


class AnalysisError(BittuneError):
    """The dataset cannot be analysed or trained on, with a one-line reason."""


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
    """Everything ``analyze`` needs: the source, how to split it, and HyperRule choices.
    Checked when made."""

    data_source: str
    data_dir: str | None = None
    split_fractions: tuple[float, float, float] | str = (0.8, 0.1, 0.1)  # or "0.8,0.1,0.1"
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    near_duplicates: bool = True  # hash a reduced decode of each image; off: headers only
    exclude_list: str = ""  # a file of URIs, keys or SHA-256s to leave out (label_issues.json)
    baseline_model: str = ""  # the served model to compare the data with (drift) …
    serving_root: str = ""  # … or the newest version under this serving root
    workers: int = 0  # parallel header readers; 0: a sensible default for I/O-bound reads
    hyperrule_variant: str = "reference"
    model: str | None = None
    hyperrule_overrides: Mapping[str, Any] | str = dataclasses.field(default_factory=dict)
    few_shot: int | None = None  # k training examples per class (BiT's few-shot setting)
    progress: bool | None = None  # None: a progress bar when stderr is a terminal

    def __post_init__(self) -> None:
        # The table's text forms (pipeline inputs) become their values here, once.
        fractions = self.split_fractions
        if isinstance(fractions, str):
            fractions = params.parse_fractions(fractions)
        object.__setattr__(self, "split_fractions", sources.check_fractions(fractions))
        overrides = params.parse_overrides(self.hyperrule_overrides)
        object.__setattr__(self, "hyperrule_overrides", overrides)
        for name in ("data_dir", "model"):
            object.__setattr__(self, name, getattr(self, name) or None)
        object.__setattr__(self, "few_shot", self.few_shot or None)
        params.require_fields(self, skip=("split_fractions", "hyperrule_overrides", "model"))

    @classmethod
    def from_params(cls, values: Mapping[str, Any], **fields: Any) -> AnalysisConfig:
        """The config from table values (component inputs, command-line options)."""
        return params.config_from(cls, values, **fields)


@dataclasses.dataclass(frozen=True)
class Inspected:
    """One item with its split and what its header said (or why it cannot be used)."""

    item: sources.Item
    split: str
    info: images.ImageInfo | None
    problem: images.Problem | None
    key: str = ""  # unique within the dataset: the identity, plus "#n" for its n-th repeat
    phash: int | None = None  # the perceptual hash (near_duplicates), None if not decodable
    group: str | None = None  # the key of its near-duplicate group's first member, if any
    leaks_train: bool = False  # held out, with a near-duplicate in the training split
    fingerprint: Any = dataclasses.field(default=None, repr=False, compare=False)

    def row(self) -> dict[str, Any]:
        """The item's line in items.jsonl."""
        info = dataclasses.asdict(self.info) if self.info else {}
        return {
            "key": self.key,
            "uri": self.item.uri,
            "identity": self.item.identity,
            "label": self.item.label,
            "split": self.split,
            **info,
            "code": self.problem.code if self.problem else None,
            "reason": self.problem.reason if self.problem else None,
            "phash": f"{self.phash:016x}" if self.phash is not None else None,
            "near_duplicate_group": self.group,
            "leaks_train": self.leaks_train,
        }


@dataclasses.dataclass(frozen=True)
class AnalysisResult:
    stats: dict[str, Any]
    hyperrule: hyperrule.HyperRule
    inspected: list[Inspected]

    @property
    def valid(self) -> list[Inspected]:
        return [r for r in self.inspected if r.problem is None]


def analyze(config: AnalysisConfig, output_dir: str | None = None) -> AnalysisResult:
    """Analyse ``config.data_source``; write the four output files to ``output_dir`` if given."""
    fractions = config.split_fractions
    listing = sources.list_source(config.data_source, config.data_dir)
    inspected = inspect_items(listing.items, fractions, config)
    inspected = flag_duplicates(inspected)
    inspected, excluded = flag_excluded(inspected, config.exclude_list)
    verified = group_near_duplicates(inspected) if config.near_duplicates else None
    if verified is not None:
        inspected = verified.inspected
    inspected, unplaced = assign_splits(inspected, fractions)
    near = near_leaks(inspected, verified, unplaced) if verified is not None else None
    valid = [r for r in inspected if r.problem is None]
    train = [r for r in valid if r.split == "train"]
    if not valid:
        counts = collections.Counter(r.problem.code for r in inspected if r.problem)
        why = ", ".join(f"{n} {code}" for code, n in counts.most_common())
        raise AnalysisError(
            f"no valid images in {config.data_source}: all {len(inspected)} flagged ({why})"
        )
    if not train:
        raise AnalysisError(f"no valid training images in {config.data_source}")
    classes = sorted({r.item.label for r in valid})
    if len(classes) < 2:
        raise AnalysisError(f"only one class has valid images ({classes[0]!r}); need at least 2")
    median_area = _percentile([r.info.height * r.info.width for r in train], 50)
    per_class = collections.Counter(r.item.label for r in train)
    if config.few_shot:
        examples = sum(min(config.few_shot, n) for n in per_class.values())
    else:
        examples = len(train)
    rule = hyperrule.derive(
        examples,
        median_area,
        variant=config.hyperrule_variant,
        model=config.model,
        overrides=config.hyperrule_overrides,
    )
    stats = build_stats(listing, inspected, fractions, rule)
    stats["source"].update(few_shot=config.few_shot, max_pixels=config.max_pixels)
    if excluded:
        stats["source"]["exclude_list"] = excluded
    if near is not None:
        stats["near_duplicates"] = near
    if not listing.has_splits:
        stats["split_balance"] = split_balance(inspected, fractions, unplaced)
    stats["profile"] = data_profile(inspected)
    served = served_model(config)
    if served:
        stats["drift"] = drift_from(served, stats["profile"])
    result = AnalysisResult(stats, rule, inspected)
    if output_dir is not None:
        write_outputs(result, output_dir)
    return result


def inspect_items(
    items: Sequence[sources.Item], fractions: Sequence[float], config: AnalysisConfig
) -> list[Inspected]:
    """Read and inspect every item in parallel threads, keeping the input order."""
    workers = config.workers or min(32, 4 * (os.cpu_count() or 1))
    show = sys.stderr.isatty() if config.progress is None else config.progress

    def some(part: Sequence[sources.Item]) -> list[Inspected]:
        return [
            _inspect_one(item, sources.split_of(item, fractions), config.max_pixels, hashing)
            for item in part
        ]

    hashing = config.near_duplicates
    parts = [items[n : n + _PER_TASK] for n in range(0, len(items), _PER_TASK)]

    from tqdm import tqdm

    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(items), disable=not show, unit="img", desc="analyzing") as bar,
    ):
        out: list[Inspected] = []
        pending: list[int] = []  # reduced, not yet hashed
        seen: collections.Counter[str] = collections.Counter()
        for result in itertools.chain.from_iterable(pool.map(some, parts)):
            identity = result.item.identity
            key = identity if not seen[identity] else f"{identity}#{seen[identity]}"
            seen[identity] += 1
            if result.fingerprint is not None:
                pending.append(len(out))
            out.append(dataclasses.replace(result, key=key))
            if len(pending) >= HASH_BATCH:
                _hash(out, pending)
            bar.update()
        _hash(out, pending)
    return out


def _hash(out: list[Inspected], pending: list[int]) -> None:
    """Fingerprint the reduced images at ``pending`` together (in place; empties it)."""
    prints = near_duplicates.fingerprints([out[i].fingerprint for i in pending])
    for i, found in zip(pending, prints, strict=True):
        out[i] = dataclasses.replace(out[i], fingerprint=found, phash=found.phash)
    pending.clear()


def _inspect_one(item: sources.Item, split: str, max_pixels: int, hashing: bool) -> Inspected:
    """One item's header checks, and with ``hashing`` its image reduced for a fingerprint
    (``near_duplicates.reduce_image``, in the same open), kept in ``fingerprint``."""
    if item.problem:
        return Inspected(item, split, None, images.Problem(OUTSIDE_ROOT, item.problem))
    try:
        data = item.payload if item.payload is not None else storage.read_bytes(item.uri)
    except (FileNotFoundError, storage.StorageError):
        return Inspected(item, split, None, images.Problem(MISSING, "file not found"))
    except OSError as exc:
        return Inspected(item, split, None, images.Problem(images.UNREADABLE, str(exc)))
    ext = posixpath.splitext(item.uri)[1].lower()
    expected = sources.IMAGE_EXTENSIONS.get(ext) if item.payload is None else None
    then = _reduced if hashing else None
    outcome, reduced = images.inspect_then(data, expected, max_pixels, then)
    if isinstance(outcome, images.Problem):
        return Inspected(item, split, None, outcome)
    return Inspected(item, split, outcome, None, fingerprint=reduced)


def _reduced(image) -> near_duplicates.Reduced | None:
    if min(image.size) < near_duplicates.MIN_SIDE:
        return None
    return near_duplicates.reduce_image(image)


def flag_duplicates(inspected: list[Inspected]) -> list[Inspected]:
    """Flag repeated content: a copy under the same label is a duplicate of the first (by
    identity); the same bytes under different labels make every copy a label conflict."""
    groups: dict[str, list[int]] = collections.defaultdict(list)
    for index, r in enumerate(inspected):
        if r.info is not None:
            groups[r.info.sha256].append(index)
    out = list(inspected)
    for indices in groups.values():
        if len(indices) < 2:
            continue
        labels = sorted({inspected[i].item.label for i in indices})
        ordered = sorted(indices, key=lambda i: inspected[i].key)
        if len(labels) > 1:
            reason = f"same content under labels {', '.join(repr(x) for x in labels)}"
            for i in indices:
                out[i] = _flag(inspected[i], LABEL_CONFLICT, reason)
            continue
        first = inspected[ordered[0]].key
        for i in ordered[1:]:
            out[i] = _flag(inspected[i], DUPLICATE, f"exact duplicate of {first}")
    return out


def flag_excluded(
    inspected: list[Inspected], exclude_list: str
) -> tuple[list[Inspected], dict[str, Any] | None]:
    """Flag the items an exclude list names (by URI, identity, key or SHA-256); return them
    and the list's provenance (where it is, its SHA-256, entries, items excluded)."""
    if not exclude_list:
        return inspected, None
    from components.bit.label_issues import read_exclude_list

    try:
        raw = storage.read_bytes(exclude_list)
    except (FileNotFoundError, storage.StorageError, OSError) as exc:
        raise AnalysisError(f"cannot read the exclude list {exclude_list}: {exc}") from None
    try:
        entries, count = read_exclude_list(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise AnalysisError(f"the exclude list {exclude_list} is not readable: {exc}") from None
    out, hits = list(inspected), 0
    for n, r in enumerate(inspected):
        names = {r.item.uri, r.item.identity, r.key, r.info.sha256 if r.info else ""}
        if r.problem is None and names & entries:
            out[n] = _flag(r, EXCLUDED, f"listed in the exclude list {exclude_list}")
            hits += 1
    provenance = {
        "uri": exclude_list,
        "sha256": images.content_hash(raw),
        "entries": count,
        "excluded": hits,
    }
    return out, provenance


def data_profile(inspected: list[Inspected]) -> dict[str, Any]:
    """The analysis' compact profile (drift.profile), carried to the model card."""
    valid = [r for r in inspected if r.problem is None]
    return drift.profile(
        collections.Counter(r.item.label for r in valid),
        collections.Counter(r.info.format for r in valid),
        len(inspected),
        len(inspected) - len(valid),
        [(r.info.height * r.info.width) ** 0.5 for r in valid],
    )


def served_model(config: AnalysisConfig) -> str | None:
    """The served model the data is compared with: the given one, or the newest version
    under the serving root."""
    from components.bit import serving

    if config.baseline_model:
        return config.baseline_model
    return serving.latest_version(config.serving_root) if config.serving_root else None


def drift_from(served: str, new_profile: Mapping[str, Any]) -> dict[str, Any]:
    """Drift of this data from the served model's (from its model card's data profile)."""
    from components.bit import serving

    card = serving.read_card(served) or {}
    old = (card.get("data") or {}).get("profile")
    if not isinstance(old, dict) or not old:
        where = storage.join(served, serving.CARD_JSON)
        return {"served": served, "note": f"no data profile in {where}: not compared"}
    compared = drift.compare(old, new_profile)
    return {"served": served, **compared, "summary": drift.summary(compared)}


@dataclasses.dataclass(frozen=True)
class Verified:
    """The near-duplicates found: items with their group set, and the verified pairs."""

    inspected: list[Inspected]
    hashed: list[int]  # the items fingerprinted, in the order of the pairs' indices
    pairs: Any  # (n, 2) int array of verified pairs, indices into ``hashed``
    similarity: Any  # (n,) each pair's similarity
    found: dict[str, Any]  # candidates, verified, calibration


def group_near_duplicates(inspected: list[Inspected]) -> Verified:
    """Find near-duplicates (hash candidates verified on pixels against the dataset's own
    threshold, :mod:`components.bit.near_verify`) and group them in stars: each member of a
    group carries the key of its group's first member."""
    hashed = [i for i, r in enumerate(inspected) if r.problem is None and r.fingerprint]
    prints = [inspected[i].fingerprint for i in hashed]
    rows = near_verify.candidate_pairs([p.hashes for p in prints])
    scores = near_verify.similarities(prints, rows)
    calibration = near_verify.calibrate(prints)
    pairs, similarity = _verified(rows, scores, 1 - calibration.threshold)
    roots = near_verify.star_groups(len(hashed), pairs)
    members: dict[int, list[int]] = collections.defaultdict(list)
    for index, root in zip(hashed, roots, strict=True):
        members[root].append(index)
    out = list(inspected)
    for group in (sorted(g, key=lambda i: inspected[i].key) for g in members.values()):
        if len(group) > 1:
            for i in group:
                out[i] = dataclasses.replace(out[i], group=inspected[group[0]].key)
    found = {"candidates": len(rows), "verified": len(pairs), "calibration": calibration.summary()}
    return Verified(out, hashed, pairs, similarity, found)


def assign_splits(
    inspected: list[Inspected], fractions: Sequence[float]
) -> tuple[list[Inspected], list[dict[str, Any]]]:
    """bittune's own splits for the valid items the source left without one, stratified by
    class (:mod:`components.bit.splits`). A near-duplicate group goes to one split whole (the
    split the source fixed for one of its members, if any) unless one of its classes holds more
    than :data:`PLACE_SHARE` of that class (and more than 2 images): such a group would skew the
    class's balance, so its images are placed one by one and it is returned as unplaced."""
    valid = [n for n, r in enumerate(inspected) if r.problem is None]
    class_sizes = collections.Counter(inspected[n].item.label for n in valid)
    together: dict[str, list[int]] = collections.defaultdict(list)
    for n in valid:
        together[inspected[n].group or inspected[n].key].append(n)
    out, units, unplaced = list(inspected), [], []
    for group in (sorted(g, key=lambda i: inspected[i].key) for g in together.values()):
        labels = collections.Counter(inspected[i].item.label for i in group)
        fixed = [inspected[i].item.split for i in group if inspected[i].item.split]
        whole = all(n <= max(2, PLACE_SHARE * class_sizes[c]) for c, n in labels.items())
        if len(group) > 1 and not whole and not fixed:
            unplaced.append({"group": inspected[group[0]].key, "images": len(group),
                             "classes": dict(labels)})  # fmt: skip
        if fixed and whole:
            for i in group:
                out[i] = dataclasses.replace(out[i], split=out[i].item.split or fixed[0])
            continue
        loose = [i for i in group if not inspected[i].item.split]
        parts = [loose] if whole else [[i] for i in loose]
        label = min(labels, key=lambda c: (-labels[c], c))  # the most common, then by name
        for part in (p for p in parts if p):
            units.append(splits.Unit(tuple(part), label, inspected[part[0]].item.identity))
    for index, split in splits.assign(units, fractions).items():
        out[index] = dataclasses.replace(out[index], split=split)
    return out, unplaced


def near_leaks(
    inspected: list[Inspected], verified: Verified, unplaced: list[dict[str, Any]]
) -> dict[str, Any]:
    """Mark held-out items with a verified near-duplicate in training (leaked) in place;
    return the near-duplicate section of stats.json."""
    hashed = verified.hashed
    for a, b in verified.pairs.tolist():
        ia, ib = hashed[a], hashed[b]
        for held, other in ((ia, ib), (ib, ia)):
            if inspected[held].split != "train" and inspected[other].split == "train":
                inspected[held] = dataclasses.replace(inspected[held], leaks_train=True)
    prints = [inspected[i].fingerprint for i in hashed]
    found = {**verified.found, "unplaced": unplaced}
    return near_summary(inspected, (verified.pairs, verified.similarity, prints), hashed, found)


def _verified(rows, scores, minimum: float):
    """Unique verified pairs (i, j) and their best similarity."""
    import numpy as np

    keep = scores >= minimum
    if not keep.any():
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    chosen, best = rows[keep][:, :2], scores[keep]
    order = np.lexsort((-best, chosen[:, 1], chosen[:, 0]))
    chosen, best = chosen[order], best[order]
    first = np.ones(len(chosen), dtype=bool)
    first[1:] = np.any(chosen[1:] != chosen[:-1], axis=1)
    return chosen[first], best[first]


def near_summary(
    inspected: list[Inspected], verified, hashed: list[int], found: dict[str, Any]
) -> dict[str, Any]:
    """The near-duplicate section of stats.json: counts, pairs per split pair, examples."""
    pairs_found, similarity, prints = verified
    grouped: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in inspected:
        if r.group:
            grouped[r.group][r.split] += 1
    pairs: collections.Counter[str] = collections.Counter()
    for counts in grouped.values():
        present = [s for s in sources.SPLITS if counts[s]]
        for n, a in enumerate(present):
            pairs[f"{a}-{a}"] += counts[a] * (counts[a] - 1) // 2
            for b in present[n + 1 :]:
                pairs[f"{a}-{b}"] += counts[a] * counts[b]
    links = [(a, b, float(s)) for (a, b), s in zip(pairs_found.tolist(), similarity, strict=True)]
    shown = sorted(
        links,
        key=lambda link: (
            inspected[hashed[link[0]]].split == inspected[hashed[link[1]]].split,
            link[2],
        ),
    )[:MAX_PAIRS_SHOWN]
    valid = [r for r in inspected if r.problem is None]
    small = sum(1 for r in valid if min(r.info.height, r.info.width) < near_duplicates.MIN_SIDE)
    sizes = sorted((sum(c.values()) for c in grouped.values()), reverse=True)
    return {
        "hash": f"pHash, {near_duplicates.HASH_BITS} bits (imagehash's), candidates verified "
        "by pixel correlation",
        "max_distance": near_duplicates.MAX_DISTANCE,
        "hashed": len(hashed),
        "too_small": small,
        "not_decodable": len(valid) - len(hashed) - small,
        "candidates": found["candidates"],
        "verified_pairs": found["verified"],
        "calibration": found["calibration"],
        "groups": len(grouped),
        "items_in_groups": sum(sizes),
        "largest_group": sizes[0] if sizes else 0,
        "large_groups": sum(1 for n in sizes if n > near_verify.LARGE_GROUP),
        "pairs": {k: v for k, v in sorted(pairs.items()) if v},
        "leaked": dict(collections.Counter(r.split for r in inspected if r.leaks_train)),
        "placed_whole": sum(1 for g in grouped.values() if len(g) == 1),
        "unplaced_groups": found["unplaced"],
        "examples": [
            {
                "a": inspected[hashed[a]].key,
                "b": inspected[hashed[b]].key,
                "splits": [inspected[hashed[a]].split, inspected[hashed[b]].split],
                "distance": near_duplicates.hamming(prints[a].phash, prints[b].phash),
                "similarity": round(s, 4),
            }
            for a, b, s in shown
        ],
    }


def split_balance(
    inspected: list[Inspected], fractions: Sequence[float], unplaced: Sequence[Any] = ()
) -> dict[str, Any]:
    """How far each class's split shares are from the target fractions (``splits.balance``),
    and how many near-duplicate groups were too large to place whole."""
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in inspected:
        if r.problem is None:
            counts[r.item.label][r.split] += 1
    return splits.balance(counts, fractions, len(unplaced))


def _flag(r: Inspected, code: str, reason: str) -> Inspected:
    return dataclasses.replace(r, problem=images.Problem(code, reason))


def _percentile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else 0.0


def _distribution(values: Sequence[float]) -> dict[str, float]:
    import numpy as np

    array = np.asarray(values, dtype=np.float64)
    points = {"min": 0, "p5": 5, "p25": 25, "median": 50, "p75": 75, "p95": 95, "max": 100}
    out = {name: float(np.percentile(array, q)) for name, q in points.items()}
    out["mean"] = float(array.mean())
    return out


def build_stats(
    listing: sources.Listing,
    inspected: list[Inspected],
    fractions: Sequence[float],
    rule: hyperrule.HyperRule,
) -> dict[str, Any]:
    """The content of ``stats.json``."""
    valid = [r for r in inspected if r.problem is None]
    train = [r for r in valid if r.split == "train"]
    per_split: dict[str, dict[str, int]] = {s: {} for s in sources.SPLITS}
    for r in valid:
        counts = per_split[r.split]
        counts[r.item.label] = counts.get(r.item.label, 0) + 1
    train_areas = [r.info.height * r.info.width for r in train]
    small = sum(1 for a in train_areas if a < hyperrule.SMALL_IMAGE_AREA)
    flagged = [
        {
            "path": r.item.identity,
            "key": r.key,
            "uri": r.item.uri,
            "label": r.item.label,
            "split": r.split,
            "code": r.problem.code,
            "reason": r.problem.reason,
        }
        for r in inspected
        if r.problem is not None
    ]
    return {
        "warnings": class_warnings(per_split),
        "source": {
            "uri": listing.root,
            "kind": listing.kind,
            "has_splits": listing.has_splits,
            "split_fractions": list(fractions) if not listing.has_splits else None,
        },
        "classes": sorted({r.item.label for r in valid}),
        "totals": {
            "inputs": len(inspected),
            "valid": len(valid),
            "flagged": len(flagged),
            "ignored": len(listing.ignored),
        },
        "examples": {
            split: {"total": sum(c.values()), "per_class": dict(sorted(c.items()))}
            for split, c in per_split.items()
        },
        "dimensions": {
            "height": _distribution([r.info.height for r in valid]),
            "width": _distribution([r.info.width for r in valid]),
            "area": _distribution([r.info.height * r.info.width for r in valid]),
        },
        "formats": dict(collections.Counter(r.info.format for r in valid).most_common()),
        "modes": dict(collections.Counter(r.info.mode for r in valid).most_common()),
        "resolution_decision": {
            "median_train_area": rule.image_area,
            "threshold_area": hyperrule.SMALL_IMAGE_AREA,
            "below_threshold": small,
            "at_or_above_threshold": len(train_areas) - small,
            "share_below": small / len(train_areas),
            "resize": rule.resize,
            "crop": rule.crop,
        },
        "flag_counts": dict(collections.Counter(f["code"] for f in flagged).most_common()),
        "flagged": flagged,
        "ignored": [{"path": i.path, "reason": i.reason} for i in listing.ignored],
        "area_samples": sorted(r.info.height * r.info.width for r in train),
    }


def class_warnings(per_split: dict[str, dict[str, int]]) -> list[str]:
    """Classes the model will learn badly or not at all, one sentence each."""
    warnings = []
    for label in sorted({label for counts in per_split.values() for label in counts}):
        train = per_split["train"].get(label, 0)
        elsewhere = [s for s in sources.SPLITS if s != "train" and per_split[s].get(label)]
        if train == 0:
            warnings.append(
                f"class {label!r} has no training images (only in {', '.join(elsewhere)}): "
                "the model cannot learn it"
            )
        elif train == 1:
            warnings.append(f"class {label!r} has a single training image")
    return warnings


def write_outputs(result: AnalysisResult, output_dir: str) -> None:
    """Write the analysis folder: stats, HyperRule, every item's row, and the reports."""
    public = {k: v for k, v in result.stats.items() if k != "area_samples"}
    dataset.write_analysis(
        output_dir, public, (r.row() for r in result.inspected), result.hyperrule
    )
    by_key = {r.key: r for r in result.inspected}
    shown = result.stats.get("near_duplicates", {}).get("examples", [])
    thumbnails = [[_thumbnail(by_key[e["a"]]), _thumbnail(by_key[e["b"]])] for e in shown]
    write_reports(
        {**result.stats, "near_duplicate_thumbnails": thumbnails}, result.hyperrule, output_dir
    )


def _thumbnail(r: Inspected, side: int = 96) -> str:
    """A small JPEG of the item, base64 ("" if it cannot be read again)."""
    import base64
    import io

    from PIL import Image, ImageOps

    try:
        data = r.item.payload if r.item.payload is not None else storage.read_bytes(r.item.uri)
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (side, side))
            small = images.to_rgb(ImageOps.exif_transpose(image))
            small.thumbnail((side, side))
            buffer = io.BytesIO()
            small.save(buffer, format="JPEG", quality=85)
    except Exception:  # the report then shows the keys without the picture
        return ""
    return base64.b64encode(buffer.getvalue()).decode()
