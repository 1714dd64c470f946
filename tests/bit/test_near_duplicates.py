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
from components.bit.analysis import AnalysisConfig, analyze
from tests.imagegen import photo_tiles

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
    assert near["groups"] >= 0.9 * len(tiles) and near["moved_to_group_split"] > 0
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
    assert near["leaked"]["test"] >= 7 and near["pairs"]["train-test"] == near["leaked"]["test"]
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert sum(row["leaks_train"] for row in rows) == near["leaked"]["test"]
    assert all(row["split"] == "test" for row in rows if row["leaks_train"])
    assert "Near-duplicates" in (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert page.count("<figure>") == len(near["examples"]) and "data:image/jpeg" in page
