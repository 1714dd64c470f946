"""The subset of CEL that KFP's compiler emits for ``triggerPolicy.condition``.

The driver evaluates a task's condition with cel-go against the task's resolved executor input
(backend/src/v2/expression/expression.go ``Expr.Condition``; ``inputs.parameter_values`` is a
``map<string, google.protobuf.Value>``, so a number reads as a CEL ``double``). The kfp 2.17
compiler (kfp/compiler/pipeline_spec_builder.py ``_single_binary_operation_to_cel_condition``)
writes operands ``inputs.parameter_values['pipelinechannel--x']``, ``int(...)``, ``double(...)``,
quoted strings, ``true``/``false`` and numbers, joined by ``==  !=  <  <=  >  >=``, ``!( )`` and
``&&`` (dsl.Elif/dsl.Else negate earlier branches). This evaluator also takes ``||``, unary
``-``, ``+ - * / %``, ``? :``, ``in``, lists, ``string()``, ``bool()``, ``size()`` and
``parseJson()``, with cel-go's semantics where they matter here:

- equality is heterogeneous: numbers compare by value across int/double, values of different
  types are unequal (no error); ordering across non-numeric types is "no such overload";
- ``&&``/``||`` absorb an error when the other side decides the result;
- ``int(double)`` truncates toward zero, ``int('7')`` parses; ``!`` needs a bool;
- the result must be a bool ("evaluation error: return type is not bool").
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["CelError", "evaluate", "evaluate_condition"]


class CelError(Exception):
    """A CEL compile or evaluation error (the driver's wording where it has one)."""


_TOKEN = re.compile(
    r"""\s*(?:
    (?P<num>\d+\.\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|0x[0-9a-fA-F]+u?|\d+u?)
    |(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<op>==|!=|<=|>=|&&|\|\||[<>!()\[\].,+\-*/%?:{}])
    )""",
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b"}


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    pos: int


def _tokens(source: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(source):
        if source[pos:].strip() == "":
            break
        match = _TOKEN.match(source, pos)
        if match is None:
            raise CelError(f"ERROR: <input>:1:{pos + 1}: Syntax error: token recognition error")
        kind = match.lastgroup or "op"
        out.append(_Tok(kind, match.group(kind), match.start(kind)))
        pos = match.end()
    out.append(_Tok("eof", "", len(source)))
    return out


def _unquote(text: str) -> str:
    body, out, i = text[1:-1], [], 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                i += 2
                continue
            if nxt in "uU" or nxt == "x":
                width = {"u": 4, "U": 8, "x": 2}[nxt]
                out.append(chr(int(body[i + 2 : i + 2 + width], 16)))
                i += 2 + width
                continue
        out.append(char)
        i += 1
    return "".join(out)


class _UInt(int):
    """A CEL ``uint`` (a distinct type from ``int`` for equality and overloads)."""


_Node = Callable[[dict[str, Any]], Any]


class _Parser:
    """Pratt parser producing closures over the variable environment."""

    _BINARY = {
        "||": 1,
        "&&": 2,
        "==": 3,
        "!=": 3,
        "<": 3,
        "<=": 3,
        ">": 3,
        ">=": 3,
        "in": 3,
        "+": 4,
        "-": 4,
        "*": 5,
        "/": 5,
        "%": 5,
    }

    def __init__(self, source: str) -> None:
        self.source = source
        self.toks = _tokens(source)
        self.i = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self, text: str | None = None) -> _Tok:
        tok = self.toks[self.i]
        if text is not None and tok.text != text:
            raise CelError(
                f"ERROR: <input>:1:{tok.pos + 1}: Syntax error: expected {text!r}, "
                f"got {tok.text or 'EOF'!r}"
            )
        self.i += 1
        return tok

    def parse(self) -> _Node:
        node = self.expr()
        if self.peek().kind != "eof":
            tok = self.peek()
            raise CelError(
                f"ERROR: <input>:1:{tok.pos + 1}: Syntax error: extraneous input {tok.text!r}"
            )
        return node

    def expr(self) -> _Node:
        cond = self.binary(1)
        if self.peek().text == "?":
            self.take("?")
            yes = self.expr()
            self.take(":")
            no = self.expr()
            return lambda env: yes(env) if _truth(cond(env), "?:") else no(env)
        return cond

    def _binary_op(self) -> str | None:
        tok = self.peek()
        if tok.kind == "op" and tok.text in self._BINARY:
            return tok.text
        if tok.kind == "ident" and tok.text == "in":
            return "in"
        return None

    def binary(self, min_prec: int) -> _Node:
        left = self.unary()
        while (op := self._binary_op()) is not None and self._BINARY[op] >= min_prec:
            self.take()
            right = self.binary(self._BINARY[op] + 1)
            left = _make_binary(op, left, right)
        return left

    def unary(self) -> _Node:
        tok = self.peek()
        if tok.text == "!":
            self.take()
            operand = self.unary()
            return lambda env: not _truth(operand(env), "!_")
        if tok.text == "-":
            self.take()
            operand = self.unary()
            return lambda env: _negate(operand(env))
        return self.postfix()

    def postfix(self) -> _Node:
        node = self.primary()
        while True:
            tok = self.peek()
            if tok.text == ".":
                self.take()
                field = self.take().text
                if self.peek().text == "(":
                    raise CelError(f"undeclared reference to '{field}' (in container '')")
                node = _make_select(node, field)
            elif tok.text == "[":
                self.take()
                index = self.expr()
                self.take("]")
                node = _make_index(node, index)
            else:
                return node

    def primary(self) -> _Node:
        tok = self.take()
        if tok.kind == "num":
            value = _number(tok.text)
            return lambda env: value
        if tok.kind == "str":
            text = _unquote(tok.text)
            return lambda env: text
        if tok.text == "(":
            inner = self.expr()
            self.take(")")
            return inner
        if tok.text == "[":
            items: list[_Node] = []
            while self.peek().text != "]":
                items.append(self.expr())
                if self.peek().text != ",":
                    break
                self.take(",")
            self.take("]")
            return lambda env: [item(env) for item in items]
        if tok.kind == "ident":
            if tok.text in ("true", "false"):
                flag = tok.text == "true"
                return lambda env: flag
            if tok.text == "null":
                return lambda env: None
            if self.peek().text == "(":
                self.take("(")
                args: list[_Node] = []
                while self.peek().text != ")":
                    args.append(self.expr())
                    if self.peek().text != ",":
                        break
                    self.take(",")
                self.take(")")
                return _make_call(tok.text, args)
            name = tok.text

            def variable(env: dict[str, Any]) -> Any:
                if name not in env:
                    raise CelError(f"undeclared reference to '{name}' (in container '')")
                return env[name]

            return variable
        raise CelError(
            f"ERROR: <input>:1:{tok.pos + 1}: Syntax error: mismatched input {tok.text!r}"
        )


def _number(text: str) -> Any:
    if text.endswith("u"):
        return _UInt(int(text[:-1], 0))
    if text.startswith("0x"):
        return int(text, 16)
    if any(c in text for c in ".eE"):
        return float(text)
    return int(text)


def _type_name(value: Any) -> str:
    if value is None:
        return "null_type"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, _UInt):
        return "uint"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "map"
    return type(value).__name__


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _no_overload(op: str, *values: Any) -> CelError:
    types = ", ".join(_type_name(v) for v in values)
    return CelError(f"no such overload: {op}({types})")


def _truth(value: Any, op: str) -> bool:
    if isinstance(value, bool):
        return value
    raise _no_overload(op, value)


def _negate(value: Any) -> Any:
    if _is_num(value) and not isinstance(value, _UInt):
        return -value
    raise _no_overload("-_", value)


def _equal(a: Any, b: Any) -> bool:
    if _is_num(a) and _is_num(b):
        return bool(a == b)
    if _type_name(a) != _type_name(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return bool(a == b)


def _compare(op: str, a: Any, b: Any) -> bool:
    comparable = (_is_num(a) and _is_num(b)) or (
        _type_name(a) == _type_name(b) and isinstance(a, str | bool)
    )
    if not comparable:
        raise _no_overload(f"_{op}_", a, b)
    if isinstance(a, float) and math.isnan(a) or isinstance(b, float) and math.isnan(b):
        return False
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def _arith(op: str, a: Any, b: Any) -> Any:
    same = _type_name(a) == _type_name(b)
    if op == "+" and same and isinstance(a, str | list):
        return a + b
    if not (same and _is_num(a)):
        raise _no_overload(f"_{op}_", a, b)
    if op in "/%" and isinstance(a, int) and b == 0:
        raise CelError("division by zero" if op == "/" else "modulus by zero")
    if op == "/" and isinstance(a, int):
        return type(a)(int(a / b))
    if op == "%" and isinstance(a, int):
        return type(a)(int(math.fmod(a, b)))
    result = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else math.copysign(math.inf, a)}
    if op == "%":
        raise _no_overload("_%_", a, b)
    value = result[op]
    return type(a)(value) if isinstance(a, int) else value


def _make_binary(op: str, left: _Node, right: _Node) -> _Node:
    if op in ("&&", "||"):
        decisive = op == "||"  # the value that decides the result alone

        def logical(env: dict[str, Any]) -> Any:
            results: list[Any] = []
            for side in (left, right):
                try:
                    results.append(_truth(side(env), f"_{op}_"))
                except CelError as err:
                    results.append(err)
            if decisive in results:
                return decisive
            for item in results:
                if isinstance(item, CelError):
                    raise item
            return not decisive

        return logical
    if op in ("==", "!="):
        want = op == "=="
        return lambda env: _equal(left(env), right(env)) is want
    if op in ("<", "<=", ">", ">="):
        return lambda env: _compare(op, left(env), right(env))
    if op == "in":

        def contains(env: dict[str, Any]) -> bool:
            item, container = left(env), right(env)
            if isinstance(container, list):
                return any(_equal(item, x) for x in container)
            if isinstance(container, dict):
                return item in container
            raise _no_overload("@in", item, container)

        return contains
    return lambda env: _arith(op, left(env), right(env))


def _make_select(node: _Node, field: str) -> _Node:
    def select(env: dict[str, Any]) -> Any:
        value = node(env)
        if isinstance(value, dict):
            if field not in value:
                raise CelError(f"no such key: {field}")
            return value[field]
        raise CelError(f"type '{_type_name(value)}' does not support field selection")

    return select


def _make_index(node: _Node, index: _Node) -> _Node:
    def lookup(env: dict[str, Any]) -> Any:
        value, key = node(env), index(env)
        if isinstance(value, dict):
            if not isinstance(key, str) or key not in value:
                raise CelError(f"no such key: {key}")
            return value[key]
        if isinstance(value, list):
            if not _is_num(key) or (isinstance(key, float) and not key.is_integer()):
                raise _no_overload("_[_]", value, key)
            if not 0 <= int(key) < len(value):
                raise CelError(f"index out of bounds: {int(key)}")
            return value[int(key)]
        raise _no_overload("_[_]", value, key)

    return lookup


def _to_int(value: Any) -> int:
    if isinstance(value, bool) or value is None:
        raise _no_overload("int", value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value) or not -(2**63) <= value < 2**63:
            raise CelError("double is out of range of int")
        return int(value)  # truncates toward zero
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        if not re.fullmatch(r"[+-]?\d+", value.strip()) or value != value.strip():
            raise CelError(f"cannot convert {value!r} to int")
        return int(value)
    raise _no_overload("int", value)


def _to_double(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        raise _no_overload("double", value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise CelError(f"cannot convert {value!r} to double") from None
    raise _no_overload("double", value)


def _to_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    raise _no_overload("string", value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value in ("1", "t", "true", "TRUE", "True", "0", "f", "false"):
        return value in ("1", "t", "true", "TRUE", "True")
    if isinstance(value, str) and value in ("FALSE", "False"):
        return False
    raise _no_overload("bool", value)


def _size(value: Any) -> int:
    if isinstance(value, str | list | dict):
        return len(value)
    raise _no_overload("size", value)


def _parse_json(value: Any) -> Any:
    if not isinstance(value, str):
        raise _no_overload("parseJson", value)
    try:
        return _from_json(json.loads(value))
    except json.JSONDecodeError as err:
        raise CelError(f"failed to unmarshal JSON: {err}") from None


_FUNCTIONS: dict[str, Callable[[Any], Any]] = {
    "int": _to_int,
    "double": _to_double,
    "string": _to_string,
    "bool": _to_bool,
    "size": _size,
    "parseJson": _parse_json,
}


def _make_call(name: str, args: list[_Node]) -> _Node:
    func = _FUNCTIONS.get(name)
    if func is None:
        raise CelError(f"undeclared reference to '{name}' (in container '')")
    if len(args) != 1:
        raise CelError(f"found no matching overload for '{name}' applied to {len(args)} args")
    arg = args[0]
    return lambda env: func(arg(env))


def _from_json(value: Any) -> Any:
    """A JSON / protobuf ``Value`` as CEL sees it: every number a ``double``."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _from_json(v) for k, v in value.items()}
    return value


def evaluate(source: str, env: dict[str, Any]) -> Any:
    """Evaluates ``source`` with variables ``env`` (values in CEL's representation)."""
    return _Parser(source).parse()(env)


def evaluate_condition(
    condition: str,
    parameter_values: dict[str, Any],
    artifacts: dict[str, Any] | None = None,
) -> bool:
    """Expr.Condition: ``condition`` against a task's resolved inputs; True runs the task."""
    node = _Parser(condition).parse()
    env = {
        "inputs": {
            "parameter_values": {k: _from_json(v) for k, v in parameter_values.items()},
            "artifacts": artifacts or {},
            "parameters": {},
        },
        "outputs": {},
    }
    try:
        result = node(env)
    except CelError as err:
        raise CelError(f"evaluation error: {err}") from None
    if not isinstance(result, bool):
        raise CelError(f"evaluation error: return type is not bool, got {result!r}")
    return result
