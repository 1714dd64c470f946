import json

import pytest
from PIL import Image

from components.bit import sources
from components.bit.analysis import AnalysisConfig, analyze
from components.bit.sources import SourceError


@pytest.fixture
def images_dir(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(6):
        Image.new("RGB", (10 + i, 12), (i * 40, 0, 0)).save(root / f"{i}.png")
    return root


def test_split_folders_are_the_source_splits(tmp_path):
    for split in ("train", "val", "test"):
        for label in ("a", "b"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            Image.new("L", (5, 5), len(split) * 10 + ord(label)).save(folder / "x.png")
    listing = sources.list_source(str(tmp_path))
    assert listing.has_splits
    assert sorted((i.split, i.label) for i in listing.items) == sorted(
        (s, label) for s in ("train", "validation", "test") for label in ("a", "b")
    )


def test_a_class_named_like_a_split_is_still_a_class(tmp_path):
    for label in ("test", "cats"):
        (tmp_path / label).mkdir()
        Image.new("L", (5, 5), len(label)).save(tmp_path / label / "x.png")
    listing = sources.list_source(str(tmp_path))
    assert not listing.has_splits and listing.classes == ["cats", "test"]


@pytest.mark.parametrize(
    ("text", "expected_splits"),
    [
        ("image_uri,label,split\n{0},a,train\n{1},b,test\n{2},a,\n", ["train", "test", None]),
        ("{0},a\n{1},b\n{2},a\n", [None, None, None]),
        ("TRAINING,{0},a\nvalidation,{1},b\ntest,{2},a\n", ["train", "validation", "test"]),
        ("{0},a,train\n{1},b,validation\n\n{2},a,test\n", ["train", "validation", "test"]),
    ],
)
def test_csv_manifests(images_dir, text, expected_splits):
    manifest = images_dir / "m.csv"
    manifest.write_text(text.format("0.png", str(images_dir / "1.png"), "2.png"))
    listing = sources.list_source(str(manifest))
    assert [i.split for i in listing.items] == expected_splits
    assert [i.label for i in listing.items] == ["a", "b", "a"]
    assert listing.items[0].uri == str(images_dir / "0.png")
    assert listing.items[1].identity == "1.png"


def test_jsonl_manifests_plain_and_vertex(images_dir):
    rows = [
        {"image_uri": "0.png", "label": "a", "split": "train"},
        {
            "imageGcsUri": "1.png",
            "classificationAnnotation": {"displayName": "b"},
            "dataItemResourceLabels": {"aiplatform.googleapis.com/ml_use": "test"},
        },
    ]
    manifest = images_dir / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    listing = sources.list_source(str(manifest))
    assert [(i.identity, i.label, i.split) for i in listing.items] == [
        ("0.png", "a", "train"),
        ("1.png", "b", "test"),
    ]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "m.csv",
            "0.png,a\nonly-one-column\n",
            "m.csv line 2: expected 2 or 3 columns \\(image_uri,label\\[,split\\]\\), found 1",
        ),
        (
            "m.csv",
            "image_uri,label\n0.png,a\n1.png\n",
            "m.csv line 3: expected 2 columns like the header \\(image_uri,label\\), found 1",
        ),
        (
            "m.csv",
            "image_uri,label\n0.png,a,test\n",
            "m.csv line 2: expected 2 columns like the header \\(image_uri,label\\), found 3",
        ),
        ("m.csv", "0.png,a\n1.png,\n", "m.csv line 2: empty label"),
        ("m.csv", "0.png,a,holdout\n", "m.csv line 1: unknown split 'holdout'"),
        ("m.csv", "a,b,c,d\n", "line 1: expected 2 or 3 columns .*, found 4"),
        (
            "m.jsonl",
            '{"image_uri": "0.png", "label": "a"}\n{oops\n',
            "m.jsonl line 2: not valid JSON",
        ),
        ("m.jsonl", '["0.png", "a"]\n', "m.jsonl line 1: expected a JSON object"),
        ("m.jsonl", '{"image_uri": "0.png", "label": 3}\n', "must be strings"),
        ("m.csv", "", "has no rows"),
    ],
)
def test_malformed_manifests(images_dir, tmp_path, name, text, message):
    manifest = images_dir / name
    manifest.write_text(text)
    with pytest.raises(SourceError, match=message) as info:
        analyze(AnalysisConfig(str(manifest)), str(tmp_path / "out"))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_manifest_missing_file_escape_and_duplicate_rows(images_dir, tmp_path):
    outside = tmp_path / "outside.png"
    Image.new("RGB", (9, 9), (1, 2, 3)).save(outside)
    manifest = images_dir / "m.csv"
    manifest.write_text(
        "0.png,a\n1.png,b\n2.png,a\n3.png,b\nmissing.png,a\n../outside.png,b\n"
        f"{outside},a\n0.png,a\n4.png,a\n4.png,b\n"
    )
    result = analyze(AnalysisConfig(str(manifest)))
    got = [(r.item.identity, r.problem.code if r.problem else None) for r in result.inspected]
    assert got == [
        ("0.png", None),
        ("1.png", None),
        ("2.png", None),
        ("3.png", None),
        ("missing.png", "missing"),
        ("../outside.png", "outside_root"),
        (str(outside), "outside_root"),
        ("0.png", "duplicate"),
        ("4.png", "label_conflict"),
        ("4.png", "label_conflict"),
    ]
    # A wider data root admits the file outside the manifest's folder (listed as b and a).
    wider = analyze(AnalysisConfig(str(manifest), data_dir=str(tmp_path)))
    outside_codes = [r.problem.code for r in wider.inspected if r.item.uri == str(outside)]
    assert outside_codes == ["label_conflict", "label_conflict"]


def test_missing_manifest():
    with pytest.raises(SourceError, match="manifest not found: /nope/m.csv"):
        sources.list_source("/nope/m.csv")


def test_gcs_manifest_with_relative_and_absolute_uris(gcs, images_dir):
    bucket = gcs.new_bucket()
    gcs.upload_tree(images_dir, f"gs://{bucket}/imgs")
    manifest = f"gs://{bucket}/imgs/m.csv"
    from components.bit import storage

    storage.write_text(manifest, f"0.png,a,train\ngs://{bucket}/imgs/1.png,b,train\n2.png,a,test\n")
    result = analyze(AnalysisConfig(manifest))
    assert [r.problem for r in result.inspected] == [None, None, None]
    assert result.inspected[0].item.uri == f"gs://{bucket}/imgs/0.png"
    assert result.stats["examples"]["train"]["total"] == 2


def test_hash_split_fractions():
    counts = {s: 0 for s in sources.SPLITS}
    for i in range(5000):
        counts[sources.hash_split(f"item-{i}", (0.8, 0.1, 0.1))] += 1
    assert 3800 < counts["train"] < 4200 and 400 < counts["test"] < 600
    assert all(sources.hash_split(f"x{i}", (0.9, 0.0, 0.1)) != "validation" for i in range(500))
