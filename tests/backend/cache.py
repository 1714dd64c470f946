"""The driver's cache (backend/src/v2/driver/cache.go, backend/src/v2/cacheutils/cache.go).

A task with ``cachingOptions.enableCache`` is looked up by fingerprint, ``pipeline/<pipeline
name>`` and namespace, newest first; a hit reuses the cached execution's output parameters and
the SAME artifacts (ids, URIs) and the launcher does not run. Entries are written by the
launcher after success only. A ``cacheKey`` in ``cachingOptions`` is ignored by 2.17.0."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from typing import Any

from .metadata import CacheEntry, Execution
from .results import DriverError
from .values import go_json

__all__ = ["enabled", "fingerprint", "reuse"]


def enabled(task: Mapping[str, Any]) -> bool:
    """Whether the task asks for caching."""
    return bool(task.get("cachingOptions", {}).get("enableCache"))


def fingerprint(
    component: Mapping[str, Any], container: Mapping[str, Any], executor_input: Mapping[str, Any]
) -> str:
    """cache.go ``getFingerPrint``: sha256 of the ``CacheKey`` as cacheutils ``GenerateCacheKey``
    builds it and ``GenerateFingerPrint`` serialises it -- the input parameter values, the input
    artifacts' ML Metadata ids, the output artifacts' name/type/metadata (URI wiped), the output
    parameters' types, the raw command+args and the image."""
    inputs = executor_input.get("inputs", {})
    outputs = executor_input.get("outputs", {})
    out_types = {
        n: s.get("parameterType", "PARAMETER_TYPE_ENUM_UNSPECIFIED")
        for n, s in component.get("outputDefinitions", {}).get("parameters", {}).items()
    }
    key: dict[str, Any] = {}
    if inputs.get("artifacts"):
        key["inputArtifactNames"] = {
            name: {"artifactNames": [a["name"] for a in lst["artifacts"]]}
            for name, lst in inputs["artifacts"].items()
        }
    if outputs.get("artifacts"):
        spec: dict[str, Any] = {}
        for name, lst in outputs["artifacts"].items():
            art = lst["artifacts"][0]
            wiped = {"name": art["name"], "type": art.get("type", {})}
            if art.get("metadata"):
                wiped["metadata"] = art["metadata"]
            spec[name] = wiped
        key["outputArtifactsSpec"] = spec
    if outputs.get("parameters"):
        key["outputParametersSpec"] = {n: out_types[n] for n in outputs["parameters"]}
    container_spec: dict[str, Any] = {}
    if container.get("image"):
        container_spec["image"] = container["image"]
    cmd_args = [*container.get("command", []), *container.get("args", [])]
    if cmd_args:
        container_spec["cmdArgs"] = cmd_args
    key["containerSpec"] = container_spec
    if inputs.get("parameterValues"):
        key["inputParameterValues"] = inputs["parameterValues"]
    return hashlib.sha256(go_json(key).encode("utf-8")).hexdigest()


def reuse(node: Execution, entry: CacheEntry) -> None:
    """cache.go ``reuseCachedOutputs``: the cached execution's parameters and the same
    artifacts; the execution becomes CACHED."""
    for name in node.component.get("outputDefinitions", {}).get("artifacts", {}):
        if name not in entry.out_artifacts:
            raise DriverError(f"unable to find artifact with name {name} in mlmd output")
    node.out_params = copy.deepcopy(entry.out_params)
    node.out_artifacts = dict(entry.out_artifacts)
    node.state = "CACHED"
