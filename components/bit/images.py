"""Header-only image inspection: dimensions, format and colour mode without decoding pixels.

Pillow's ``Image.open`` reads only the header. On top of that a cheap structural check catches
files cut short (JPEG end-of-image marker, PNG ``IEND`` chunk, GIF trailer, RIFF/BMP sizes),
still without decoding a pixel.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import warnings
from collections.abc import Callable
from typing import TypeVar

from PIL import Image, ImageOps, UnidentifiedImageError

T = TypeVar("T")

# Our own pixel limit is checked on header sizes; Pillow's warning/error would only duplicate it.
Image.MAX_IMAGE_PIXELS = None
warnings.simplefilter("ignore", Image.DecompressionBombWarning)

DEFAULT_MAX_PIXELS = 100_000_000
_ROTATING_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112
_EXIF_IN_HEADER = {"JPEG", "MPO", "WEBP", "TIFF"}
# Pillow format name -> the name used in reports (MPO is a multi-picture JPEG).
_FORMAT_ALIASES = {"MPO": "JPEG"}

# Reason codes for flagged files.
EMPTY = "empty"
NOT_IMAGE = "not_image"
TRUNCATED = "truncated"
CORRUPT = "corrupt"
FORMAT_MISMATCH = "format_mismatch"
BOMB = "bomb"
UNREADABLE = "unreadable"


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What the header says: size after EXIF orientation, format, mode, content hash."""

    height: int
    width: int
    format: str
    mode: str
    sha256: str
    size_bytes: int
    orientation: int = 1


@dataclasses.dataclass(frozen=True)
class Problem:
    """Why a file is not a usable image: a short code and a human reason."""

    code: str
    reason: str


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def inspect(
    data: bytes,
    expected_format: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ImageInfo | Problem:
    """Inspect encoded image bytes from the header alone.

    ``expected_format`` is the Pillow format the file name promises (``"JPEG"``, ``"PNG"`` …);
    content of another format is a :data:`FORMAT_MISMATCH`.
    """
    return inspect_then(data, expected_format, max_pixels)[0]


def inspect_then(
    data: bytes,
    expected_format: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    then: Callable[[Image.Image], T] | None = None,
) -> tuple[ImageInfo | Problem, T | None]:
    """:func:`inspect`, and when the header passes, ``then(image)`` on the image still open
    (its header read, its pixels not yet decoded): one open for both."""
    if not data:
        return Problem(EMPTY, "empty file (0 bytes)"), None
    try:
        with Image.open(io.BytesIO(data)) as image:
            info = _checked(image, data, expected_format, max_pixels)
            if then is None or isinstance(info, Problem):
                return info, None
            return info, then(image)
    except UnidentifiedImageError:
        promised = f" (the name says {expected_format})" if expected_format else ""
        return Problem(NOT_IMAGE, f"not a recognised image{promised}"), None
    except Exception as exc:  # Pillow raises many types for malformed headers
        return Problem(CORRUPT, f"corrupt header: {exc}"), None


def _checked(
    image: Image.Image, data: bytes, expected_format: str | None, max_pixels: int
) -> ImageInfo | Problem:
    fmt = _FORMAT_ALIASES.get(image.format or "", image.format or "unknown")
    width, height = image.size
    orientation = _orientation(image)
    if expected_format and fmt != expected_format:
        return Problem(FORMAT_MISMATCH, f"content is {fmt} but the name says {expected_format}")
    if width < 1 or height < 1:
        return Problem(CORRUPT, f"invalid size {width}x{height}")
    if width * height > max_pixels:
        return Problem(
            BOMB,
            f"{width}x{height} = {width * height:,} pixels exceeds the limit of "
            f"{max_pixels:,} (possible decompression bomb)",
        )
    cut = _truncation(data, fmt)
    if cut:
        return Problem(TRUNCATED, cut)
    if orientation in _ROTATING_ORIENTATIONS:
        width, height = height, width
    return ImageInfo(height, width, fmt, image.mode, content_hash(data), len(data), orientation)


def _orientation(image: Image.Image) -> int:
    # Only where EXIF sits in the header: Pillow's PNG getexif() would decode the whole image
    # to look for an eXIf chunk after the pixel data.
    if image.format not in _EXIF_IN_HEADER and "exif" not in image.info:
        return 1
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block does not make the image unusable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _truncation(data: bytes, fmt: str) -> str | None:
    """A reason when the file visibly ends early for its format, else None."""
    tail = data[-1024:].rstrip(b"\x00\r\n\t ")
    if fmt == "JPEG" and not tail.endswith(b"\xff\xd9") and b"\xff\xd9" not in tail[-32:]:
        return "truncated JPEG (no end-of-image marker)"
    if fmt == "PNG" and b"IEND" not in data[-64:]:
        return "truncated PNG (no IEND chunk)"
    if fmt == "GIF" and not tail.endswith(b";"):
        return "truncated GIF (no trailer)"
    if fmt == "WEBP" and len(data) < int.from_bytes(data[4:8], "little") + 8:
        return "truncated WebP (shorter than its RIFF size)"
    if fmt == "BMP":
        declared = int.from_bytes(data[2:6], "little")
        if declared and len(data) < declared:
            return f"truncated BMP ({len(data)} of {declared} bytes)"
    return None


# ---------------------------------------------------------------------------------------------
# Normalisation for storage: RGB or grayscale, pre-resized, JPEG or PNG

DEFAULT_BACKGROUND = (255, 255, 255)
DEFAULT_JPEG_QUALITY = 95
KEPT, REENCODED, RESIZED = "kept", "reencoded", "resized"


@dataclasses.dataclass(frozen=True)
class Stored:
    """An image ready for a record: encoded bytes, their format and size, and what was done."""

    data: bytes
    format: str  # "jpeg" or "png"
    height: int
    width: int
    action: str  # KEPT (byte for byte), REENCODED (converted to RGB) or RESIZED


def prepare_for_storage(
    data: bytes,
    info: ImageInfo,
    resize: int,
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
) -> Stored:
    """Make ``data`` an 8-bit RGB or grayscale JPEG/PNG ready for training at ``resize``.

    An image whose shorter side exceeds ``resize`` is resized once, here, to ``resize`` x
    ``resize`` — the HyperRule's own first step, which ignores the aspect ratio — and stored as
    JPEG, so training decodes only its crop window and never resizes. JPEGs and PNGs that are
    already 8-bit RGB or grayscale and need neither rotation nor resizing are kept byte for
    byte; other images are converted (alpha composited on ``background``, 16-bit scaled,
    palettes expanded) and stored as JPEG if they were JPEG, else as lossless PNG. Grayscale
    stays one channel (readers expand it to RGB), so it is not stored three times over.
    Animated images keep their first frame.
    """
    needs_resize = min(info.height, info.width) > resize
    plain = info.mode in ("RGB", "L") and info.format in ("JPEG", "PNG")
    if plain and info.orientation == 1 and not needs_resize:
        return Stored(data, info.format.lower(), info.height, info.width, KEPT)
    with Image.open(io.BytesIO(data)) as image:
        if needs_resize and image.format in ("JPEG", "MPO"):
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that stays above the target.
            image.draft(image.mode if image.mode in ("RGB", "L") else "RGB", (resize, resize))
        image = ImageOps.exif_transpose(image)
        converted = to_storable(image, background)
    if needs_resize:
        converted = converted.resize((resize, resize), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if needs_resize or info.format == "JPEG":
        subsampling = 0 if jpeg_quality >= 90 else 2
        converted.save(buffer, format="JPEG", quality=jpeg_quality, subsampling=subsampling)
        fmt = "jpeg"
    else:
        converted.save(buffer, format="PNG", optimize=False)
        fmt = "png"
    action = RESIZED if needs_resize else REENCODED
    return Stored(buffer.getvalue(), fmt, converted.height, converted.width, action)


_WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def to_storable(
    image: Image.Image, background: tuple[int, int, int] = DEFAULT_BACKGROUND
) -> Image.Image:
    """Any Pillow mode as 8-bit grayscale ("L", for single-channel sources) or RGB."""
    image = _eight_bit(image)
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("LA", "La"):
        image = image.convert("LA")
        base = Image.new("L", image.size, sum(background) // 3)
        return Image.composite(image.getchannel("L"), base, image.getchannel("A"))
    return image if image.mode == "L" else to_rgb(image, background)


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float grayscale as 8-bit "L" (others unchanged)."""
    if image.mode not in _WIDE_GRAY_MODES:
        return image
    import numpy as np

    array = np.asarray(image)
    if image.mode == "F":
        eight_bit = np.clip(array, 0, 255)
    else:
        eight_bit = np.clip(array.astype(np.int64) >> 8, 0, 255)  # 16-bit range
    return Image.fromarray(eight_bit.astype(np.uint8), mode="L")


def to_rgb(
    image: Image.Image, background: tuple[int, int, int] = DEFAULT_BACKGROUND
) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: 16/32-bit scaled, palette and alpha composited."""
    image = _eight_bit(image)
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        base = Image.new("RGBA", image.size, (*background, 255))
        return Image.alpha_composite(base, image).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")
