"""The bittune example schema and TFRecord framing, in pure Python (no TensorFlow import).

Examples are ``tf.train.Example`` protocol buffers, encoded here with their features in a fixed
order, so the same inputs always give the same bytes. Files use the TFRecord framing: a
little-endian uint64 length, its masked CRC-32C, the payload and its masked CRC-32C.

Schema (feature key: type):

================== ======= ====================================================
``image/encoded``  bytes   the image, JPEG or PNG: RGB, or grayscale (readers expand it)
``image/format``   bytes   ``jpeg`` or ``png``
``image/height``   int64   height of the stored image, px
``image/width``    int64   width of the stored image, px
``label``          int64   class index (see ``labels.json``)
``label/name``     bytes   class name, UTF-8
``source/uri``     bytes   where the image came from, UTF-8
``source/sha256``  bytes   hex SHA-256 of the source file's bytes
================== ======= ====================================================
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator
from typing import BinaryIO

import google_crc32c

_MASK_DELTA = 0xA282EAD8

# The schema, in the order features are encoded: (key, kind). The one definition both the
# writer (:meth:`Record.features`) and the tf.data reader (``components.bit.inputs``) use.
FEATURES: tuple[tuple[str, type], ...] = (
    ("image/encoded", bytes),
    ("image/format", bytes),
    ("image/height", int),
    ("image/width", int),
    ("label", int),
    ("label/name", bytes),
    ("source/uri", bytes),
    ("source/sha256", bytes),
)


@dataclasses.dataclass(frozen=True)
class Record:
    """One training example as stored."""

    image: bytes
    format: str
    height: int
    width: int
    label: int
    label_name: str
    source_uri: str
    source_sha256: str

    def features(self) -> list[tuple[str, bytes | int]]:
        """The values in :data:`FEATURES` order."""
        values = (
            self.image,
            self.format.encode(),
            self.height,
            self.width,
            self.label,
            self.label_name.encode("utf-8"),
            self.source_uri.encode("utf-8"),
            self.source_sha256.encode(),
        )
        return [(key, value) for (key, _), value in zip(FEATURES, values, strict=True)]


# ---------------------------------------------------------------------------------------------
# Protocol-buffer encoding of tf.train.Example


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _SMALL_VARINTS[value]
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_SMALL_VARINTS = [bytes((i,)) for i in range(0x80)]


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _feature(value: bytes | int) -> bytes:
    if isinstance(value, bytes):
        return _field(1, _field(1, value))  # Feature.bytes_list { value }
    return _field(3, _field(1, _varint(value)))  # Feature.int64_list { packed value }


def encode_example(record: Record) -> bytes:
    """Serialize ``record`` as a ``tf.train.Example`` (features in schema order)."""
    entries = b"".join(
        _field(1, _field(1, key.encode()) + _field(2, _feature(value)))
        for key, value in record.features()
    )
    return _field(1, entries)  # Example.features


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, bytes | int]]:
    pos = 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 2:
            length, pos = _read_varint(data, pos)
            yield number, data[pos : pos + length]
            pos += length
        elif wire == 0:
            value, pos = _read_varint(data, pos)
            yield number, value
        else:
            raise ValueError(f"unsupported wire type {wire}")


def decode_example(data: bytes) -> dict[str, bytes | int]:
    """Parse an Example holding single-valued bytes/int64 features (the bittune schema)."""
    out: dict[str, bytes | int] = {}
    for _, features in _fields(data):
        for _, entry in _fields(features):
            parts = dict(_fields(entry))
            key = parts[1].decode()
            kind, values = next(_fields(parts[2]))
            _, value = next(_fields(values))
            out[key] = value if kind == 1 else _read_varint(value, 0)[0]
    return out


def decode_record(data: bytes) -> Record:
    f = decode_example(data)
    return Record(
        image=f["image/encoded"],
        format=f["image/format"].decode(),
        height=f["image/height"],
        width=f["image/width"],
        label=f["label"],
        label_name=f["label/name"].decode("utf-8"),
        source_uri=f["source/uri"].decode("utf-8"),
        source_sha256=f["source/sha256"].decode(),
    )


# ---------------------------------------------------------------------------------------------
# TFRecord framing


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(payload: bytes) -> bytes:
    """One TFRecord: length, CRC of the length, payload, CRC of the payload."""
    length = struct.pack("<Q", len(payload))
    return (
        length
        + struct.pack("<I", _masked_crc(length))
        + payload
        + struct.pack("<I", _masked_crc(payload))
    )


def read_frames(stream: BinaryIO) -> Iterator[bytes]:
    """Payloads of a TFRecord stream, with both CRCs verified."""
    while True:
        header = stream.read(12)
        if not header:
            return
        if len(header) < 12:
            raise ValueError("truncated TFRecord header")
        length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
        if _masked_crc(length_bytes) != length_crc:
            raise ValueError("corrupt TFRecord length")
        (length,) = struct.unpack("<Q", length_bytes)
        payload = stream.read(length)
        footer = stream.read(4)
        if len(payload) < length or len(footer) < 4:
            raise ValueError("truncated TFRecord payload")
        if _masked_crc(payload) != struct.unpack("<I", footer)[0]:
            raise ValueError("corrupt TFRecord payload")
        yield payload


def read_records(path: str) -> Iterator[Record]:
    """Records of a local TFRecord file."""
    with open(path, "rb") as f:
        for payload in read_frames(f):
            yield decode_record(payload)
