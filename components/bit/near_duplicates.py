"""Near-duplicate images: a perceptual hash per image and a search that scales past all pairs.

The hash is the 64-bit DCT hash (pHash) of the ``imagehash`` library, taken from a reduced
image in grayscale: a camera JPEG's EXIF thumbnail when it shows the whole frame (reading it
costs less than the header read), else a decode that libjpeg does at 1/8 scale when that still
leaves 32 px (Pillow's ``draft``), which still entropy-decodes the whole file. Two images are
near-duplicates when their hashes differ in at most ``max_distance`` bits
(:data:`MAX_DISTANCE`, 8 of 64; recall and false positives on real photos are measured in
tests/bit/test_near_duplicates and stated in docs/data-quality.md).
Images under :data:`MIN_SIDE` px on a side are not hashed.

The search is a pigeonhole multi-index: split the 64 bits into ``max_distance + k`` chunks;
two hashes within ``max_distance`` bits agree exactly on at least ``k`` of them, so only hashes
sharing the values of some ``k`` chunks are compared. Identical hashes are collapsed first.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Sequence

import numpy as np
from PIL import ExifTags, Image, ImageOps

HASH_BITS = 64
MAX_DISTANCE = 8
# Smaller images carry too little for a perceptual hash: on scikit-learn's 8x8 digits a quarter
# of the images would group. They are compared by exact content only (analysis' duplicates).
MIN_SIDE = 16
_HASH_INPUT = 32  # imagehash's pHash reads a 32x32 grayscale image
_THUMBNAIL_OFFSET, _THUMBNAIL_LENGTH = 0x0201, 0x0202  # EXIF IFD1: JPEGInterchangeFormat(Length)
_BLOCK = 2048  # rows compared at once inside a large bucket
_SMALL = 64  # buckets up to this size are compared by offsets, all at once


def perceptual_hash(data: bytes) -> int | None:
    """The image's 64-bit pHash, or None when its pixels cannot be decoded."""
    import imagehash

    try:
        with Image.open(io.BytesIO(data)) as image:
            reduced = embedded_thumbnail(image)
            if reduced is None:
                if image.format in ("JPEG", "MPO"):
                    image.draft("L", (_HASH_INPUT, _HASH_INPUT))
                reduced = image.convert("L")
            return int(str(imagehash.phash(ImageOps.exif_transpose(reduced))), 16)
    except Exception:  # decoding errors come in many types; the caller reports the count
        return None


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
    close = _close_unique(unique, max_distance)
    linked = np.stack([first[close[:, 0]], first[close[:, 1]], close[:, 2]], axis=1)
    links = np.concatenate([chain.astype(np.int64), linked.astype(np.int64)])
    links[:, :2] = np.sort(links[:, :2], axis=1)
    return np.unique(links, axis=0) if len(links) else links.reshape(0, 3)


def _chunks(count: int) -> list[tuple[int, int]]:
    """(shift, width) of ``count`` chunks covering the 64 bits."""
    edges = [round(i * HASH_BITS / count) for i in range(count + 1)]
    return [(lo, hi - lo) for lo, hi in zip(edges, edges[1:], strict=False)]


def _close_unique(unique: np.ndarray, max_distance: int) -> np.ndarray:
    """Pairs (u, v, distance), u < v, of distinct hashes within ``max_distance`` bits.

    With ``max_distance + k`` chunks, two such hashes agree on at least ``k`` of them, so each
    choice of ``k`` chunks keys buckets; ``k`` = ceil(max_distance / 3) makes keys of ~16-17
    bits (buckets of ~5-15 hashes per million). Small buckets are compared by offsets in key
    order, all at once; a bucket over :data:`_SMALL` hashes is compared block by block."""
    agree = max(1, math.ceil(max_distance / 3))
    layout = _chunks(max_distance + agree)
    chunks = [(unique >> np.uint64(shift)) & np.uint64((1 << width) - 1) for shift, width in layout]
    found = [np.zeros((0, 3), dtype=np.int64)]
    for chosen in itertools.combinations(range(len(chunks)), agree):
        key = np.zeros(len(unique), dtype=np.uint64)
        for c in chosen:
            key = (key << np.uint64(layout[c][1])) | chunks[c]
        found += _bucket_pairs(unique, key, max_distance)
    pairs = np.concatenate(found).astype(np.int64)
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def _bucket_pairs(unique: np.ndarray, key: np.ndarray, max_distance: int) -> list[np.ndarray]:
    """Close pairs among hashes sharing a key."""
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    starts = np.flatnonzero(np.diff(ordered, prepend=ordered[:1] ^ np.uint64(1)) != 0)
    sizes = np.diff(np.append(starts, len(order)))
    found = [
        _within(unique, np.sort(order[start : start + size]), max_distance)
        for start, size in zip(starts[sizes > _SMALL], sizes[sizes > _SMALL], strict=True)
    ]
    small = np.repeat(sizes <= _SMALL, sizes)
    for offset in range(1, min(_SMALL, int(sizes.max(initial=1)))):
        same = (ordered[offset:] == ordered[:-offset]) & small[offset:]
        u, v = order[:-offset][same], order[offset:][same]
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
