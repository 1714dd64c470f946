"""protobuf ``Value`` semantics and Go formatting, as the KFP v2 backend applies them.

The backend holds every parameter as a ``google.protobuf.Value``: a number is always a float64
(an ``int`` runtime argument becomes ``2.0``), and text is produced by Go's ``strconv`` and
``encoding/json``/``protojson``. The helpers here reproduce, in Python:

- ``to_pb``: a Python value as a ``structpb.Value`` holds it (ints become floats, tuples lists);
- ``go_float``: float64 as ``encoding/json`` and ``protojson`` print it (``2`` for 2.0, ``1e-7``);
- ``format_f`` / ``format_g``: ``strconv.FormatFloat(v, 'f'|'g', -1, 64)``;
- ``go_json``: ``encoding/json.Marshal`` output (sorted keys, compact, HTML-safe escapes);
- ``json_obj``: a value ready for ``json.dumps`` so that Python reads back what ``protojson``
  wrote (integral floats as ints);
- ``pb_value_to_text`` (backend/src/v2/metadata/converter.go ``PbValueToText``),
  ``pb_value_to_string`` (backend/src/v2/driver/util.go ``pbValueToString``),
  ``text_to_pb`` (converter.go ``TextToPbValue``).
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any

__all__ = [
    "format_f",
    "format_g",
    "go_float",
    "go_json",
    "json_obj",
    "kind_of",
    "pb_value_to_string",
    "pb_value_to_text",
    "text_to_pb",
    "to_pb",
]


def to_pb(value: Any) -> Any:
    """``value`` as a ``structpb.Value`` holds it: numbers float64, keys strings, no tuples."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list | tuple):
        return [to_pb(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_pb(v) for k, v in value.items()}
    raise TypeError(f"cannot hold {type(value).__name__} in a protobuf Value: {value!r}")


def kind_of(value: Any) -> str:
    """The ``structpb.Value`` kind the driver switches on (its ``typeMismatch`` wording)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "struct"
    raise TypeError(f"not a protobuf Value: {value!r}")


def _digits(value: float) -> tuple[bool, str, int]:
    """Shortest round-trip digits of ``value``: (negative, digits, decimal point position)."""
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    text = "".join(map(str, digits)) or "0"
    assert isinstance(exponent, int)
    return bool(sign), text, exponent + len(text)


def format_f(value: float) -> str:
    """``strconv.FormatFloat(value, 'f', -1, 64)``: shortest digits, never an exponent."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return format(Decimal(repr(float(value))).normalize(), "f")


def _format_e(negative: bool, digits: str, point: int) -> str:
    exp = point - 1
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{'-' if negative else ''}{mantissa}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"


def format_g(value: float) -> str:
    """``strconv.FormatFloat(value, 'g', -1, 64)`` (Go's ``%g``): ``%e`` below 1e-4 or from 1e6."""
    if math.isnan(value) or math.isinf(value):
        return format_f(value)
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    negative, digits, point = _digits(value)
    exp = point - 1
    if exp < -4 or exp >= 6:  # shortest precision: the %e/%f decision uses 6
        return _format_e(negative, digits, point)
    return format_f(value)


def go_float(value: float) -> str:
    """float64 as ``encoding/json`` and ``protojson`` write it (no trailing ``.0``)."""
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"json: unsupported value: {format_f(value)}")
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        negative, digits, point = _digits(value)
        text = _format_e(negative, digits, point)
        return re.sub(r"e-0(\d)$", r"e-\1", text)  # Go cleans e-07 up to e-7
    return format_f(value)


_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _go_string(text: str) -> str:
    out = ['"']
    for char in text:
        if char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif char in "<>&\u2028\u2029" or ord(char) < 0x20:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def go_json(value: Any) -> str:
    """``encoding/json.Marshal`` of a decoded JSON value: compact, keys sorted, HTML-escaped."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return go_float(float(value))
    if isinstance(value, str):
        return _go_string(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    if isinstance(value, dict):
        items = sorted((str(k), v) for k, v in value.items())
        return "{" + ",".join(f"{_go_string(k)}:{go_json(v)}" for k, v in items) + "}"
    raise TypeError(f"json: unsupported type: {type(value).__name__}")


def json_obj(value: Any) -> Any:
    """``value`` ready for ``json.dumps`` so that it reads back as ``protojson`` wrote it.

    ``protojson`` prints float64 2.0 as ``2``, so a component reads an ``int``; NaN and
    infinities become the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        number = float(value)
        if math.isnan(number):
            return "NaN"
        if math.isinf(number):
            return "Infinity" if number > 0 else "-Infinity"
        if number.is_integer() and abs(number) < 1e21:
            return int(number)
        return number
    if isinstance(value, list | tuple):
        return [json_obj(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_obj(v) for k, v in value.items()}
    raise TypeError(f"not JSON: {value!r}")


def pb_value_to_text(value: Any) -> str:
    """metadata.PbValueToText: how the driver turns any value into a STRING input."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return format_f(float(value))
    return go_json(value)


def pb_value_to_string(value: Any) -> str:
    """driver util.pbValueToString: ``{{$.inputs.parameters[...]}}`` in command and args."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number) and number.is_integer() and abs(number) < 2**63:
            return str(int(number))
        return format_g(number)
    return pb_value_to_text(value)


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def text_to_pb(text: str, parameter_type: str) -> Any:
    """metadata.TextToPbValue: an output parameter file read with its declared type."""

    def fail(reason: str) -> ValueError:
        return ValueError(
            f"TextToPbValue(text={json.dumps(text)}, type={json.dumps(parameter_type)}) "
            f"failed: {reason}"
        )

    stripped = text.strip()
    if parameter_type == "STRING":
        return text
    if parameter_type == "NUMBER_INTEGER":
        if not re.fullmatch(r"[+-]?\d+", stripped):
            raise fail(f'strconv.ParseInt: parsing "{stripped}": invalid syntax')
        return float(int(stripped))
    if parameter_type == "NUMBER_DOUBLE":
        if "_" in stripped:
            raise fail(f'strconv.ParseFloat: parsing "{stripped}": invalid syntax')
        try:
            return float(stripped)
        except ValueError:
            raise fail(f'strconv.ParseFloat: parsing "{stripped}": invalid syntax') from None
    if parameter_type == "BOOLEAN":
        if stripped in _TRUE:
            return True
        if stripped in _FALSE:
            return False
        raise fail(f'strconv.ParseBool: parsing "{stripped}": invalid syntax')
    if parameter_type in ("LIST", "STRUCT"):
        try:
            decoded = json.loads(text)
        except json.JSONDecodeError as err:
            raise fail(f"proto: syntax error: {err}") from None
        wanted = list if parameter_type == "LIST" else dict
        if not isinstance(decoded, wanted):
            raise fail("unexpected type")
        return to_pb(decoded)
    raise fail(
        "unknown type. Expected STRING, NUMBER_INTEGER, NUMBER_DOUBLE, BOOLEAN, LIST or STRUCT"
    )
