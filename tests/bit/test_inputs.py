"""Reading TFRecords with tf.data: the record parser, decoding, resizing and the evaluation
stream, on records written by the project's own writer."""

import io

import numpy as np
from PIL import Image

from components.bit import inputs, tfrecords

tf = inputs.tf


def _png(value: int, size=(20, 10), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(np.full(shape, value, np.uint8), mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _records(path, count=5):
    """``count`` records in the project's own framing; record i is filled with 10 * i."""
    with open(path, "wb") as f:
        for i in range(count):
            image = _png(10 * i, mode="L" if i % 2 else "RGB")
            record = tfrecords.Record(image, "png", 10, 20, i % 3, f"c{i % 3}", f"k{i}", "0")
            f.write(tfrecords.frame(tfrecords.encode_example(record)))


def test_resize_leaves_an_image_of_the_target_size_untouched():
    image = tf.constant(np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3))
    np.testing.assert_array_equal(inputs.resize(image, 8).numpy(), image.numpy())
    assert inputs.resize(image, 4).shape == (4, 4, 3)


def test_decode_expands_grayscale_to_three_channels():
    image = inputs.decode(tf.constant(_png(7, mode="L"))).numpy()
    assert image.shape == (10, 20, 3) and (image == 7).all()


def test_to_unit_range_scales_uint8_and_passes_floats_through():
    assert float(inputs.to_unit_range(tf.constant([255], tf.uint8))[0]) == 1.0
    floats = tf.constant([0.25])
    assert inputs.to_unit_range(floats) is floats


def test_eval_dataset_yields_every_record_in_order(tmp_path):
    _records(tmp_path / "a.tfrecord", 5)
    batches = list(inputs.eval_dataset([str(tmp_path / "a.tfrecord")], crop=6, batch_size=2))
    labels = np.concatenate([y.numpy() for _, y in batches])
    assert [x.shape[1:] for x, _ in batches] == [(6, 6, 3)] * 3
    assert labels.tolist() == [0, 1, 2, 0, 1]
    assert int(batches[0][0][1].numpy().max()) == 10  # the second record's pixels
