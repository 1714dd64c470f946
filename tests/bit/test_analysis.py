import collections
import json
import shutil

import imagegen
import pytest
from PIL import Image

from components.bit.analysis import AnalysisConfig, AnalysisError, analyze
from components.bit.errors import BittuneError

OUTPUT_FILES = {"stats.json", "hyperrule.json", "items.jsonl", "report.md", "report.html"}


def codes(result):
    return {r.item.identity: (r.problem.code if r.problem else None) for r in result.inspected}


def test_odd_folder_flags_every_case(odd_folder, tmp_path):
    root, expected = odd_folder
    result = analyze(AnalysisConfig(str(root)), str(tmp_path / "out"))
    assert codes(result) == expected
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert sorted(i["path"] for i in stats["ignored"]) == sorted(imagegen.ODD_IGNORED)
    reasons = {f["path"]: f["reason"] for f in stats["flagged"]}
    assert reasons["cats/empty.jpg"] == "empty file (0 bytes)"
    assert reasons["birds/really_png.jpg"] == "content is PNG but the name says JPEG"
    assert "decompression bomb" in reasons["dogs/bomb.png"]
    assert reasons["cats/dup_copy.jpg"] == "exact duplicate of cats/a_original.jpg"
    assert reasons["dogs/shared.png"] == "same content under labels 'birds', 'dogs'"
    assert reasons["dogs/truncated.jpg"].startswith("truncated JPEG")
    assert reasons["birds/truncated.png"].startswith("truncated PNG")
    assert stats["totals"] == {"inputs": len(expected), "valid": 16, "flagged": 9, "ignored": 5}
    # inputs = valid + flagged, per class
    for label in ("birds", "cats", "dogs"):
        listed = sum(1 for path in expected if path.startswith(label + "/"))
        valid = sum(e["per_class"].get(label, 0) for e in stats["examples"].values())
        flagged = sum(1 for f in stats["flagged"] if f["label"] == label)
        assert listed == valid + flagged
    assert set(stats["modes"]) >= {"CMYK", "L", "I;16", "P", "RGBA", "RGB"}
    assert set(stats["formats"]) == {"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"}
    assert set(p.name for p in (tmp_path / "out").iterdir()) == OUTPUT_FILES


def test_exif_orientation_and_unicode_names(odd_folder):
    root, _ = odd_folder
    result = analyze(AnalysisConfig(str(root)))
    info = {r.item.identity: r.info for r in result.inspected if r.info}
    name, (height, width) = imagegen.EXIF_ROTATED
    assert (info[name].height, info[name].width) == (height, width)
    assert info[name].orientation == 6
    assert imagegen.UNICODE_NAME in info
    assert info["cats/nested/deeper/kitten.png"] is not None  # nested folders belong to the class
    assert (info["cats/tiny_1x1.png"].height, info["cats/tiny_1x1.png"].width) == (1, 1)


def test_pixel_limit_is_configurable(odd_folder):
    root, _ = odd_folder
    result = analyze(AnalysisConfig(str(root), max_pixels=1000))
    flagged = codes(result)
    assert flagged["dogs/baseline.jpg"] == "bomb"  # 120 x 80 = 9,600 > 1,000
    assert flagged["cats/tiny_1x1.png"] is None


def test_digits_from_a_package(digits_folder, tmp_path):
    result = analyze(AnalysisConfig(str(digits_folder)), str(tmp_path))
    stats = result.stats
    assert stats["totals"]["valid"] == 1797 and stats["totals"]["flagged"] == 0
    assert stats["classes"] == [str(d) for d in range(10)]
    assert sum(e["total"] for e in stats["examples"].values()) == 1797
    rule = json.loads((tmp_path / "hyperrule.json").read_text())
    assert rule["examples"] == stats["examples"]["train"]["total"]
    assert 1797 * 0.75 < rule["examples"] < 1797 * 0.85
    assert (rule["resize"], rule["crop"], rule["total_steps"]) == (160, 128, 500)
    assert stats["resolution_decision"]["share_below"] == 1.0
    assert stats["dimensions"]["area"]["median"] == 64


def _image(path, size, color=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (color % 256, (color * 7) % 256, (color * 13) % 256)).save(path)


def test_median_area_decides_resolution(tmp_path):
    # 3 large training images, 2 small: the median is large -> 512/480.
    for i, size in enumerate([(200, 200), (300, 100), (150, 150), (20, 20), (50, 40)]):
        _image(tmp_path / "data" / "train" / "ab"[i % 2] / f"{i}.png", size, i)
    _image(tmp_path / "data" / "test" / "a" / "t.png", (10, 10), 99)
    result = analyze(AnalysisConfig(str(tmp_path / "data")), str(tmp_path / "out"))
    assert (result.hyperrule.resize, result.hyperrule.crop) == (512, 480)
    assert result.stats["resolution_decision"]["below_threshold"] == 2
    assert result.stats["examples"]["train"]["total"] == 5
    assert result.stats["examples"]["test"]["total"] == 1
    report = (tmp_path / "out" / "report.md").read_text()
    assert "median training image area, 22,500 px" in report
    assert "40.0% of training images are below 96*96" in report


def test_own_splits_hold_each_class_fraction_and_move_few_when_files_are_added(tmp_path):
    root = tmp_path / "data"
    for i in range(400):
        _image(root / "ab"[i % 2] / f"{i}.png", (8 + i // 256, 8), i)  # all distinct
    result = analyze(AnalysisConfig(str(root), near_duplicates=False))
    before = {r.item.identity: r.split for r in result.inspected}
    for label in "ab":
        shares = collections.Counter(r.split for r in result.valid if r.item.label == label)
        assert shares == {"train": 160, "validation": 20, "test": 20}
    assert result.stats["split_balance"]["max_deviation_points"] == 0
    for i in range(400, 410):  # 5 more images a class
        _image(root / "ab"[i % 2] / f"{i}.png", (8 + i // 256, 8), i)  # all distinct
    after = {r.item.identity: r.split for r in analyze(AnalysisConfig(str(root))).inspected}
    for label in "ab":
        moved = sum(after[k] != v for k, v in before.items() if k.startswith(f"{label}/"))
        assert moved <= 2 * (5 + 1)  # at most m + 1 across each of the two cuts


def test_reports_are_self_contained(odd_folder, tmp_path):
    root, _ = odd_folder
    analyze(AnalysisConfig(str(root)), str(tmp_path))
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    assert "http://" not in page and "https://" not in page
    markdown = (tmp_path / "report.md").read_text()
    assert "dogs/bomb.png" in markdown and "empty class folder" in markdown


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "data folder not found"),
        (lambda p: p.mkdir(), "no images found"),
        (lambda p: _image(p / "only" / "x.png", (4, 4)), r"single class \('only'\)"),
        (
            lambda p: (
                (p / "a").mkdir(parents=True),
                (p / "a" / "x.jpg").write_text("no"),
                (p / "b").mkdir(),
                (p / "b" / "y.jpg").write_bytes(b""),
            ),
            "no valid images",
        ),
    ],
)
def test_bad_input_gives_one_line_error_and_no_output(tmp_path, make, message):
    data = tmp_path / "data"
    make(data)
    out = tmp_path / "out"
    with pytest.raises(BittuneError, match=message) as info:
        analyze(AnalysisConfig(str(data)), str(out))
    assert "\n" not in str(info.value)
    assert not out.exists()


def test_only_one_class_valid_is_an_error(tmp_path):
    _image(tmp_path / "a" / "1.png", (4, 4), 1)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(AnalysisError, match="only one class has valid images"):
        analyze(AnalysisConfig(str(tmp_path)))


def test_bad_split_fractions(digits_folder):
    with pytest.raises(BittuneError, match="add up to 1"):
        analyze(AnalysisConfig(str(digits_folder), split_fractions=(0.5, 0.1, 0.1)))


def test_gcs_folder_matches_local(gcs, odd_folder, tmp_path):
    root, expected = odd_folder
    bucket = gcs.new_bucket()
    gcs.upload_tree(root, f"gs://{bucket}/odd")
    result = analyze(AnalysisConfig(f"gs://{bucket}/odd"), f"gs://{bucket}/analysis")
    assert codes(result) == expected
    assert gcs.names(bucket, "analysis/") == sorted(f"analysis/{n}" for n in OUTPUT_FILES)
    local = analyze(AnalysisConfig(str(root)))
    assert result.stats["examples"] == local.stats["examples"]
    assert result.hyperrule == local.hyperrule


def test_gcs_missing_prefix(gcs):
    bucket = gcs.new_bucket()
    with pytest.raises(BittuneError, match="data folder not found"):
        analyze(AnalysisConfig(f"gs://{bucket}/nothing-here"))


def test_copy_of_folder_is_independent_of_location(odd_folder, tmp_path):
    root, _ = odd_folder
    shutil.copytree(root, tmp_path / "moved")
    a = analyze(AnalysisConfig(str(root))).stats
    b = analyze(AnalysisConfig(str(tmp_path / "moved"))).stats
    assert a["examples"] == b["examples"]
