"""Near-duplicates: the hash's recall and false positives on real photos, the index against
brute force, and what analysis does with the groups (one split each; leaks reported)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images

from benchmarks.synthetic import camera_exif
from components.bit import near_duplicates as nd
from components.bit import near_verify as nv
from components.bit.analysis import AnalysisConfig, analyze
from components.bit.splits import balance_line
from tests.imagegen import look_alike_shapes, photo_tiles

COPIES = {  # how a photo is copied: re-saved, re-compressed, resized, lightly cropped
    "re-saved as PNG": lambda im: _encode(im, "PNG"),
    "re-compressed at quality 40": lambda im: _encode(im, "JPEG", quality=40),
    "resized to half": lambda im: _encode(im.resize((48, 48)), "JPEG", quality=90),
    "resized to 1.5x": lambda im: _encode(im.resize((144, 144)), "JPEG", quality=90),
    "cropped by 1 px a side": lambda im: _encode(im.crop((1, 1, 95, 95)), "JPEG", quality=90),
}


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_recall_and_false_positives_at_the_documented_threshold():
    tiles = photo_tiles()
    originals = [nd.perceptual_hash(_encode(t, "JPEG", quality=95)) for t in tiles]
    recall = {}
    for name, copy in COPIES.items():
        found = [
            nd.hamming(h, nd.perceptual_hash(copy(t))) <= nd.MAX_DISTANCE
            for h, t in zip(originals, tiles, strict=True)
        ]
        recall[name] = float(np.mean(found))
    distinct = [nd.hamming(a, b) for n, a in enumerate(originals) for b in originals[n + 1 :]]
    false_positive_rate = float(np.mean(np.asarray(distinct) <= nd.MAX_DISTANCE))
    print(f"recall at {nd.MAX_DISTANCE} bits: {recall}; false positives: {false_positive_rate}")
    assert min(recall.values()) >= 0.8 and np.mean(list(recall.values())) >= 0.9
    assert false_positive_rate == 0.0 and min(distinct) > 2 * nd.MAX_DISTANCE


def test_a_camera_thumbnail_hashes_close_to_the_pixels():
    # the same photo with a camera's EXIF thumbnail (quality 75, hashed from it) and without
    tiles = [t.resize((400, 400)) for t in photo_tiles()]
    distances = [
        nd.hamming(
            nd.perceptual_hash(_encode(t, "JPEG", quality=90, exif=camera_exif(t))),
            nd.perceptual_hash(_encode(t, "JPEG", quality=90)),
        )
        for t in tiles
    ]
    recall = float(np.mean(np.asarray(distances) <= nd.MAX_DISTANCE))
    print(f"thumbnail against pixels: recall {recall}, median {np.median(distances)} bits")
    assert recall >= 0.85 and np.median(distances) <= 2


@pytest.mark.parametrize("max_distance", [0, 3, 8, 12])
def test_index_finds_the_groups_brute_force_finds(max_distance):
    rng = np.random.default_rng(max_distance)
    base = rng.integers(0, 2**63, size=1500, dtype=np.uint64) * np.uint64(2)
    flips = [rng.choice(64, size=int(rng.integers(0, 14)), replace=False) for _ in range(400)]
    near = [int(base[i]) ^ sum(1 << int(b) for b in bits) for i, bits in enumerate(flips)]
    hashes = np.concatenate([base, np.asarray(near, np.uint64), base[:20]])
    distance = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    i, j = np.nonzero(np.triu(distance <= max_distance, 1))
    expected = nd.groups(len(hashes), np.stack([i, j, distance[i, j]], axis=1))
    links = nd.find_links(hashes, max_distance)
    assert nd.groups(len(hashes), links) == expected
    assert all(distance[a, b] == d <= max_distance for a, b, d in links.tolist())
    with pytest.raises(ValueError, match="max_distance"):
        nd.find_links(hashes, 64)


def test_camera_thumbnails_are_used_only_when_they_show_the_whole_photo():
    photo = Image.fromarray(load_sample_images().images[0])  # 640x427
    with Image.open(io.BytesIO(_encode(photo, "JPEG", exif=camera_exif(photo)))) as image:
        assert nd.embedded_thumbnail(image).size == (160, 107)
    # orientation 6: the camera stored the frame turned; the hash is of the upright photo
    turned = photo.transpose(Image.Transpose.ROTATE_90)
    stored = _encode(turned, "JPEG", exif=camera_exif(turned, orientation=6))
    upright = nd.perceptual_hash(_encode(photo, "JPEG", quality=95))
    assert nd.hamming(nd.perceptual_hash(stored), upright) <= nd.MAX_DISTANCE
    # a stale thumbnail (the photo was cropped after) and a broken one: the pixels are hashed
    crop = photo.crop((0, 0, 300, 300))
    plain = nd.perceptual_hash(_encode(crop, "JPEG", quality=90))
    stale = _encode(crop, "JPEG", quality=90, exif=camera_exif(photo))
    broken = _encode(crop, "JPEG", quality=90, exif=camera_exif(crop)[:-200])
    for data in (stale, broken):
        with Image.open(io.BytesIO(data)) as image:
            assert nd.embedded_thumbnail(image) is None
        assert nd.perceptual_hash(data) == plain


def test_undecodable_pixels_have_no_hash():
    assert nd.perceptual_hash(b"not an image") is None
    assert nd.perceptual_hash(_encode(Image.new("RGB", (40, 40)), "PNG")[:-30]) is None


def _write(path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_own_splits_keep_each_group_together(tmp_path):
    tiles = photo_tiles()
    for n, tile in enumerate(tiles):
        label = "left" if n % 2 else "right"
        _write(tmp_path / label / f"{n:02d}.jpg", _encode(tile, "JPEG", quality=95))
        _write(tmp_path / label / f"{n:02d} copy.png", COPIES["re-saved as PNG"](tile))
    result = analyze(AnalysisConfig(str(tmp_path), split_fractions=(0.5, 0.2, 0.3)))
    groups: dict[str, set[str]] = {}
    for r in result.valid:
        groups.setdefault(r.group or r.key, set()).add(r.split)
    near = result.stats["near_duplicates"]
    assert near["groups"] >= 0.9 * len(tiles) and near["placed_whole"] == near["groups"]
    assert all(len(splits) == 1 for splits in groups.values()) and near["leaked"] == {}
    assert set(near["pairs"]) <= {"train-train", "validation-validation", "test-test"}


def test_fixed_splits_report_the_leak(tmp_path):
    data, out = tmp_path / "data", tmp_path / "analysis"
    for n, tile in enumerate(photo_tiles()[:24]):
        label = "left" if n % 2 else "right"
        _write(data / "train" / label / f"{n:02d}.jpg", _encode(tile, "JPEG", quality=95))
        if n % 3 == 0:  # 8 copies in test
            _write(data / "test" / label / f"{n:02d}.jpg", COPIES["resized to 1.5x"](tile))
    result = analyze(AnalysisConfig(str(data)), str(out))
    near = result.stats["near_duplicates"]
    # 6 of the 8 at least: a flat tile's (sky's) pHash is unstable under a resize and a re-encode
    assert near["leaked"]["test"] >= 6 and near["pairs"]["train-test"] == near["leaked"]["test"]
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert sum(row["leaks_train"] for row in rows) == near["leaked"]["test"]
    assert all(row["split"] == "test" for row in rows if row["leaks_train"])
    assert "Near-duplicates" in (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert page.count("<figure>") == len(near["examples"]) and "data:image/jpeg" in page


def _moved(image: Image.Image, dy: int, dx: int) -> Image.Image:
    moved = Image.new(image.mode, image.size)
    moved.paste(image, (dx, dy))
    return moved


SMALL_COPIES = {  # a 28x28 look-alike image copied as users' data holds copies
    "jpeg": lambda im: _encode(im, "JPEG", quality=75),
    "resize 80%": lambda im: _encode(im.resize((22, 22), Image.Resampling.LANCZOS), "PNG"),
    "crop 1 px a side": lambda im: _encode(im.crop((1, 1, 27, 27)), "PNG"),
    "shift 2 px": lambda im: _encode(_moved(im, 2, -2), "PNG"),
    "brighter": lambda im: _encode(im.point(lambda v: min(255, int(v * 1.2 + 10))), "PNG"),
}


def _verified_groups(prints):
    rows = nv.candidate_pairs([p.hashes for p in prints])
    scores = nv.similarities(prints, rows)
    calibration = nv.calibrate(prints)
    keep = scores >= 1 - calibration.threshold
    return rows[keep][:, :2], nv.star_groups(len(prints), rows[keep][:, :2]), calibration


def test_look_alikes_that_hashes_chain_are_not_grouped_and_their_copies_are():
    shapes = look_alike_shapes(150)
    prints = [nd.fingerprint(_encode(im, "PNG")) for im in shapes]
    # the failure being fixed: hash links alone chain distinct look-alikes into one group
    chained = nd.groups(len(prints), nd.find_links([p.phash for p in prints]))
    assert max(np.bincount(chained)) > 30
    copies = list(zip(range(50), list(SMALL_COPIES) * 10, strict=True))  # 10 of each kind
    prints += [nd.fingerprint(SMALL_COPIES[kind](shapes[n])) for n, kind in copies]
    pairs, roots, calibration = _verified_groups(prints)
    assert calibration.threshold < nv.MAX_DISTANCE  # stricter than on distinct photos
    found = {kind: [] for kind in SMALL_COPIES}
    for m, (n, kind) in enumerate(copies, start=len(shapes)):
        found[kind].append(roots[m] == roots[n] or [n, m] in pairs.tolist())
    print({kind: float(np.mean(hits)) for kind, hits in found.items()})
    assert all(np.mean(hits) >= 0.8 for hits in found.values())
    distinct = {tuple(p) for p in pairs.tolist() if p[1] < len(shapes)}
    assert len(distinct) <= 2  # look-alikes are not near-duplicates of each other
    assert max(np.bincount(roots)) <= 1 + len(SMALL_COPIES)


def test_a_cropped_photo_is_found_by_its_centre_hash():
    tiles = photo_tiles()[:24]
    originals = [nd.fingerprint(_encode(t, "JPEG", quality=95)) for t in tiles]
    crops = [nd.fingerprint(_encode(t.crop((4, 4, 92, 92)), "JPEG", quality=90)) for t in tiles]
    pairs = zip(originals, crops, strict=True)
    whole = [nd.hamming(a.phash, b.phash) <= nd.MAX_DISTANCE for a, b in pairs]
    rows = nv.candidate_pairs([p.hashes for p in originals + crops])
    found = {(i, j - len(tiles)) for i, j, _, _ in rows.tolist() if j >= len(tiles)}
    scores = nv.similarities(originals + crops, [(n, n + len(tiles)) for n in range(len(tiles))])
    assert np.mean([(n, n) in found for n in range(len(tiles))]) >= 0.75 > np.mean(whole) + 0.2
    assert np.min(scores) >= 0.95 and np.median(scores) >= 0.98


def test_candidate_pairs_are_every_pair_of_close_hashes():
    rng = np.random.default_rng(3)
    hashes = [tuple(int(v) for v in rng.integers(0, 2**63, size=3)) for _ in range(300)]
    hashes += [(h[0] ^ 0b1011, h[0] ^ 1, h[2]) for h in hashes[:40]]
    moved = [0b11, 0b1111]  # moved hashes 2 and 4 bits from another image's whole hash
    hashes += [(h[1] ^ 0xFFFF0000, h[2] ^ 0xFF00, h[0] ^ moved[n % 2])
               for n, h in enumerate(hashes[40:80])]  # fmt: skip
    rows = nv.candidate_pairs(hashes, 4, moved_distance=2)
    expected = set()
    for i in range(len(hashes)):
        for j in range(i + 1, len(hashes)):
            for ki, a in enumerate(hashes[i]):
                for kj, b in enumerate(hashes[j]):
                    most = 2 if max(ki, kj) > 1 else 4  # kind 2 is a moved image's hash
                    if nd.hamming(a, b) <= most and 0 in (ki, kj):
                        expected.add((i, j, ki, kj))
    found = {tuple(r) for r in rows.tolist()}
    assert found == expected and len(expected) >= 100
    assert sum(1 for r in found if 2 in r[2:]) >= 20  # the 2-bit ones, not the 4-bit ones


def test_star_groups_never_chain():
    # 0-1, 1-2, 2-3, 3-4 verified: a chain. A star keeps each member next to its head.
    pairs = np.array([[0, 1], [1, 2], [2, 3], [3, 4], [5, 6]])
    roots = nv.star_groups(8, pairs)
    verified = {tuple(sorted(p)) for p in pairs.tolist()}
    for item, root in enumerate(roots):
        assert root == item or tuple(sorted((item, root))) in verified
    assert roots[7] == 7 and roots[5] == roots[6]
    assert len({roots[i] for i in range(5)}) >= 2  # the chain is cut


def test_own_splits_report_the_balance_and_leave_a_too_large_group_in_place(tmp_path):
    shapes = look_alike_shapes(120, seed=5)
    for n, image in enumerate(shapes):
        _write(tmp_path / f"c{n % 2}" / f"{n:03d}.png", _encode(image, "PNG"))
    for n in range(6):  # one image with 6 copies: 7 of the 60 in its class (over 2%)
        _write(tmp_path / "c0" / f"000 copy {n}.jpg", _encode(shapes[0], "JPEG", quality=70 + n))
    result = analyze(AnalysisConfig(str(tmp_path), split_fractions=(0.5, 0.2, 0.3)))
    near, balance = result.stats["near_duplicates"], result.stats["split_balance"]
    assert near["largest_group"] >= 6 and len(near["unplaced_groups"]) == 1
    assert near["unplaced_groups"][0]["images"] == near["largest_group"]
    assert balance["unplaced_groups"] == 1
    splits = {r.split for r in result.valid if r.group == near["unplaced_groups"][0]["group"]}
    leaked = [r for r in result.valid if r.leaks_train]
    assert all(r.split != "train" for r in leaked)
    # placed one by one: a member held out next to one in train is a leak
    assert ("train" in splits and len(splits) > 1) == bool(leaked)
    assert set(balance["per_class"]) == {"c0", "c1"}
    worst = max(
        100 * abs(share - balance["target"][split])
        for shares in balance["per_class"].values()
        for split, share in shares.items()
    )
    assert balance["max_deviation_points"] == pytest.approx(worst, abs=0.01)
    largest = balance["worst"]
    assert largest["images"] == sum(1 for r in result.valid if r.item.label == largest["class"])
    assert largest["image_points"] == pytest.approx(100 / largest["images"], abs=0.01)
    # stratified: every class within one image of each target, the large group spread out
    assert balance["max_deviation_points"] <= largest["image_points"] + 0.01
    line = balance_line(balance)
    assert "split balance: every class within" in line
    assert f"one image {largest['image_points']:.1f} points" in line


@pytest.mark.parametrize("size", [(28, 28), (16, 31), (31, 16), (32, 20), (17, 32)])
def test_small_images_are_resized_together_as_pillow_resizes_each(size):
    # hashes of small images come from one batched resize; a Pillow that resampled
    # differently would move them off imagehash's pHash and off the larger images' hashes
    rng = np.random.default_rng(sum(size))
    stack = rng.integers(0, 256, (6, size[1], size[0])).astype(np.uint8)
    stack[:, : size[1] // 2] //= 4  # a hard edge: Lanczos overshoots and each pass clips
    ours = nd._lanczos_resize(stack)
    pillow = [
        np.asarray(Image.fromarray(s).resize((32, 32), Image.Resampling.LANCZOS)) for s in stack
    ]
    assert np.abs(ours - np.stack(pillow)).max() <= 1


def test_hashing_many_at_once_gives_each_image_its_own_hashes():
    tiles = photo_tiles()[:40]
    sizes = [(28, 28), (20, 30), (48, 40), (96, 96), (200, 120)]
    reduced = [
        nd.reduced_of(t.convert("L").resize(sizes[n % len(sizes)])) for n, t in enumerate(tiles)
    ]
    together = nd.fingerprints(reduced)
    for r, print_ in zip(reduced, together, strict=True):
        alone = nd.fingerprints([r])[0]
        assert alone.hashes == print_.hashes and np.array_equal(alone.pixels, print_.pixels)
        assert len(print_.hashes) == (10 if max(r.size) <= nd.SMALL else 2)


def test_correlation_at_an_offset_is_pearsons_on_the_overlap():
    rng = np.random.default_rng(3)
    a = rng.normal(100, 30, (5, 20, 24)).astype(np.float32)
    b = np.roll(a, (1, -2), axis=(1, 2)) + rng.normal(0, 3, a.shape).astype(np.float32)
    for sy, sx in [(0, 0), (1, -2), (-3, 2)]:
        got = nv._best_correlation(a, b, [(sy, sx)])
        for n in range(5):
            pa = a[n, max(-sy, 0) : 20 - max(sy, 0), max(-sx, 0) : 24 - max(sx, 0)]
            pb = b[n, max(sy, 0) : 20 + min(sy, 0), max(sx, 0) : 24 + min(sx, 0)]
            assert got[n] == pytest.approx(np.corrcoef(pa.ravel(), pb.ravel())[0, 1], abs=1e-5)
    best = nv._best_correlation(a, b, [(y, x) for y in range(-1, 3) for x in range(-3, 1)])
    assert (best > 0.95).all()  # the true offset (1, -2) is among them
