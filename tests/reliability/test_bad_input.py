"""Bad input through the whole pipeline (kfp.local): a messy manifest goes through to a pushed
model with every row accounted for; a dataset with nothing usable stops at the first step with
one clear message. No secret from the environment reaches an artifact or a log."""

from __future__ import annotations

import collections
import csv
import json
import os
import pathlib
import shutil

import pytest

from components.bit.errors import BittuneError
from pipelines.local_run import run_locally
from tests.imagegen import write_photo
from tests.training_helpers import TINY_RULE

SECRET = "sk-bittune-test-4f9a1c7e0b2d"  # planted in the environment, must never be written


@pytest.fixture(scope="module")
def messy(odd_folder, tmp_path_factory):
    """A manifest over the odd-files folder plus: a missing file, a duplicate row, labels with
    spaces and unicode, a one-image class, a test-only class, a path out of the data root and
    a symlink out of it. Returns (manifest, data root, {row: expected reject reason or None})."""
    odd_root, odd_expected = odd_folder
    root = tmp_path_factory.mktemp("messy") / "data"
    shutil.copytree(odd_root, root / "odd")
    rows: list[tuple[str, str, str]] = []
    for relpath in odd_expected:
        rows.append((f"odd/{relpath}", relpath.split("/")[0], ""))
    for n, label in enumerate(["golden retriever", "café au lait", "猫"] * 4):
        write_photo(root / "extra" / label / f"{n}.jpg", n)
        rows.append((f"extra/{label}/{n}.jpg", label, ""))
    write_photo(root / "extra" / "lonely" / "only.jpg", 100)
    rows.append(("extra/lonely/only.jpg", "lonely", "train"))
    for n in range(2):
        write_photo(root / "extra" / "rare" / f"{n}.jpg", 200 + n)
        rows.append((f"extra/rare/{n}.jpg", "rare", "test"))
    rows.append(("odd/cats/ghost.jpg", "cats", ""))  # missing
    rows.append(("odd/dogs/baseline.jpg", "dogs", ""))  # duplicate row
    write_photo(root.parent / "outside.jpg", 300)
    rows.append(("../outside.jpg", "cats", ""))  # escapes the data root
    os.symlink(root.parent / "outside.jpg", root / "extra" / "sneaky.jpg")
    rows.append(("extra/sneaky.jpg", "dogs", ""))  # a symlink out of the data root
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "label", "split"])
        writer.writerows(rows)
    return manifest, root, rows


@pytest.fixture(scope="module")
def messy_run(messy, tmp_path_factory):
    manifest, root, _ = messy
    pipeline_root = tmp_path_factory.mktemp("messy-run")
    saved = os.environ.get("BITTUNE_API_TOKEN")
    os.environ["BITTUNE_API_TOKEN"] = SECRET
    try:
        outputs = run_locally(
            str(manifest),
            pipeline_root=str(pipeline_root),
            data_dir=str(root),
            preprocess_workers=2,
            hyperrule_overrides=json.dumps(TINY_RULE),
            checkpoint_every=2,
            serving_root=str(pipeline_root / "serving"),
        )
    finally:
        if saved is None:
            os.environ.pop("BITTUNE_API_TOKEN")
        else:
            os.environ["BITTUNE_API_TOKEN"] = saved
    return outputs, pipeline_root


def test_messy_manifest_goes_through_with_every_row_accounted(messy, messy_run, ledger):
    _, _, rows = messy
    outputs, _ = messy_run
    dataset = pathlib.Path(outputs["dataset"])
    manifest = json.loads((dataset / "manifest.json").read_text(encoding="utf-8"))
    rejects = json.loads((dataset / "rejects.json").read_text(encoding="utf-8"))
    totals = manifest["totals"]
    assert totals["inputs"] == len(rows) == totals["written"] + totals["rejected"]

    written: collections.Counter[str] = collections.Counter()
    for split in manifest["splits"].values():
        written.update(split["per_class"])
    rejected = collections.Counter(r["label"] for r in rejects)
    listed = collections.Counter(label for _, label, _ in rows)
    for label in listed:  # per class: inputs = written + rejected
        assert written[label] + rejected[label] == listed[label], label

    reasons = {r["uri"].rsplit("/", 1)[-1]: r["reason"] for r in rejects}
    assert "not found" in reasons["ghost.jpg"] or "missing" in reasons["ghost.jpg"]
    assert "escapes the data root" in reasons["outside.jpg"]
    assert "symlink escapes" in reasons["sneaky.jpg"]
    assert sum("duplicate" in r["reason"] for r in rejects) >= 2  # the row and the odd copy
    assert all(r["reason"] for r in rejects)

    labels = json.loads((dataset / "labels.json").read_text(encoding="utf-8"))["labels"]
    assert {"golden retriever", "café au lait", "猫", "lonely", "rare"} <= set(labels)
    assert manifest["splits"]["test"]["per_class"].get("rare") == 2
    assert "rare" not in manifest["splits"]["train"]["per_class"]
    stats = json.loads((pathlib.Path(outputs["analysis"]) / "stats.json").read_text("utf-8"))
    warnings = " ".join(stats["warnings"])
    assert "'rare' has no training images" in warnings and "'lonely'" in warnings
    assert 0 <= outputs["test_accuracy"] <= 1  # trained, evaluated (rare included), gated

    ledger["items_checked"] += totals["inputs"]
    ledger["items_rejected"] += totals["rejected"]
    ledger["items_lost"] += totals["inputs"] - totals["written"] - totals["rejected"]


def test_no_secret_in_artifacts_or_logs(messy_run, capfd, ledger):
    _, pipeline_root = messy_run
    logs = capfd.readouterr()
    texts = {"stdout": logs.out, "stderr": logs.err}
    files = [p for p in pathlib.Path(pipeline_root).rglob("*") if p.is_file()]
    assert len(files) > 20
    leaks = [name for name, text in texts.items() if SECRET in text]
    leaks += [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    ledger["files_scanned"] += len(files) + len(texts)
    ledger["secrets_found"] += len(leaks)
    assert leaks == []


def test_nothing_usable_stops_at_the_first_step_with_one_message(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "notes.jpg").write_text("not an image")
    manifest = root / "manifest.csv"
    manifest.write_text("image,label\nnotes.jpg,a\nmissing.jpg,b\n", encoding="utf-8")
    pipeline_root = tmp_path / "root"
    with pytest.raises(BittuneError) as caught:
        run_locally(str(manifest), pipeline_root=str(pipeline_root), data_dir=str(root))
    message = str(caught.value)
    assert message.startswith("no valid images in") and "analyze-dataset" in message
    assert "1 not_image" in message and "1 missing" in message
    run = next(pipeline_root.glob("bit-finetune-*"))
    assert not (run / "train-model").exists()  # stopped before any expensive step
