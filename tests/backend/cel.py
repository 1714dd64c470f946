"""The CEL that KFP's compiler writes for ``triggerPolicy.condition``, evaluated as cel-go does.

The kfp 2.17 compiler (kfp/compiler/pipeline_spec_builder.py
``_single_binary_operation_to_cel_condition``, ``_binary_operations_to_cel_conjunctive``) writes
operands ``inputs.parameter_values['pipelinechannel--x']``, ``int(...)``, ``double(...)``, quoted
strings, ``true``/``false`` and (possibly negative) numbers, compared with ``==  !=  <  <=  >
>=``, negated as ``!( )`` and joined by ``&&`` (dsl.Elif/dsl.Else negate earlier branches);
``||`` is taken too. The driver evaluates it with cel-go against the task's resolved inputs
(backend/src/v2/expression/expression.go ``Expr.Condition``; ``inputs.parameter_values`` is a
``map<string, google.protobuf.Value>``, so a number reads as a CEL ``double``). cel-go's
semantics kept here:

- equality is heterogeneous: numbers compare by value across int/double, values of different
  types are unequal (no error); ordering across non-numeric types is "no such overload";
- ``&&``/``||`` absorb an error when the other side decides the result;
- ``int(double)`` truncates toward zero; ``!`` needs a bool;
- the result must be a bool ("evaluation error: return type is not bool").
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["CelError", "evaluate_condition"]


class CelError(Exception):
    """A CEL compile or evaluation error (the driver's wording where it has one)."""


_TOKEN = re.compile(
    r"""\s*(?:
    (?P<num>\d+\.\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+)
    |(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<op>==|!=|<=|>=|&&|\|\||[<>!()\[\].\-])
    )""",
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}
_RELATIONS = ("==", "!=", "<", "<=", ">", ">=")

_Node = Callable[[dict[str, Any]], Any]


class _Tok(NamedTuple):
    kind: str
    text: str
    pos: int


def _tokens(source: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while source[pos:].strip():
        match = _TOKEN.match(source, pos)
        if match is None:
            raise CelError(f"ERROR: <input>:1:{pos + 1}: Syntax error: token recognition error")
        kind = match.lastgroup or "op"
        out.append(_Tok(kind, match.group(kind), match.start(kind)))
        pos = match.end()
    out.append(_Tok("eof", "", len(source)))
    return out


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), text[1:-1])


class _Parser:
    """Recursive descent over ``||``, ``&&``, one relation, unary ``!``/``-``, selections and
    indexes, producing closures over the variable environment."""

    def __init__(self, source: str) -> None:
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
        node = self.logical("||")
        tok = self.peek()
        if tok.kind != "eof":
            raise CelError(
                f"ERROR: <input>:1:{tok.pos + 1}: Syntax error: extraneous input {tok.text!r}"
            )
        return node

    def logical(self, op: str) -> _Node:
        operand = (lambda: self.logical("&&")) if op == "||" else self.relation
        left = operand()
        while self.peek().text == op:
            self.take()
            left = _make_logical(op, left, operand())
        return left

    def relation(self) -> _Node:
        left = self.unary()
        op = self.peek().text
        if op not in _RELATIONS:
            return left
        self.take()
        right = self.unary()
        if op in ("==", "!="):
            want = op == "=="
            return lambda env: _equal(left(env), right(env)) is want
        return lambda env: _compare(op, left(env), right(env))

    def unary(self) -> _Node:
        tok = self.peek()
        if tok.text not in ("!", "-"):
            return self.postfix()
        self.take()
        operand = self.unary()
        if tok.text == "!":
            return lambda env: not _truth(operand(env), "!_")
        return lambda env: _negate(operand(env))

    def postfix(self) -> _Node:
        node = self.primary()
        while self.peek().text in (".", "["):
            if self.take().text == ".":
                node = _make_select(node, self.take().text)
            else:
                index = self.logical("||")
                self.take("]")
                node = _make_index(node, index)
        return node

    def primary(self) -> _Node:
        tok = self.take()
        if tok.kind == "num":
            value = float(tok.text) if any(c in tok.text for c in ".eE") else int(tok.text)
            return lambda env: value
        if tok.kind == "str":
            text = _unquote(tok.text)
            return lambda env: text
        if tok.text == "(":
            inner = self.logical("||")
            self.take(")")
            return inner
        if tok.kind != "ident":
            raise CelError(
                f"ERROR: <input>:1:{tok.pos + 1}: Syntax error: mismatched input {tok.text!r}"
            )
        if tok.text in ("true", "false"):
            flag = tok.text == "true"
            return lambda env: flag
        if self.peek().text == "(":
            self.take("(")
            arg = self.logical("||")
            self.take(")")
            return _make_call(tok.text, arg)
        return _make_variable(tok.text)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    names = {int: "int", float: "double", str: "string", list: "list", dict: "map"}
    return "null_type" if value is None else names.get(type(value), type(value).__name__)


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
    if _is_num(value):
        return -value
    raise _no_overload("-_", value)


def _equal(a: Any, b: Any) -> bool:
    if _is_num(a) and _is_num(b):
        return bool(a == b)
    return _type_name(a) == _type_name(b) and bool(a == b)


def _compare(op: str, a: Any, b: Any) -> bool:
    comparable = (_is_num(a) and _is_num(b)) or (
        _type_name(a) == _type_name(b) and isinstance(a, str | bool)
    )
    if not comparable:
        raise _no_overload(f"_{op}_", a, b)
    if any(isinstance(v, float) and math.isnan(v) for v in (a, b)):
        return False
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def _make_logical(op: str, left: _Node, right: _Node) -> _Node:
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


def _make_variable(name: str) -> _Node:
    def variable(env: dict[str, Any]) -> Any:
        if name not in env:
            raise CelError(f"undeclared reference to '{name}' (in container '')")
        return env[name]

    return variable


def _make_select(node: _Node, field: str) -> _Node:
    def select(env: dict[str, Any]) -> Any:
        value = node(env)
        if not isinstance(value, dict) or field not in value:
            raise CelError(f"no such key: {field}")
        return value[field]

    return select


def _make_index(node: _Node, index: _Node) -> _Node:
    def lookup(env: dict[str, Any]) -> Any:
        value, key = node(env), index(env)
        if not isinstance(value, dict) or key not in value:
            raise CelError(f"no such key: {key}")
        return value[key]

    return lookup


def _to_int(value: Any) -> int:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value) or not -(2**63) <= value < 2**63:
            raise CelError("double is out of range of int")
        return int(value)  # truncates toward zero
    if _is_num(value):
        return int(value)
    raise _no_overload("int", value)


def _to_double(value: Any) -> float:
    if _is_num(value):
        return float(value)
    raise _no_overload("double", value)


_FUNCTIONS: dict[str, Callable[[Any], Any]] = {"int": _to_int, "double": _to_double}


def _make_call(name: str, arg: _Node) -> _Node:
    func = _FUNCTIONS.get(name)
    if func is None:
        raise CelError(f"undeclared reference to '{name}' (in container '')")
    return lambda env: func(arg(env))


def evaluate_condition(condition: str, parameter_values: dict[str, Any]) -> bool:
    """Expr.Condition: ``condition`` against a task's resolved inputs; True runs the task."""
    node = _Parser(condition).parse()
    # a protobuf Value as CEL sees it: every number a double
    values = {k: float(v) if _is_num(v) else v for k, v in parameter_values.items()}
    env = {"inputs": {"parameter_values": values, "artifacts": {}, "parameters": {}}}
    try:
        result = node(env)
    except CelError as err:
        raise CelError(f"evaluation error: {err}") from None
    if not isinstance(result, bool):
        raise CelError(f"evaluation error: return type is not bool, got {result!r}")
    return result
