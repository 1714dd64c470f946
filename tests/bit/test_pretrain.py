"""The tiny pretrained checkpoint bittune ships: its patch task and a short pretraining run
that writes the official .npz layout the model loader reads."""

import numpy as np

from components.bit import models, pretrain


def test_patches_are_labelled_by_photo_and_region():
    images, labels = next(iter(pretrain.patch_dataset(seed=0, batch_size=6)))
    assert images.shape == (6, pretrain.INPUT, pretrain.INPUT, 3)
    assert float(np.min(images)) >= 0 and float(np.max(images)) <= 1
    assert set(labels.numpy()) <= set(range(2 * pretrain.REGIONS))


def test_a_short_pretraining_writes_a_loadable_checkpoint(tmp_path):
    path = str(tmp_path / "tiny.npz")
    accuracy = pretrain.pretrain(path, steps=100, batch_size=8)
    assert 0 <= accuracy <= 1
    backbone = models.load_backbone(path)
    features = backbone(np.zeros((1, 32, 32, 3), np.float32))
    assert features.shape[0] == 1 and np.isfinite(features.numpy()).all()
