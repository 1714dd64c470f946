"""Image headers and storage form, on images made here: what inspect() finds from the header
alone, and what prepare_for_storage() keeps, converts or resizes."""

import io

import numpy as np
import pytest
from PIL import Image

from components.bit import images


def _encoded(mode: str, size=(40, 30), fmt="PNG", **options) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA").convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_inspect_reads_size_format_and_mode_from_the_header():
    data = _encoded("RGB", (40, 30), "JPEG")
    info = images.inspect(data, expected_format="JPEG")
    assert (info.height, info.width, info.format, info.mode) == (30, 40, "JPEG", "RGB")
    assert info.size_bytes == len(data) and info.sha256 == images.content_hash(data)


@pytest.mark.parametrize(
    ("data", "expected", "code"),
    [
        (b"", None, images.EMPTY),
        (b"plain text, not pixels", "PNG", images.NOT_IMAGE),
        (_encoded("RGB", fmt="PNG"), "JPEG", images.FORMAT_MISMATCH),
        (_encoded("RGB", fmt="JPEG")[:-200], "JPEG", images.TRUNCATED),
    ],
)
def test_inspect_names_what_is_wrong(data, expected, code):
    problem = images.inspect(data, expected_format=expected)
    assert isinstance(problem, images.Problem) and problem.code == code and problem.reason


def test_a_header_above_the_pixel_limit_is_a_bomb_and_is_not_decoded():
    problem = images.inspect(_encoded("RGB", (400, 300)), max_pixels=1000)
    assert problem.code == images.BOMB and "decompression bomb" in problem.reason


def test_plain_small_images_are_kept_byte_for_byte():
    data = _encoded("RGB", (40, 30), "JPEG")
    stored = images.prepare_for_storage(data, images.inspect(data), resize=64)
    assert stored.action == images.KEPT and stored.data == data and stored.format == "jpeg"


@pytest.mark.parametrize("mode", ["RGBA", "P", "LA", "I;16"])
def test_other_modes_become_eight_bit_rgb_or_grayscale(mode):
    data = _encoded("L" if mode == "I;16" else mode, fmt="PNG")
    if mode == "I;16":
        wide = Image.fromarray(np.full((30, 40), 40_000, np.uint16))
        buffer = io.BytesIO()
        wide.save(buffer, format="PNG")
        data = buffer.getvalue()
    stored = images.prepare_for_storage(data, images.inspect(data), resize=64)
    decoded = Image.open(io.BytesIO(stored.data))
    assert stored.action == images.REENCODED and stored.format == "png"
    assert decoded.mode in ("RGB", "L") and decoded.size == (40, 30)
    if mode == "I;16":
        assert np.asarray(decoded).max() == 40_000 >> 8  # scaled, not clipped to 255


def test_large_images_are_resized_once_to_the_square_resize_size():
    data = _encoded("RGB", (300, 200), "PNG")
    stored = images.prepare_for_storage(data, images.inspect(data), resize=64)
    assert stored.action == images.RESIZED and stored.format == "jpeg"
    assert (stored.height, stored.width) == (64, 64)
    assert Image.open(io.BytesIO(stored.data)).size == (64, 64)


def test_inspect_then_uses_the_open_image_only_when_the_header_passes():
    seen = []
    good = io.BytesIO()
    Image.new("L", (20, 10), 7).save(good, format="PNG")
    info, kept = images.inspect_then(
        good.getvalue(), "PNG", then=lambda im: seen.append(im.size) or "x"
    )
    assert (info.width, info.height, kept, seen) == (20, 10, "x", [(20, 10)])
    problem, kept = images.inspect_then(good.getvalue(), "JPEG", then=seen.append)
    assert problem.code == images.FORMAT_MISMATCH and kept is None and len(seen) == 1
    problem, kept = images.inspect_then(good.getvalue(), max_pixels=100, then=seen.append)
    assert problem.code == images.BOMB and kept is None and len(seen) == 1
