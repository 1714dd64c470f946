"""Near-duplicate images: a perceptual hash per image and a search that scales past all pairs.

The hash is the 64-bit DCT hash (pHash) of the ``imagehash`` library, taken from a reduced
image in grayscale: a camera JPEG's EXIF thumbnail when it shows the whole frame (reading it
costs less than the header read), else a decode that libjpeg does at the smallest scale (down
to 1/8) that still leaves 64 px (Pillow's ``draft``; 2x pHash's input, so that the last
resize, not libjpeg's, shapes the pixels), which still entropy-decodes the whole file. Hashes
within ``max_distance`` bits (:data:`MAX_DISTANCE`, 8 of 64) are only candidates:
:mod:`components.bit.near_verify` confirms them on the fingerprint's pixels (measured on real
data in docs/data-quality.md). Images under :data:`MIN_SIDE` px on a side are not hashed.

The search is a pigeonhole multi-index: split the 64 bits into ``max_distance + k`` chunks;
two hashes within ``max_distance`` bits agree exactly on at least ``k`` of them, so only hashes
sharing the values of some ``k`` chunks are compared. Identical hashes are collapsed first.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import itertools
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import ExifTags, Image, ImageOps

from components.bit import images

HASH_BITS = 64
MAX_DISTANCE = 8
# Smaller images carry too little for a perceptual hash: on scikit-learn's 8x8 digits a quarter
# of the images would group. They are compared by exact content only (analysis' duplicates).
MIN_SIDE = 16
_HASH_INPUT = 32  # imagehash's pHash reads a 32x32 grayscale image
SIDE = 32  # the fingerprint's pixels: at most this many a side
CROP = 0.04  # the centre hash leaves this share off each side
SMALL = 64  # images at most this many px a side also get hashes of themselves moved
SHIFT = 2  # … by this many px (their own pixels) in each of 8 directions
SHIFTS = [(dy, dx) for dy in (-SHIFT, 0, SHIFT) for dx in (-SHIFT, 0, SHIFT) if dy or dx]
KINDS = ("whole", "centre", *(f"moved {dy},{dx}" for dy, dx in SHIFTS))  # what hashes are of
# where Pillow's getexif finds an orientation (EXIF, a PNG's text profile, XMP); without any
# of them exif_transpose would only copy the image
_ORIENTATION_KEYS = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")
_THUMBNAIL_OFFSET, _THUMBNAIL_LENGTH = 0x0201, 0x0202  # EXIF IFD1: JPEGInterchangeFormat(Length)
_BLOCK = 2048  # rows compared at once inside a large bucket
_SMALL = 64  # buckets up to this size are compared by offsets, all at once
_BUCKET = 8  # the most hashes a bucket holds on average (uniform hashes)
_PRODUCT = 32  # images of one kind set hashed by one matrix product (fewer: one by one)


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What near-duplicate search keeps of an image: its pixels in grayscale, at most
    :data:`SIDE` px a side (a small image at its own size, so that its shifts stay whole
    pixels), and 64-bit pHashes, the candidates' keys, one per kind of :data:`KINDS`: of the
    whole image, of its centre (:data:`CROP` off each side: what a cropped copy shows whole),
    and, for an image at most :data:`SMALL` px a side, of the image moved by :data:`SHIFT` px
    in each of 8 directions (where a few pixels are a large part of the image)."""

    pixels: np.ndarray
    hashes: tuple[int, ...]
    size: tuple[int, int]  # the decoded image's (width, height)

    @property
    def phash(self) -> int:
        return self.hashes[0]


@dataclasses.dataclass(frozen=True)
class Reduced:
    """An image reduced for its fingerprint (in a reader thread, while it is open), in
    grayscale: an image at most :data:`SIDE` px a side as decoded, to be resized to pHash's
    32x32 input with many others (:func:`fingerprints`); a larger one already resized."""

    gray: np.ndarray  # uint8: the image as decoded (at most SIDE px a side), else 32x32
    pixels: np.ndarray  # the fingerprint's pixels
    size: tuple[int, int]  # the decoded image's (width, height)


def perceptual_hash(data: bytes) -> int | None:
    """The image's 64-bit pHash, or None when its pixels cannot be decoded."""
    found = fingerprint(data)
    return found.phash if found else None


def fingerprint(data: bytes) -> Fingerprint | None:
    """The image's :class:`Fingerprint`, or None when its pixels cannot be decoded."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            reduced = reduce_image(image)
    except Exception:  # not an image at all
        return None
    return fingerprints([reduced])[0] if reduced else None


def reduce_image(image: Image.Image) -> Reduced | None:
    """An open image (its header read, its pixels not yet) reduced for its fingerprint, or
    None when its pixels cannot be decoded."""
    try:
        reduced = embedded_thumbnail(image)
        if reduced is None:
            if image.format in ("JPEG", "MPO"):
                image.draft("L", (2 * _HASH_INPUT, 2 * _HASH_INPUT))
            alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
                image.mode == "P" and "transparency" in image.info
            )  # composited on the background training sees, as images.to_rgb does
            source = images.to_rgb(image) if alpha else image
            source.load()  # a PNG's eXIf may follow its pixels
            reduced = source if source.mode == "L" else source.convert("L")
        oriented = any(key in reduced.info for key in _ORIENTATION_KEYS)
        return reduced_of(ImageOps.exif_transpose(reduced) if oriented else reduced)
    except Exception:  # decoding errors come in many types; the caller reports the count
        return None


def reduced_of(gray: Image.Image) -> Reduced:
    """A decoded grayscale image reduced. An image at most :data:`SIDE` px a side is kept as
    it is (its own pixels; resized with others in :func:`fingerprints`); a larger one is
    resized to 32x32 here, and its pixels are that when both sides are larger than
    :data:`SIDE`, else it shrunk to at most :data:`SIDE` px a side."""
    width, height = gray.size
    if max(width, height) <= SIDE:
        kept = _array(gray)
        return Reduced(kept, kept, (width, height))
    whole = _array(gray.resize((_HASH_INPUT, _HASH_INPUT), Image.Resampling.LANCZOS))
    if width > SIDE and height > SIDE:
        pixels = whole
    else:
        pixels = _array(gray.resize((min(width, SIDE), min(height, SIDE))))
    return Reduced(whole, pixels, (width, height))


def fingerprints(reduced: Sequence[Reduced]) -> list[Fingerprint]:
    """The fingerprints of reduced images. The centre and the moved images are sampled from
    the 32x32 input inside the DCT's matrices, so every kind of hash is linear in it: images
    whose kinds match (every large image; small ones of one size) are hashed in one product."""
    by_kinds: dict[tuple[int, int], list[int]] = {}
    for n, r in enumerate(reduced):
        by_kinds.setdefault(_kinds_key(*r.size), []).append(n)
    out: list[Fingerprint | None] = [None] * len(reduced)
    for key, members in by_kinds.items():
        stack = np.stack([reduced[n].gray for n in members])
        whole = _lanczos_resize(stack) if max(key) <= SIDE else stack.astype(np.float64)
        if len(members) >= _PRODUCT:
            low = whole.reshape(len(members), -1) @ _projection(key)
        else:
            rows, cols = _kind_matrices(*key)
            low = rows[None] @ whole[:, None] @ cols[None]  # (images, kinds, 8, 8)
        hashes = _bits(low.reshape(-1, 8, 8)).reshape(len(members), -1)
        for n, row in zip(members, hashes.tolist(), strict=True):
            out[n] = Fingerprint(reduced[n].pixels, tuple(row), reduced[n].size)
    return out  # type: ignore[return-value]


def _lanczos_resize(stack: np.ndarray) -> np.ndarray:
    """Images of one size (n, h, w), uint8, at most 32 px a side, resized to 32x32 as
    Pillow's LANCZOS does for them (the rows first, then the columns, each pass rounded to
    0-255; a side already 32 px is not resampled: within one grey level of Pillow, tested), in
    two matrix products for all of them."""
    count, height, width = stack.shape
    out = stack.astype(np.float64)
    if width != _HASH_INPUT:
        out = out.reshape(count * height, width) @ _lanczos(width).T
        out = np.clip(np.rint(out), 0, 255).reshape(count, height, _HASH_INPUT)
    if height != _HASH_INPUT:
        out = _lanczos(height) @ out.transpose(1, 0, 2).reshape(height, -1)
        out = np.clip(np.rint(out), 0, 255).reshape(_HASH_INPUT, count, _HASH_INPUT)
        out = out.transpose(1, 0, 2)
    return out


@functools.lru_cache(maxsize=128)
def _lanczos(size: int, out: int = _HASH_INPUT) -> np.ndarray:
    """(out, size): Lanczos-3 weights resampling ``size`` pixels to ``out``, widened by the
    scale when shrinking, each row normalised (as Pillow's resampling computes them)."""
    scale = size / out
    spread = max(scale, 1.0)
    matrix = np.zeros((out, size))
    for row in range(out):
        centre = (row + 0.5) * scale
        first = max(int(centre - 3 * spread + 0.5), 0)
        last = min(int(centre + 3 * spread + 0.5), size)
        x = (np.arange(first, last) - centre + 0.5) / spread
        weights = np.where(np.abs(x) < 3, np.sinc(x) * np.sinc(x / 3), 0.0)
        matrix[row, first:last] = weights / weights.sum()
    return matrix


def _kinds_key(width: int, height: int) -> tuple[int, int]:
    """What an image's kinds of hash depend on: its size when it is small, else nothing."""
    return (width, height) if max(width, height) <= SMALL else (SMALL + 1, SMALL + 1)


@functools.lru_cache(maxsize=16)
def _projection(key: tuple[int, int]) -> np.ndarray:
    """(1024, kinds * 64): the flattened 32x32 input to every kind's 8x8 DCT block."""
    rows, cols = _kind_matrices(*key)
    return np.einsum("kab,kcd->bckad", rows, cols).reshape(_HASH_INPUT**2, -1)


def _array(gray: Image.Image) -> np.ndarray:
    """A grayscale image's pixels, uint8 (its raw bytes: cheaper than numpy's array
    interface for a small image)."""
    return np.frombuffer(gray.tobytes(), dtype=np.uint8).reshape(gray.height, gray.width)


def _dct_rows(size: int = _HASH_INPUT, keep: int = 8) -> np.ndarray:
    """The first ``keep`` rows of the unnormalised DCT-II (scipy.fftpack.dct's default)."""
    k, n = np.arange(keep)[:, None], np.arange(size)[None, :]
    return 2 * np.cos(np.pi * k * (2 * n + 1) / (2 * size))


def _centre_sampler(size: int = _HASH_INPUT, crop: float = CROP) -> np.ndarray:
    """The (size, size) matrix that samples the centre (``crop`` off each side) of a row of
    ``size`` pixels back to ``size`` pixels, by linear interpolation."""
    out = np.arange(size) + 0.5
    where = crop * size + out * (1 - 2 * crop) - 0.5
    lo = np.clip(np.floor(where).astype(int), 0, size - 1)
    hi = np.clip(lo + 1, 0, size - 1)
    frac = where - np.floor(where)
    matrix = np.zeros((size, size))
    np.add.at(matrix, (np.arange(size), lo), 1 - frac)
    np.add.at(matrix, (np.arange(size), hi), frac)
    return matrix


@functools.lru_cache(maxsize=1024)
def _kind_matrices(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Per hash kind, the DCT rows for the image's rows and (transposed) for its columns:
    whole, centre, and for a small image moved by each of :data:`SHIFTS`."""
    rows, cols = [_DCT, _DCT_CENTRE], [_DCT, _DCT_CENTRE]
    if max(width, height) <= SMALL:
        for dy, dx in SHIFTS:
            rows.append(_moved(dy * _HASH_INPUT / height))
            cols.append(_moved(dx * _HASH_INPUT / width))
    return np.stack(rows), np.stack(cols).transpose(0, 2, 1).copy()


@functools.lru_cache(maxsize=256)
def _moved(shift: float, size: int = _HASH_INPUT) -> np.ndarray:
    """The DCT rows of a row of pixels moved by ``shift`` px (linear interpolation; the
    edge pixel fills what comes in)."""
    where = np.arange(size) - shift
    lo = np.clip(np.floor(where).astype(int), 0, size - 1)
    hi = np.clip(np.floor(where).astype(int) + 1, 0, size - 1)
    frac = where - np.floor(where)
    matrix = np.zeros((size, size))
    np.add.at(matrix, (np.arange(size), lo), 1 - frac)
    np.add.at(matrix, (np.arange(size), hi), frac)
    return _DCT @ matrix


_DCT = _dct_rows()
_DCT_CENTRE = _DCT @ _centre_sampler()


def _bits(low: np.ndarray) -> np.ndarray:
    """pHash of each (8, 8) block of lowest DCT frequencies, as uint64: the bits above their
    median, first bit the most significant (as ``str(imagehash.phash(...))`` reads)."""
    flat = low.reshape(len(low), -1)
    ordered = np.sort(flat, axis=1)
    median = (ordered[:, HASH_BITS // 2 - 1] + ordered[:, HASH_BITS // 2]) / 2
    packed = np.packbits(flat > median[:, None], axis=1)  # 8 bytes a row, first bit first
    return packed.view(">u8").ravel().astype(np.uint64)


def embedded_thumbnail(image: Image.Image) -> Image.Image | None:
    """The EXIF thumbnail a camera embeds (IFD1, a JPEG of about 160x120), in grayscale with
    the photo's EXIF (for its orientation), when it shows the photo's whole frame: at least
    32 px a side and the photo's aspect ratio within 2% (else it is stale or letterboxed)."""
    raw = image.info.get("exif")
    if image.format not in ("JPEG", "MPO") or not raw:
        return None
    try:
        exif = Image.Exif()
        exif.load(raw)
        ifd1 = exif.get_ifd(ExifTags.IFD.IFD1)
        offset, length = ifd1.get(_THUMBNAIL_OFFSET), ifd1.get(_THUMBNAIL_LENGTH)
        if not offset or not length:
            return None
        start = 6 if raw.startswith(b"Exif\0\0") else 0  # the TIFF header's position
        with Image.open(io.BytesIO(raw[start + offset : start + offset + length])) as thumb:
            gray = thumb.convert("L")
    except Exception:  # a broken thumbnail is no reason to refuse the photo: decode it
        return None
    (width, height), (tw, th) = image.size, gray.size
    if min(tw, th) < _HASH_INPUT or abs(tw * height - th * width) > 0.02 * th * width:
        return None
    gray.info["exif"] = raw
    return gray


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def find_links(hashes: Sequence[int] | np.ndarray, max_distance: int = MAX_DISTANCE) -> np.ndarray:
    """Pairs (i, j, distance), i < j, of items at most ``max_distance`` bits apart, enough to
    join every near-duplicate group: items with one hash are linked in a chain, and two close
    hashes by their first items. An int64 array of shape (n_links, 3), sorted."""
    values = np.asarray(hashes, dtype=np.uint64)
    if not 0 <= max_distance < HASH_BITS:
        raise ValueError(f"max_distance must be in 0..{HASH_BITS - 1}, got {max_distance}")
    unique, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(inverse, kind="stable")  # items grouped by hash, in input order
    same = inverse[order][1:] == inverse[order][:-1]
    chain = np.stack([order[:-1][same], order[1:][same], np.zeros(same.sum(), np.int64)], 1)
    close = close_pairs(unique, max_distance)
    linked = np.stack([first[close[:, 0]], first[close[:, 1]], close[:, 2]], axis=1)
    links = np.concatenate([chain.astype(np.int64), linked.astype(np.int64)])
    links[:, :2] = np.sort(links[:, :2], axis=1)
    return np.unique(links, axis=0) if len(links) else links.reshape(0, 3)


def _chunks(count: int) -> list[tuple[int, int]]:
    """(shift, width) of ``count`` chunks covering the 64 bits."""
    edges = [round(i * HASH_BITS / count) for i in range(count + 1)]
    return [(lo, hi - lo) for lo, hi in zip(edges, edges[1:], strict=False)]


def close_pairs(unique: np.ndarray, max_distance: int) -> np.ndarray:
    """Pairs (u, v, distance), u < v, of distinct hashes within ``max_distance`` bits.

    With ``max_distance + k`` chunks, two such hashes agree on at least ``k`` of them, so each
    choice of ``k`` chunks keys buckets. ``k`` is the smallest that keeps buckets of uniform
    hashes at most :data:`_BUCKET` on average, up to ceil(max_distance / 3) (keys of ~16-17
    bits: buckets of ~5-15 hashes per million): fewer choices where there are fewer hashes.
    Small buckets are compared by offsets in key order, all at once; a bucket over
    :data:`_SMALL` hashes is compared block by block."""
    agree = _agree(len(unique), max_distance)
    layout = _chunks(max_distance + agree)
    chunks = [(unique >> np.uint64(shift)) & np.uint64((1 << width) - 1) for shift, width in layout]

    def search(chosen: tuple[int, ...]) -> list[np.ndarray]:
        key = np.zeros(len(unique), dtype=np.uint64)
        for c in chosen:
            key = (key << np.uint64(layout[c][1])) | chunks[c]
        return _bucket_pairs(unique, key, max_distance)

    found = [np.zeros((0, 3), dtype=np.int64)]
    choices = itertools.combinations(range(len(chunks)), agree)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for part in pool.map(search, choices):  # numpy's sorts run outside the GIL
            found += part
    pairs = np.concatenate(found).astype(np.int64)
    return unique_rows(pairs, len(unique))


def close_to(table: np.ndarray, queries: np.ndarray, max_distance: int) -> np.ndarray:
    """Pairs (q, t, distance) of a query hash and a table hash (indices into ``queries`` and
    ``table``, both of distinct values) within ``max_distance`` bits: the same pigeonhole
    chunks as :func:`close_pairs`, but only the table is sorted; each query looks up its
    bucket (``searchsorted``) and is compared with the bucket's members."""
    agree = _agree(len(table), max_distance)  # larger buckets cost more on real hashes
    layout = _chunks(max_distance + agree)

    def keys(values: np.ndarray, chosen: tuple[int, ...]) -> np.ndarray:
        key = np.zeros(len(values), dtype=np.uint64)
        for c in chosen:
            shift, width = layout[c]
            key = (key << np.uint64(width)) | (
                (values >> np.uint64(shift)) & np.uint64((1 << width) - 1)
            )
        return key

    def search(chosen: tuple[int, ...]) -> np.ndarray:
        table_key = keys(table, chosen)
        order = np.argsort(table_key)
        ordered = table_key[order]
        starts = np.flatnonzero(np.diff(ordered, prepend=ordered[:1] ^ np.uint64(1)))
        sizes = np.diff(np.append(starts, len(ordered)))
        query_key = keys(queries, chosen)
        at = np.minimum(np.searchsorted(ordered[starts], query_key), len(starts) - 1)
        lo = starts[at]
        count = np.where(ordered[lo] == query_key, sizes[at], 0)
        q = np.repeat(np.arange(len(queries)), count)
        t = order[np.repeat(lo - np.cumsum(count) + count, count) + np.arange(len(q))]
        distance = np.bitwise_count(queries[q] ^ table[t]).astype(np.int64)
        near = distance <= max_distance
        return np.stack([q[near], t[near], distance[near]], axis=1)

    found = [np.zeros((0, 3), dtype=np.int64)]
    choices = itertools.combinations(range(len(layout)), agree)
    if len(table) and len(queries):
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            found += list(pool.map(search, choices))  # numpy's sorts run outside the GIL
    pairs = np.concatenate(found).astype(np.int64)
    return unique_rows(pairs, max(len(table), len(queries)))


def _agree(count: int, max_distance: int) -> int:
    """How many chunks two close hashes must share (see :func:`close_pairs`)."""
    agree, most = 1, max(1, math.ceil(max_distance / 3))
    while agree < most and count > _BUCKET * 2 ** (HASH_BITS * agree / (max_distance + agree)):
        agree += 1
    return agree


def unique_rows(rows: np.ndarray, bound: int) -> np.ndarray:
    """The distinct rows of a non-negative int64 array whose first two columns are below
    ``bound`` (and the others below 64), sorted; one sort of one int64 key per row, much
    cheaper than ``np.unique(axis=0)``."""
    if not len(rows):
        return rows
    key = rows[:, 0] * bound + rows[:, 1]
    for column in range(2, rows.shape[1]):
        key = key * HASH_BITS + rows[:, column]
    _, first = np.unique(key, return_index=True)
    return rows[first]


def _bucket_pairs(unique: np.ndarray, key: np.ndarray, max_distance: int) -> list[np.ndarray]:
    """Close pairs among hashes sharing a key."""
    order = np.argsort(key)
    ordered = key[order]
    starts = np.flatnonzero(np.diff(ordered, prepend=ordered[:1] ^ np.uint64(1)) != 0)
    sizes = np.diff(np.append(starts, len(order)))
    found = [
        _within(unique, np.sort(order[start : start + size]), max_distance)
        for start, size in zip(starts[sizes > _SMALL], sizes[sizes > _SMALL], strict=True)
    ]
    size_at = np.repeat(sizes, sizes)
    rank = np.arange(len(order)) - np.repeat(starts, sizes)
    at = np.flatnonzero((size_at > 1) & (size_at <= _SMALL))
    for offset in range(1, _SMALL):
        at = at[rank[at] + offset < size_at[at]]  # positions with a partner this far on
        if not len(at):
            break
        u, v = order[at], order[at + offset]
        distance = np.bitwise_count(unique[u] ^ unique[v]).astype(np.int64)
        near = distance <= max_distance
        found.append(np.stack([np.minimum(u, v), np.maximum(u, v), distance], 1)[near])
    return found


def _within(unique: np.ndarray, members: np.ndarray, max_distance: int) -> np.ndarray:
    """Close pairs among one bucket's members (sorted indices into ``unique``)."""
    out = []
    bucket = unique[members]
    for lo in range(0, len(members), _BLOCK):
        rows = bucket[lo : lo + _BLOCK]
        distance = np.bitwise_count(rows[:, None] ^ bucket[None, :])
        i, j = np.nonzero(distance <= max_distance)
        keep = lo + i < j
        i, j = lo + i[keep], j[keep]
        out.append(np.stack([members[i], members[j], distance[i - lo, j]], axis=1))
    return np.concatenate(out).astype(np.int64)


def groups(count: int, pairs: np.ndarray) -> list[int]:
    """For each of ``count`` items, the smallest index of its near-duplicate group (pairs
    joined transitively; an item with no near-duplicate is its own group)."""
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b, _ in pairs.tolist():
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [root(i) for i in range(count)]
