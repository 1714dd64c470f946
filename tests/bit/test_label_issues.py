"""Likely label errors: on digits with labels flipped for a known part of the test split, the
ranked list puts the flipped images first, and the next run's analysis leaves them out."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from components.bit import label_issues, push
from components.bit.analysis import AnalysisConfig, analyze
from components.bit.errors import BittuneError
from components.bit.evaluation import EvalConfig, evaluate
from components.bit.preprocess import PreprocessConfig, preprocess
from components.bit.training import TrainConfig, train

FLIPPED_SHARE = 0.1  # of the test split
RULE = {"resize": 32, "crop": 28, "batch_size": 32, "micro_batch_size": 32, "total_steps": 200,
        "base_lr": 0.1, "warmup_steps": 10, "decay_steps": [140, 170, 190]}  # fmt: skip


@pytest.fixture(scope="module")
def flipped(digits_folder, tmp_path_factory):
    """A manifest of the digits: every fifth image in test, a tenth of those relabelled."""
    root = tmp_path_factory.mktemp("flipped")
    paths = sorted(digits_folder.rglob("*.png"))
    rows, flips = ["uri,label,split"], set()
    for n, path in enumerate(paths):
        label, split = path.parent.name, "test" if n % 5 == 0 else "train"
        if split == "test" and n % 50 == 0:
            label = str((int(label) + 1) % 10)
            flips.add(str(path))
        rows.append(f"{path},{label},{split}")
    (root / "digits.csv").write_text("\n".join(rows) + "\n")
    config = AnalysisConfig(str(root / "digits.csv"), data_dir=str(digits_folder.parent),
                            hyperrule_overrides=RULE, progress=False)  # fmt: skip
    analyze(config, str(root / "analysis"))
    preprocess(PreprocessConfig(str(root / "analysis"), str(root / "data"), progress=False))
    train(TrainConfig(str(root / "data"), "bittune-tiny", str(root / "run"), eval_every=60))
    result = evaluate(EvalConfig(str(root / "data"), str(root / "run"), str(root / "eval")))
    return root, flips, result, config


def test_flipped_labels_rank_first(flipped):
    root, flips, result, _ = flipped
    ranked = [issue["uri"] for issue in result.label_issues]
    k = len(flips)
    precision_at_k = len(set(ranked[:k]) & flips) / k
    print(f"{k} flipped of {result.metrics['examples']} test images; accuracy "
          f"{result.metrics['accuracy']:.3f}; precision at {k}: {precision_at_k:.2f}; "
          f"{len(ranked)} issues")  # fmt: skip
    assert k >= 7 and precision_at_k >= 0.7 and len(set(ranked[: 2 * k]) & flips) >= 0.8 * k
    written = json.loads((root / "eval" / label_issues.ISSUES_FILE).read_text())
    assert [i["uri"] for i in written["issues"]] == ranked and written["split"] == "test"
    page = (root / "eval" / "report.html").read_text()
    assert f"Likely label errors ({len(ranked):,})" in page and "p(given)" in page
    first = written["issues"][0]
    assert first["given"] != first["predicted"] and first["label_quality"] < 0.5


def test_the_next_run_leaves_the_listed_images_out(flipped, tmp_path):
    root, flips, result, config = flipped
    issues_file = str(root / "eval" / label_issues.ISSUES_FILE)
    again = AnalysisConfig(**{**vars(config), "exclude_list": issues_file})
    analysis = analyze(again, str(tmp_path / "analysis"))
    excluded = [r for r in analysis.inspected if r.problem and r.problem.code == "excluded"]
    assert {r.item.uri for r in excluded} == {i["uri"] for i in result.label_issues}
    provenance = analysis.stats["source"]["exclude_list"]
    assert provenance["uri"] == issues_file and provenance["excluded"] == len(excluded)
    manifest = preprocess(PreprocessConfig(str(tmp_path / "analysis"), str(tmp_path / "data")))
    assert manifest.source["exclude_list"]["sha256"] == provenance["sha256"]
    card = push.model_card(
        {**result.to_dict(), "blessed": True}, analysis.hyperrule.to_dict(),
        manifest.to_dict(), {"model_source": "bittune-tiny"},
    )  # fmt: skip
    assert "Left out by the exclude list" in push.card_markdown(card)


def test_exclude_list_forms_and_errors(tmp_path):
    listed = {"a.png", "b/c.jpg"}
    assert label_issues.read_exclude_list("a.png\n  b/c.jpg  # wrong label\n\n") == (listed, 2)
    assert label_issues.read_exclude_list(json.dumps(sorted(listed))) == (listed, 2)
    document = {"issues": [{"uri": "gs://x/a.png", "sha256": "ab"}]}
    assert label_issues.read_exclude_list(json.dumps(document)) == ({"gs://x/a.png", "ab"}, 1)
    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        Image.new("L", (20, 20), 9).save(tmp_path / "data" / label / "one.png")
    with pytest.raises(BittuneError, match="cannot read the exclude list"):
        analyze(AnalysisConfig(str(tmp_path / "data"), exclude_list=str(tmp_path / "none")))


def test_too_little_to_judge_gives_no_issues():
    assert label_issues.rank(np.array([0]), np.array([[0.2, 0.8]])) == []
    assert label_issues.rank(np.array([1, 1]), np.array([[0.9, 0.1], [0.8, 0.2]])) == []
