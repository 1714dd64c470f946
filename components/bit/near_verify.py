"""Near-duplicates a user can trust: hash candidates, verified on pixels, calibrated, grouped.

The perceptual hashes (:mod:`components.bit.near_duplicates`) only propose candidates: on
look-alike data (product shots on plain backgrounds, icons, scans) many distinct images hash
within a few bits of each other. Every candidate pair is confirmed on the fingerprints'
pixels (at most 32 px a side, a small image at its own size) by its **similarity**: the
Pearson correlation of the two at the smaller one's size, aligned as the matching hashes say
(whole against whole; the centre of one, ``near_duplicates.CROP`` off each side, against the
other whole, for a cropped copy; moved by the hash's shift, with a 1-px search, for a moved
copy). Correlation ignores brightness and contrast.

The threshold comes from the data (:func:`calibrate`): the similarity of a sample of images to
their nearest neighbour (an image that is not a copy) says how alike the dataset's distinct
images are (the 3rd nearest, so that an image's own copies, up to two, are passed over). A
pair is a near-duplicate only when its distance, 1 - similarity, is at most :data:`FACTOR`
times the median of those distances (and between :data:`MIN_DISTANCE`
and :data:`MAX_DISTANCE`). Groups are stars (:func:`star_groups`): every member is verified
against its group's representative, so distinct images never chain.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np
from PIL import Image

from components.bit import near_duplicates as nd

FACTOR = 0.2  # a pair's distance must be this share of the typical nearest neighbour's, or less
MIN_DISTANCE = 0.002  # (correlation 0.998): re-encoding alone costs about this much
MAX_DISTANCE = 0.05  # (correlation 0.95): never looser, however distinct the dataset is
SAMPLE = 200  # images whose nearest neighbour is measured
REFERENCE = 3000  # … among this many (all of them in a smaller dataset)
NEIGHBOUR = 3  # the typical neighbour is the 3rd nearest: an image's own copies come first
# A moved image's hash is a candidate only this close (of MAX_DISTANCE for the others): on
# Fashion-MNIST the moved hashes made 60% of the candidates, 3 in 4 of them at 8 bits, and
# each is verified at 9 offsets; at 6 bits 36 of 40 copies moved by 2 px are still found, at 8
# bits 38 (docs/data-quality.md)
MOVED_DISTANCE = 6
MAX_SHARED = 256  # hashes sharing one value: only the first this many are paired
LARGE_GROUP = 8  # groups larger than this are listed in the report for a look
_COARSE = 16  # side of the vectors the nearest-neighbour search compares first
_ROWS = 16384  # candidate pairs compared at once (about 100 MB of pixels)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The dataset's threshold and how it was reached."""

    threshold: float  # the most distance (1 - similarity) a verified pair may have
    typical: float  # the median distance of a sampled image to its 3rd nearest neighbour
    sampled: int  # images whose nearest neighbour was measured
    reference: int  # … among this many

    def summary(self) -> dict[str, float | int]:
        return {
            "min_similarity": round(1 - self.threshold, 5),
            "typical_neighbour_similarity": round(1 - self.typical, 5),
            "factor": FACTOR,
            "sampled": self.sampled,
            "reference": self.reference,
        }


def candidate_pairs(
    hashes: Sequence[Sequence[int]],
    max_distance: int = nd.MAX_DISTANCE,
    moved_distance: int = MOVED_DISTANCE,
) -> np.ndarray:
    """Rows (i, j, kind_i, kind_j), i < j: hash ``kind_i`` of item i (``hashes[i]``, kinds
    as in ``near_duplicates.KINDS``, the first the whole image's) is within ``max_distance``
    bits of hash ``kind_j`` of item j (``moved_distance`` for a moved image's hash), one of
    the two a whole hash. The whole hashes are the table of the multi-index search
    (``near_duplicates.close_pairs`` among them, ``near_duplicates.close_to`` for the other
    kinds); every pair of items behind two close values is a row (at most
    :data:`MAX_SHARED` items a value)."""
    lengths = np.fromiter(map(len, hashes), dtype=np.int64, count=len(hashes))
    owners = np.repeat(np.arange(len(hashes)), lengths)
    kinds = np.arange(len(owners)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    flat = np.fromiter(itertools.chain.from_iterable(hashes), dtype=np.uint64, count=len(owners))
    table, table_members = _members(flat, np.flatnonzero(kinds == 0))
    same = np.repeat(np.arange(len(table)), 2).reshape(-1, 2)
    among = np.concatenate([same, nd.close_pairs(table, max_distance)[:, :2]])
    ends = [_expand(among, table_members, table_members)]
    for chosen, distance in ((kinds == 1, max_distance), (kinds > 1, moved_distance)):
        queries, query_members = _members(flat, np.flatnonzero(chosen))
        across = nd.close_to(table, queries, min(distance, max_distance))[:, :2]
        ends.append(_expand(across, query_members, table_members))
    ends = np.concatenate(ends)
    ends = ends[owners[ends[:, 0]] != owners[ends[:, 1]]]
    swap = owners[ends[:, 0]] > owners[ends[:, 1]]
    ends[swap] = ends[swap][:, ::-1]
    a, b = ends[:, 0], ends[:, 1]
    rows = np.stack([owners[a], owners[b], kinds[a], kinds[b]], axis=1)
    return nd.unique_rows(rows, len(hashes)) if len(rows) else rows.reshape(0, 4)


def _members(flat: np.ndarray, positions: np.ndarray):
    """The distinct values at ``positions`` of ``flat``, and for each its positions:
    (positions grouped by value, where each value's group starts)."""
    values, inverse = np.unique(flat[positions], return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(len(values) + 1))
    return values, (positions[order], starts)


def _expand(pairs: np.ndarray, left, right) -> np.ndarray:
    """Every (position, position) behind each pair of values (u in left, v in right)."""
    (left_at, left_starts), (right_at, right_starts) = left, right
    su = np.minimum(np.diff(left_starts), MAX_SHARED)[pairs[:, 0]]
    sv = np.minimum(np.diff(right_starts), MAX_SHARED)[pairs[:, 1]]
    which = np.repeat(np.arange(len(pairs)), su * sv)
    within = np.arange(len(which)) - np.repeat(np.cumsum(su * sv) - su * sv, su * sv)
    first = left_starts[pairs[which, 0]] + within // sv[which]
    second = right_starts[pairs[which, 1]] + within % sv[which]
    return np.stack([left_at[first], right_at[second]], axis=1)


def similarities(prints: Sequence[nd.Fingerprint], rows: np.ndarray) -> np.ndarray:
    """The similarity of each candidate row (i, j, kind_i, kind_j) of ``prints``: the
    correlation of the two fingerprints at the smaller one's size, aligned as the kinds say
    (the centre of one against the other whole; moved by the kinds' shifts, with a 1-px
    search), or, for rows (i, j) alone, the best of whole against whole and the centre of
    either against the other."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.ndim == 2 and rows.shape[1] == 2 and len(rows):
        every = [(i, j, ki, kj) for i, j in rows.tolist() for ki, kj in _EVERY]
        best = similarities(prints, np.asarray(every))
        return best.reshape(len(rows), len(_EVERY)).max(axis=1)
    out = np.zeros(len(rows))
    if not len(rows):
        return out
    i, j, ki, kj = rows.T
    shapes = np.array([p.pixels.shape for p in prints])
    sizes = np.array([p.size[::-1] for p in prints])  # (height, width)
    smaller = (shapes[i].prod(axis=1) <= shapes[j].prod(axis=1))[:, None]
    target = np.where(smaller, shapes[i], shapes[j])
    shift = _MOVES[ki] * target / sizes[i] - _MOVES[kj] * target / sizes[j]
    keys = np.column_stack([target, ki == 1, kj == 1, np.round(shift), (ki > 1) | (kj > 1)])
    keys = keys.astype(np.int64)
    code = np.zeros(len(keys), dtype=np.int64)
    for column in keys.T:  # one number per key (radix 256, shifts kept positive)
        code = code * 256 + column + 128
    _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
    unique = keys[first]
    views: dict[tuple[int, tuple, bool], np.ndarray] = {}
    stacked: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    for shape in {tuple(x) for x in target.tolist()}:
        own = np.flatnonzero((shapes == shape).all(axis=1))
        where = np.full(len(prints), -1)
        where[own] = np.arange(len(own))
        stacked[shape] = (np.stack([prints[x].pixels for x in own]), where)  # uint8
    groups = np.argsort(inverse.ravel(), kind="stable")
    bounds = np.searchsorted(inverse.ravel()[groups], np.arange(len(unique) + 1))
    for n, (h, w, zoom_a, zoom_b, dy, dx, search) in enumerate(unique.tolist()):
        reach = 1 if search else 0
        offsets = [(y, x) for y in range(dy - reach, dy + reach + 1)
                   for x in range(dx - reach, dx + reach + 1)]  # fmt: skip
        for start in range(bounds[n], bounds[n + 1], _ROWS):  # bounded memory
            members = groups[start : min(start + _ROWS, bounds[n + 1])]
            a = _views(prints, i[members], (h, w), zoom_a, views, stacked)
            b = _views(prints, j[members], (h, w), zoom_b, views, stacked)
            out[members] = _best_correlation(a, b, offsets)
    return out


_MOVES = np.array([(0, 0), (0, 0), *nd.SHIFTS], dtype=float)
_EVERY = [(0, 0), (1, 0), (0, 1)]  # whole, and the centre of either against the other whole


def _views(prints, indices, shape, zoom: bool, cache: dict, stacked: dict) -> np.ndarray:
    """The fingerprints ``indices`` at ``shape`` (whole or centre), stacked."""
    pixels, where = stacked[shape]
    if not zoom and (where[indices] >= 0).all():
        return pixels[where[indices]].astype(np.float32)
    return np.stack([_view(prints, x, shape, zoom, cache) for x in indices.tolist()])


def _view(prints, index: int, shape: tuple[int, int], zoom: bool, cache: dict) -> np.ndarray:
    """The fingerprint at ``shape``: whole, or its centre (``CROP`` off each side)."""
    key = (index, shape, zoom)
    if key not in cache:
        pixels = prints[index].pixels
        h, w = pixels.shape
        if pixels.shape == shape and not zoom:
            cache[key] = pixels.astype(np.float32)
        else:
            box = (w * nd.CROP, h * nd.CROP, w * (1 - nd.CROP), h * (1 - nd.CROP)) if zoom else None
            image = Image.fromarray(pixels).resize(
                (shape[1], shape[0]), Image.Resampling.LANCZOS, box
            )
            cache[key] = np.asarray(image, dtype=np.float32)
    return cache[key]


def _best_correlation(a: np.ndarray, b: np.ndarray, offsets) -> np.ndarray:
    """Per pair, the best over ``offsets`` (sy, sx) of the Pearson correlation of a[p] and
    b[p + (sy, sx)] over their overlap; 0 where either side is flat. The sums are taken on
    the overlaps in place (no copies), on pixels centred on each image's mean (so that they
    do not cancel)."""
    count, h, w = a.shape
    a = a - (np.einsum("nij->n", a) / (h * w))[:, None, None]
    b = b - (np.einsum("nij->n", b) / (h * w))[:, None, None]
    best = np.full(count, -1.0)
    for sy, sx in offsets:
        if abs(sy) >= h - 1 or abs(sx) >= w - 1:
            best = np.maximum(best, 0.0)
            continue
        pa = a[:, max(-sy, 0) : h - max(sy, 0), max(-sx, 0) : w - max(sx, 0)]
        pb = b[:, max(sy, 0) : h + min(sy, 0), max(sx, 0) : w + min(sx, 0)]
        n = pa.shape[1] * pa.shape[2]
        sa, sb = np.einsum("nij->n", pa), np.einsum("nij->n", pb)
        spread_a = np.clip(np.einsum("nij,nij->n", pa, pa) - sa * sa / n, 0, None)
        spread_b = np.clip(np.einsum("nij,nij->n", pb, pb) - sb * sb / n, 0, None)
        norm = np.sqrt(spread_a * spread_b)
        both = np.einsum("nij,nij->n", pa, pb) - sa * sb / n
        best = np.maximum(best, np.divide(both, norm, out=np.zeros(count), where=norm > 1e-6))
    return best


def calibrate(prints: Sequence[nd.Fingerprint], seed: int = 0) -> Calibration:
    """The threshold from the dataset's own nearest neighbours (see the module): for up to
    :data:`SAMPLE` images, the most similar of up to :data:`REFERENCE` others (a coarse
    16x16 correlation picks 6, the similarity ranks them; the 3rd nearest counts, so that up
    to two copies of an image do not pass for its typical neighbour)."""
    count = len(prints)
    if count < 3:
        return Calibration(MAX_DISTANCE, 1.0, 0, count)
    rng = np.random.default_rng(seed)
    reference = np.sort(rng.permutation(count)[:REFERENCE])
    sample = reference[rng.permutation(len(reference))[:SAMPLE]]
    coarse = _coarse([prints[i].pixels for i in reference])
    scores = coarse[np.searchsorted(reference, sample)] @ coarse.T
    scores[np.arange(len(sample)), np.searchsorted(reference, sample)] = -np.inf
    keep = min(2 * NEIGHBOUR, len(reference) - 1)
    top = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
    pairs = np.stack([np.repeat(sample, top.shape[1]), reference[top].ravel()], axis=1)
    pairs = np.pad(pairs, ((0, 0), (0, 2)))  # whole against whole: enough for a neighbour
    found = np.sort(similarities(prints, pairs).reshape(len(sample), -1), axis=1)
    typical = float(np.median(1 - found[:, -min(NEIGHBOUR, found.shape[1])]))
    threshold = float(np.clip(FACTOR * typical, MIN_DISTANCE, MAX_DISTANCE))
    return Calibration(threshold, typical, len(sample), len(reference))


def _coarse(pixels: Sequence[np.ndarray]) -> np.ndarray:
    """Each image as a 16x16 vector of area means, centred and of unit length."""
    out = np.zeros((len(pixels), _COARSE * _COARSE))
    shapes: dict[tuple[int, int], list[int]] = {}
    for n, p in enumerate(pixels):
        shapes.setdefault(p.shape, []).append(n)
    for (h, w), members in shapes.items():
        stack = np.stack([pixels[n] for n in members]).astype(np.float64)
        small = _area(h) @ stack @ _area(w).T
        out[members] = small.reshape(len(members), -1)
    out -= out.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norm, out=np.zeros_like(out), where=norm > 1e-6)


def _area(size: int, out: int = _COARSE) -> np.ndarray:
    """The (out, size) matrix of area means: output cell i covers input [i, i + 1) * size / out."""
    edges = np.arange(out + 1) * size / out
    lo, hi = edges[:-1, None], edges[1:, None]
    cells = np.arange(size)[None, :]
    overlap = np.clip(np.minimum(hi, cells + 1) - np.maximum(lo, cells), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def star_groups(count: int, pairs: np.ndarray) -> list[int]:
    """For each of ``count`` items, its group's representative (itself when it has no
    verified near-duplicate). ``pairs`` are verified (i, j) pairs. The item with the most
    verified partners still ungrouped becomes a representative, with those partners as its
    group; repeated until every verified pair's items are placed. No member joins through
    another member: a group is a star, never a chain."""
    partners: list[set[int]] = [set() for _ in range(count)]
    for i, j in np.asarray(pairs, dtype=np.int64).reshape(-1, 2).tolist():
        partners[i].add(j)
        partners[j].add(i)
    root = list(range(count))
    placed = [False] * count
    order = sorted((i for i in range(count) if partners[i]), key=lambda i: (-len(partners[i]), i))
    for head in order:
        if placed[head]:
            continue
        members = [j for j in partners[head] if not placed[j]]
        if not members:
            continue
        placed[head] = True
        for j in members:
            placed[j], root[j] = True, head
    return root
