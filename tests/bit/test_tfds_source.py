"""TFDS sources: a dataset prepared offline from scikit-learn's digits into a data_dir."""

import json
import subprocess
import sys

import numpy as np
import pytest

from components.bit.analysis import AnalysisConfig, analyze
from components.bit.sources import SourceError

tfds = pytest.importorskip("tensorflow_datasets")


class TinyDigits(tfds.core.GeneratorBasedBuilder):
    """Digits as a TFDS image dataset with train and test splits (built offline)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(names=[f"digit{i}" for i in range(10)]),
                }
            )
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 120), "test": self._generate_examples(120, 150)}

    def _generate_examples(self, start, stop):
        from sklearn.datasets import load_digits

        digits = load_digits()
        for index in range(start, stop):
            pixels = np.round(digits.images[index] * 255 / 16).astype(np.uint8)[..., None]
            yield index, {"image": pixels, "label": int(digits.target[index])}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tfds")
    TinyDigits(data_dir=str(folder)).download_and_prepare()
    return folder


def test_tfds_dataset_is_analysed_with_its_splits(data_dir, tmp_path):
    result = analyze(AnalysisConfig("tfds:tiny_digits", data_dir=str(data_dir)), str(tmp_path))
    stats = result.stats
    assert stats["source"]["kind"] == "tfds" and stats["source"]["has_splits"]
    assert stats["examples"]["train"]["total"] == 120
    assert stats["examples"]["test"]["total"] == 30
    assert stats["classes"] == [f"digit{i}" for i in range(10)]
    assert stats["formats"] == {"PNG": 150}
    assert result.hyperrule.examples == 120 and result.hyperrule.resize == 160


def test_tfds_cli_reads_prepared_data_without_the_builder_code(data_dir, tmp_path):
    """A separate process has no TinyDigits class: TFDS loads the prepared files alone."""
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "analyze",
        "tfds:tiny_digits",
        "--data-dir",
        str(data_dir),
        "--output",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "hyperrule.json").read_text())["examples"] == 120


def test_unknown_and_unprepared_tfds_names(data_dir, tmp_path):
    with pytest.raises(SourceError, match="unknown TFDS dataset 'no_such_dataset_xyz'"):
        analyze(AnalysisConfig("tfds:no_such_dataset_xyz", data_dir=str(data_dir)))
    with pytest.raises(SourceError, match="'mnist' is not prepared in"):
        analyze(AnalysisConfig("tfds:mnist", data_dir=str(tmp_path)))
    with pytest.raises(SourceError, match="needs --data-dir"):
        analyze(AnalysisConfig("tfds:mnist"))
