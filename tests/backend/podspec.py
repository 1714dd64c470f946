"""The pod the driver asks for: resources (driver.go ``initPodSpecPatch``), node selector and
tolerations from the Kubernetes platform spec (k8s.go ``extendPodSpecPatch``), and the
container's args (util.go ``resolveContainerArgs``)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from . import releases
from .cluster import Cluster, Run
from .metadata import Execution
from .resolve import NullParameter, resolve_parameter
from .results import DriverError
from .values import kind_of, pb_value_to_string

__all__ = ["pod_spec", "resolve_container_args"]

_POD_CHANNEL_RE = re.compile(r"\$.inputs.parameters\['(.+?)'\]")
_QUANTITY_RE = re.compile(r"[+-]?[0-9.]+([eEinumkKMGTP]*[-+]?[0-9]*)")
_INPUT_PARAMETER_RE = re.compile(r"\{\{\$\.inputs\.parameters\['(.+?)']}}")


def pod_spec(
    cluster: Cluster,
    run: Run,
    dag: Execution,
    key: str,
    container: Mapping[str, Any],
    executor_input: Mapping[str, Any],
    k8s: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """What ``TaskResult.pod_spec`` records: the resources, then node selector and tolerations
    (the rest of the platform spec is recorded only, in ``kubernetes_config``)."""
    pod: dict[str, Any] = {"resources": pod_resources(container, executor_input)}
    if k8s is not None:
        pod.update(_k8s_pod_spec(cluster, run, dag, key, k8s))
    return pod


def _pod_placeholder(value: str, executor_input: Mapping[str, Any]) -> str:
    """resolve.go ``resolvePodSpecInputRuntimeParameter``: a ``{{$.inputs.parameters['x']}}``
    channel (util.go ``inputPipelineChannelPattern``, unanchored) becomes x's value read with
    ``GetStringValue()`` -- "" for a number, a bool or a struct, however it was declared; a
    name missing from the executor input fails; anything else is a constant."""
    match = _POD_CHANNEL_RE.search(value)
    if match is None:
        return value
    values = executor_input.get("inputs", {}).get("parameterValues", {})
    if match.group(1) not in values:
        raise DriverError(
            "failed to init podSpecPatch: executorInput did not contain container Image input "
            "parameter"
        )
    found = values[match.group(1)]
    return found if isinstance(found, str) else ""


def pod_resources(container: Mapping[str, Any], executor_input: Mapping[str, Any]) -> dict:
    """driver.go ``initPodSpecPatch``: the main container's limits and requests. CPU and memory
    from the string fields (``resourceCpuLimit``…, placeholders resolved as STRINGS), each
    parsed as a Kubernetes quantity, so an empty value fails (``getPodResource``); the
    accelerator limit only when both its type and count resolve to non-empty text -- a count
    from a number parameter comes out "" and the ``nvidia.com/gpu`` (or TPU) limit is silently
    left out. The kfp 2.17 compiler writes the string fields always; the driver's fallback to
    the old numeric ones (``cpuLimit``…, ``accelerator.count``) is not reproduced."""
    spec = container.get("resources", {})
    out: dict[str, dict[str, str]] = {"limits": {}, "requests": {}}
    for kind, field_ in (("limits", "Limit"), ("requests", "Request")):
        for resource in ("memory", "cpu"):
            value = spec.get(f"resource{resource.capitalize()}{field_}", "")
            if value:
                out[kind][resource] = _quantity(_pod_placeholder(str(value), executor_input))
    accelerator = spec.get("accelerator")
    if accelerator:
        kind = _pod_placeholder(accelerator.get("resourceType", ""), executor_input)
        count = _pod_placeholder(str(accelerator.get("resourceCount", "")), executor_input)
        if kind and count:
            out["limits"][kind] = _quantity(count)
    return out


def _quantity(text: str) -> str:
    """k8s ``resource.ParseQuantity`` (the forms bittune and the SDK write)."""
    if not _QUANTITY_RE.fullmatch(text):
        raise DriverError(
            f"failed to init podSpecPatch: quantities must match the regular expression "
            f"'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {text!r}"
        )
    return text


def _k8s_pod_spec(
    cluster: Cluster, run: Run, dag: Execution, key: str, k8s: Mapping[str, Any]
) -> dict[str, Any]:
    """k8s.go ``extendPodSpecPatch``'s node selector and tolerations from a parameter
    (``nodeSelectorJson``, ``tolerationJson``; resolve.go ``resolveK8sJsonParameter``), the
    forms bittune's pipeline uses (``kubernetes.add_node_selector_json``,
    ``add_toleration_json``); static labels and tolerations are refused. A null parameter is
    skipped, or fails the driver on 2.14 (``releases.null_k8s_parameter_fails``)."""
    pod: dict[str, Any] = {}
    if k8s.get("nodeSelector", {}).get("labels"):
        raise DriverError("static node selectors are not supported by this runner")
    selector = k8s.get("nodeSelector", {}).get("nodeSelectorJson")
    if selector is not None:
        try:
            value = resolve_parameter(cluster, run, dag, key, selector)
        except NullParameter as null:
            if releases.null_k8s_parameter_fails(cluster):
                raise DriverError(
                    f"failed to resolve node selector: failed to resolve k8s parameter: {null}"
                ) from None
            value = None
        except DriverError as err:
            raise DriverError(
                f"failed to resolve node selector: failed to resolve k8s parameter: {err}"
            ) from None
        if value is not None:
            pod["nodeSelector"] = _node_selector(value)
    tolerations = k8s.get("tolerations")
    if tolerations is not None:
        pod["tolerations"] = []
        for toleration in tolerations:
            pod["tolerations"].extend(_tolerations(cluster, run, dag, key, toleration))
    return pod


def _node_selector(value: Any) -> dict[str, str]:
    """json.Unmarshal of a ``nodeSelectorJson`` value into a ``map[string]string``."""
    struct = value if isinstance(value, dict) else {}
    bad = {k: v for k, v in struct.items() if not isinstance(v, str)}
    if bad:
        kind = kind_of(next(iter(bad.values())))
        raise DriverError(
            "failed to resolve node selector: failed to unmarshal k8s Resource "
            "json ensure that k8s Resource json correctly adheres to its "
            f"respective k8s spec: json: cannot unmarshal {kind} into Go value "
            "of type string"
        )
    return dict(struct)


def _tolerations(
    cluster: Cluster, run: Run, dag: Execution, key: str, toleration: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """One platform-spec ``tolerationJson``: one toleration (a struct; empty -> none), a list of
    them, or null (none)."""
    if toleration.get("tolerationJson") is None:
        raise DriverError("static tolerations are not supported by this runner")
    try:
        value = resolve_parameter(cluster, run, dag, key, toleration["tolerationJson"])
    except NullParameter as null:
        if releases.null_k8s_parameter_fails(cluster):
            raise DriverError(f"failed to resolve toleration: {null}") from None
        return []
    except DriverError as err:
        raise DriverError(f"failed to resolve toleration: {err}") from None
    if isinstance(value, dict):
        return [_k8s_toleration(value, "single")] if value else []
    if isinstance(value, list):
        return [_k8s_toleration(v, "list") for v in value]
    raise DriverError(
        "encountered unexpected toleration proto value, must be either struct or list type"
    )


def _k8s_toleration(value: Any, shape: str) -> dict[str, Any]:
    """json.Unmarshal into a k8s Toleration (string fields, int64 seconds)."""
    where = f"failed to marshal {shape} toleration to json: "
    if not isinstance(value, dict):
        raise DriverError(where + "not an object")
    out: dict[str, Any] = {}
    for name in ("key", "operator", "value", "effect"):
        if name in value:
            if not isinstance(value[name], str):
                raise DriverError(
                    f"{where}json: cannot unmarshal {kind_of(value[name])} into Go struct "
                    f"field Toleration.{name} of type string"
                )
            out[name] = value[name]
    if "tolerationSeconds" in value:
        seconds = value["tolerationSeconds"]
        if not isinstance(seconds, float | int) or isinstance(seconds, bool):
            raise DriverError(
                f"{where}json: cannot unmarshal {kind_of(seconds)} into Go struct field "
                "Toleration.tolerationSeconds of type int64"
            )
        if not math.isfinite(seconds) or not float(seconds).is_integer():
            raise DriverError(
                f"{where}json: cannot unmarshal number {seconds} into Go struct field "
                "Toleration.tolerationSeconds of type int64"
            )
        out["tolerationSeconds"] = int(seconds)
    return out


def resolve_container_args(args: Sequence[str], executor_input: Mapping[str, Any]) -> list[str]:
    """util.go ``resolveContainerArgs`` (command and args alike): ``{{$.inputs.parameters['x']}}``
    is resolved from the executor input WITHOUT defaults (``pbValueToString``; missing ->
    "parameter %q not found in executor input"); ``{"Concat": …}`` is not (left literal). The
    SDK's ``IfPresent`` placeholders (container components only) are not handled."""
    values = executor_input.get("inputs", {}).get("parameterValues", {})

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise DriverError(
                "failed to resolve container args: failed to resolve input parameters: "
                f"parameter {json.dumps(name)} not found in executor input"
            )
        return pb_value_to_string(values[name])

    out: list[str] = []
    for arg in args:
        if "$.outputs" in arg:
            out.append(arg)
        else:
            out.append(_INPUT_PARAMETER_RE.sub(one, arg))
    return out
