"""Run submission as the API server and the Argo workflow compiler do it: run macros, runtime
parameter validation, root defaults, the workflow's name."""

from __future__ import annotations

import datetime as dt
import random
import re
import string
from collections.abc import Mapping
from typing import Any

from .results import SubmissionError
from .values import kind_of, to_pb

__all__ = ["format_macros", "runtime_parameters", "workflow_name"]

_INVALID = "invalid pipeline job inputs: Invalid input error: "
# parameterType -> (value kind, type as worded, value type as worded)
_WANTED = {
    "NUMBER_DOUBLE": ("number", "double or integer", "number value type"),
    "NUMBER_INTEGER": ("number", "double or integer", "number value type"),
    "STRING": ("string", "string", "string value type"),
    "BOOLEAN": ("bool", "bool", "bool value type"),
    "LIST": ("list", "list", "list value type"),
    "STRUCT": ("struct", "struct", "struct value type"),
}


def runtime_parameters(
    spec: Mapping[str, Any],
    given: Mapping[str, Any],
    run_id: str,
    created: dt.datetime,
    check_literals: bool = True,
) -> dict[str, Any]:
    """The root DAG's parameters for a run: string values get the run macros expanded, then
    every value is checked against its declared type, unknown parameters are refused and
    required ones must be given -- apiserver/template/v2_template.go ``RunWorkflow``,
    ``validatePipelineJobInputs`` (raises ``SubmissionError``). Missing ones then take their
    IR default, or null when optional -- compiler/argocompiler/argo.go ``Compile``. Literals
    are checked only when ``check_literals`` (from 2.16: ``releases.validates_literals``)."""
    params = {k: to_pb(v) for k, v in given.items()}
    for key, value in params.items():
        if isinstance(value, str) and value:
            params[key] = format_macros(value, run_id, created)
    declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    for name, pspec in declared.items():
        _validate_input(name, pspec, params, check_literals)
    extra = [name for name in params if name not in declared]
    if extra:
        raise SubmissionError(
            f"{_INVALID}parameter(s) provided are not required by pipeline: {', '.join(extra)}"
        )
    for name, pspec in declared.items():
        if name not in params:
            if "defaultValue" in pspec:
                params[name] = to_pb(pspec["defaultValue"])
            elif pspec.get("isOptional"):
                params[name] = None
    return params


def _validate_input(
    name: str, pspec: Mapping[str, Any], params: Mapping[str, Any], check_literals: bool
) -> None:
    """``validatePipelineJobInputs`` for one declared root input."""
    ptype = pspec.get("parameterType", "PARAMETER_TYPE_ENUM_UNSPECIFIED")
    if name not in params:
        if not pspec.get("isOptional") and "defaultValue" not in pspec:
            raise SubmissionError(
                f"{_INVALID}parameter {name} is not optional, yet has neither default "
                "value nor user provided value"
            )
        return
    wanted = _WANTED.get(ptype)
    if wanted is None:
        raise SubmissionError(f"{_INVALID}input parameter {name} has unspecified type")
    if kind_of(params[name]) != wanted[0]:
        article = "the input parameter"
        if ptype in ("NUMBER_DOUBLE", "NUMBER_INTEGER"):
            article = "the parameter value"
        raise SubmissionError(
            f"{_INVALID}input parameter {name} requires type {wanted[1]}, but "
            f"{article} is not of {wanted[2]}"
        )
    literals = pspec.get("literals") if check_literals else None
    if literals and not any(to_pb(lit) == params[name] for lit in literals):
        raise SubmissionError(
            f"{_INVALID}input parameter {name!r} value {params[name]!r} does not match "
            f"any of the allowed literal values: {literals!r}"
        )


def format_macros(value: str, run_id: str, created: dt.datetime) -> str:
    """common/util/parameter_formatter.go ``ParameterFormatter.Format`` for a one-off run (no
    scheduled time, no index): ``[[RunUUID]]``, ``[[CurrentTime]]``,
    ``{{$.currentTime.strftime('…')}}``."""

    def substitute(match: re.Match[str]) -> str:
        text = match.group(0)
        if text.startswith("[[RunUUID]]"):
            return run_id
        if text.startswith("[[CurrentTime]]"):
            return created.strftime("%Y%m%d%H%M%S")
        prefix = "{{$.currentTime.strftime('"
        if text.startswith(prefix) and text.endswith("')}}"):
            return created.strftime(text[len(prefix) : -len("')}}")])
        return text

    return re.sub(r"\[\[(.*?)\]\]|\{\{\$\.(.*?)\}\}", substitute, value)


def workflow_name(pipeline_name: str) -> str:
    """The Argo workflow's name: the pipeline name as a Kubernetes name plus a random suffix."""
    name = re.sub(r"[^a-z0-9-]+", "-", pipeline_name.lower()).strip("-")[:50] or "pipeline"
    suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
    return f"{name}-{suffix}"
