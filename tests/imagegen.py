"""Generators of image-dataset folders for tests of the image-dataset analyser.

Pure helpers (no pytest): every function writes files under a given root and returns
what a test needs to check the analyser's findings. Output is deterministic (seeded RNG).
"""

from __future__ import annotations

import io
import pathlib
import struct
import zlib

import numpy as np
from PIL import Image

# Relative paths (posix) under the odd folder that are not dataset items.
ODD_IGNORED: list[str] = [
    ".DS_Store",
    "birds/Thumbs.db",
    "cats/.hidden.jpg",
    "dogs/readme.txt",
    "empty_class/",
]

# File whose EXIF orientation is 6, and its (height, width) AFTER the orientation is applied.
EXIF_ROTATED: tuple[str, tuple[int, int]] = ("dogs/exif rotated.jpg", (60, 20))

UNICODE_NAME = "birds/p\u00e1jaro \u00f1 \u9ce5 photo.jpg"  # "pájaro ñ 鳥 photo.jpg", NFC

_EXIF_ORIENTATION_TAG = 0x0112


def _noise(rng: np.random.Generator, height: int, width: int, channels: int = 3) -> np.ndarray:
    """Random uint8 pixels shaped (height, width[, channels])."""
    shape = (height, width) if channels == 1 else (height, width, channels)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _smooth(rng: np.random.Generator, height: int, width: int, channels: int = 3) -> np.ndarray:
    """Random-coloured gradient with mild noise, uint8 (compresses like a photo)."""
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    start = rng.uniform(0, 255, size=channels).astype(np.float32)
    dy = rng.uniform(-120, 120, size=channels).astype(np.float32)
    dx = rng.uniform(-120, 120, size=channels).astype(np.float32)
    img = start + ys * dy + xs * dx + rng.normal(0, 6, size=(height, width, channels))
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img[..., 0] if channels == 1 else img


def _encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    """Encode an image to bytes in the given Pillow format."""
    buf = io.BytesIO()
    im.save(buf, format=fmt, **params)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC over type+data."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny, well-formed PNG whose header declares width x height pixels (8-bit grey)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _exif_jpeg(rng: np.random.Generator) -> bytes:
    """JPEG stored 60 wide x 20 high with EXIF orientation 6 (displayed 20 wide x 60 high)."""
    exif = Image.Exif()
    exif[_EXIF_ORIENTATION_TAG] = 6
    im = Image.fromarray(_smooth(rng, 20, 60))
    return _encode(im, "JPEG", quality=90, exif=exif.tobytes())


def _odd_files(rng: np.random.Generator) -> tuple[dict[str, bytes], dict[str, str | None]]:
    """Contents of every odd-folder file and the expected flag of each dataset item."""
    files: dict[str, bytes] = {}
    flags: dict[str, str | None] = {}

    def item(rel: str, data: bytes, flag: str | None = None) -> None:
        files[rel] = data
        flags[rel] = flag

    rgb = Image.fromarray  # short alias: uint8 (H, W[, C]) array -> image

    # --- cats: valid ------------------------------------------------------------------------
    cmyk = Image.frombytes("CMYK", (40, 30), _smooth(rng, 30, 40, 4).tobytes())
    item("cats/cmyk.jpg", _encode(cmyk, "JPEG", quality=90))
    item("cats/gray.jpg", _encode(Image.fromarray(_smooth(rng, 36, 48, 1)), "JPEG"))
    original = _encode(rgb(_smooth(rng, 50, 70)), "JPEG", quality=85)
    item("cats/a_original.jpg", original)
    item("cats/rgba.png", _encode(rgb(_smooth(rng, 24, 32, 4)), "PNG"))
    item("cats/nested/deeper/kitten.png", _encode(rgb(_smooth(rng, 28, 28)), "PNG"))
    item("cats/tiny_1x1.png", _encode(Image.new("RGB", (1, 1), (201, 17, 99)), "PNG"))
    # --- cats: flagged ----------------------------------------------------------------------
    item("cats/dup_copy.jpg", original, "duplicate")
    item("cats/empty.jpg", b"", "empty")

    # --- dogs: valid ------------------------------------------------------------------------
    item("dogs/baseline.jpg", _encode(rgb(_smooth(rng, 80, 120)), "JPEG", quality=90))
    item(EXIF_ROTATED[0], _exif_jpeg(rng))
    sixteen = np.clip(rng.normal(30000, 9000, size=(22, 34)), 0, 65535).astype(np.uint16)
    item("dogs/sixteen_bit.png", _encode(Image.fromarray(sixteen), "PNG"))
    palette = rgb(_smooth(rng, 26, 38)).quantize(colors=16)
    item("dogs/palette_transparent.png", _encode(palette, "PNG", transparency=0))
    gif = rgb(_smooth(rng, 30, 44)).quantize(colors=32)
    item("dogs/anim.gif", _encode(gif, "GIF"))
    # --- dogs: flagged ----------------------------------------------------------------------
    jpeg = _encode(rgb(_noise(rng, 200, 200)), "JPEG", quality=95)
    item("dogs/truncated.jpg", jpeg[: int(len(jpeg) * 0.6)], "truncated")
    item("dogs/notes.jpg", b"Shopping list:\n- kibble\n- leash\nThis is not a JPEG.\n", "not_image")
    item("dogs/bomb.png", _bomb_png(), "bomb")
    shared = _encode(rgb(_smooth(rng, 18, 27)), "PNG")
    item("dogs/shared.png", shared, "label_conflict")

    # --- birds: valid -----------------------------------------------------------------------
    item(UNICODE_NAME, _encode(rgb(_smooth(rng, 33, 41)), "JPEG", quality=88))
    item("birds/UPPER.JPG", _encode(rgb(_smooth(rng, 27, 39)), "JPEG", quality=87))
    item("birds/photo.webp", _encode(rgb(_smooth(rng, 32, 48)), "WEBP", quality=80))
    item("birds/photo.bmp", _encode(rgb(_smooth(rng, 21, 31)), "BMP"))
    item("birds/photo.tiff", _encode(rgb(_smooth(rng, 25, 35)), "TIFF"))
    # --- birds: flagged ---------------------------------------------------------------------
    png = _encode(rgb(_noise(rng, 100, 100)), "PNG")
    item("birds/truncated.png", png[: int(len(png) * 0.6)], "truncated")
    item("birds/really_png.jpg", _encode(rgb(_smooth(rng, 23, 29)), "PNG"), "format_mismatch")
    item("birds/shared.png", shared, "label_conflict")

    # --- non-items --------------------------------------------------------------------------
    files["cats/.hidden.jpg"] = _encode(rgb(_smooth(rng, 19, 23)), "JPEG")
    files["dogs/readme.txt"] = b"Dog photos collected for the bittune tests.\n"
    ole_magic = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
    files["birds/Thumbs.db"] = ole_magic + rng.integers(0, 256, 56, dtype=np.uint8).tobytes()
    ds_magic = b"\x00\x00\x00\x01Bud1"
    files[".DS_Store"] = ds_magic + rng.integers(0, 256, 40, dtype=np.uint8).tobytes()
    return files, flags


def write_odd_folder(root: pathlib.Path) -> dict[str, str | None]:
    """Create a class-per-subfolder image dataset under root holding every odd case.

    Returns {relative_posix_path: expected_flag_or_None} for every image-extension item;
    non-items (hidden files, other extensions, the empty class folder) are in ODD_IGNORED.
    """
    root = pathlib.Path(root)
    files, flags = _odd_files(np.random.default_rng(20240611))
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "empty_class").mkdir(parents=True, exist_ok=True)
    return dict(sorted(flags.items()))


def write_photo(path: pathlib.Path, seed: int) -> None:
    """A small blocky RGB JPEG at ``path`` (its folders made), different for each seed."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8).repeat(6, 0).repeat(6, 1)
    Image.fromarray(pixels).save(path, quality=90)


def photo_tiles() -> list[Image.Image]:
    """48 distinct 96x96 RGB tiles of scikit-learn's two bundled photos (real photo content)."""
    from sklearn.datasets import load_sample_images

    return [
        Image.fromarray(photo[y : y + 96, x : x + 96])
        for photo in load_sample_images().images
        for y in range(0, photo.shape[0] - 96, 100)
        for x in range(0, photo.shape[1] - 96, 100)
    ]


def write_leaky_folder(root: pathlib.Path) -> int:
    """ROOT/{train,test}/{china,flower}/: 36 training tiles, 12 test tiles, and in test a
    resized, re-compressed copy of every fourth training tile; returns the copies' count."""
    copies = 0
    for n, tile in enumerate(photo_tiles()):
        label = "china" if n < 24 else "flower"
        split = "test" if n % 4 == 0 else "train"
        (root / split / label).mkdir(parents=True, exist_ok=True)
        tile.save(root / split / label / f"{n:02d}.jpg", quality=95)
        if n % 4 == 1:
            (root / "test" / label).mkdir(parents=True, exist_ok=True)
            tile.resize((144, 144)).save(root / "test" / label / f"{n:02d} copy.jpg", quality=60)
            copies += 1
    return copies


def look_alike_shapes(count: int, seed: int = 0, side: int = 28) -> list[Image.Image]:
    """``count`` distinct but look-alike grayscale images, as product shots on a plain
    background are: one bright rounded blob each, its size, place and shade varied a little,
    with faint noise. Their pHashes sit a few bits apart, so hash links alone chain them."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32)
    out = []
    for _ in range(count):
        cy, cx = side / 2 + rng.uniform(-1.5, 1.5, size=2)
        ry, rx = side * rng.uniform(0.28, 0.4), side * rng.uniform(0.22, 0.34)
        inside = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2
        shade = rng.uniform(150, 230) * np.clip(1.3 - inside, 0, 1) ** 0.5
        pixels = shade + rng.normal(0, 8, size=(side, side))
        out.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L"))
    return out
