"""Unit tests of the runner's CEL subset and Go/protobuf value formatting (no servers)."""

import pytest

from tests.backend.cel import CelError, evaluate_condition
from tests.backend.values import (
    format_g,
    go_float,
    go_json,
    json_obj,
    pb_value_to_string,
    pb_value_to_text,
    text_to_pb,
    to_pb,
)

PARAMS = {
    "pipelinechannel--flip-Output": "heads",
    "pipelinechannel--n": 2.0,  # a NUMBER_INTEGER input: a double, as protobuf holds it
    "pipelinechannel--flag": True,
    "pipelinechannel--rate": 0.5,
}


@pytest.mark.parametrize(
    "condition, expected",
    [
        ("inputs.parameter_values['pipelinechannel--flip-Output'] == 'heads'", True),
        (
            "!(inputs.parameter_values['pipelinechannel--flip-Output'] == 'heads') && "
            "inputs.parameter_values['pipelinechannel--flip-Output'] == 'tails'",
            False,
        ),
        ("int(inputs.parameter_values['pipelinechannel--n']) == 2", True),
        ("int(inputs.parameter_values['pipelinechannel--n']) >= 3", False),
        ("inputs.parameter_values['pipelinechannel--flag'] == true", True),
        ("inputs.parameter_values['pipelinechannel--rate'] < double(1)", True),
        ("inputs.parameter_values['pipelinechannel--n'] == 'two'", False),  # heterogeneous ==
        ("inputs.parameter_values['pipelinechannel--rate'] > 1e-05 || false", True),
    ],
)
def test_conditions_the_compiler_emits(condition, expected):
    assert evaluate_condition(condition, PARAMS) is expected


@pytest.mark.parametrize(
    "condition, message",
    [
        ("inputs.parameter_values['pipelinechannel--n'] < 'x'", "no such overload"),
        ("inputs.parameter_values['missing'] == 1", "no such key: missing"),
        ("inputs.parameter_values['pipelinechannel--n']", "return type is not bool"),
    ],
)
def test_condition_errors(condition, message):
    with pytest.raises(CelError, match=message):
        evaluate_condition(condition, PARAMS)


def test_error_absorbed_by_a_deciding_side():
    assert evaluate_condition("false && inputs.parameter_values['missing'] == 1", PARAMS) is False


def test_go_number_formatting():
    assert [go_float(x) for x in (2.0, 0.1, 1e-7, 1e21, 123456789.0, -0.5)] == [
        "2",
        "0.1",
        "1e-7",
        "1e+21",
        "123456789",
        "-0.5",
    ]
    assert [format_g(x) for x in (1234567.5, 0.0001, 0.00001, 100000.0, 1e6)] == [
        "1.2345675e+06",
        "0.0001",
        "1e-05",
        "100000",
        "1e+06",
    ]
    assert pb_value_to_string(2.0) == "2" and pb_value_to_string(2.5) == "2.5"
    assert pb_value_to_text(1e-7) == "0.0000001" and pb_value_to_text(True) == "true"
    assert go_json({"b": [1.0, "<x>"], "a": None}) == '{"a":null,"b":[1,"\\u003cx\\u003e"]}'


def test_protobuf_values():
    assert to_pb({"n": 2, "xs": (1, True)}) == {"n": 2.0, "xs": [1.0, True]}
    assert json_obj({"n": 2.0, "r": 2.5, "big": 1e22}) == {"n": 2, "r": 2.5, "big": 1e22}
    assert text_to_pb(" 7\n", "NUMBER_INTEGER") == 7.0
    assert text_to_pb("[1, 2]", "LIST") == [1.0, 2.0]
    with pytest.raises(ValueError, match="strconv.ParseInt"):
        text_to_pb("7.0", "NUMBER_INTEGER")
    with pytest.raises(ValueError, match="unexpected type"):
        text_to_pb("{}", "LIST")
