"""The KFP launcher: the executor pod's entry point (backend/src/v2/component/launcher_v2.go).

Per attempt it downloads the input artifacts, runs the user command with the executor input,
then collects the output parameters and uploads and records the output artifacts; after the
last attempt it publishes the execution and, on success, the cache entry."""

from __future__ import annotations

import copy
import json
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .argo import RetryClock
from .cluster import Cluster, Run
from .metadata import CacheEntry, Execution, mlmd_value, update_dag_states
from .pod import (
    fresh_pod,
    local_path_for_uri,
    localize,
    pod_env,
    pod_path,
    run_container,
    task_dirs,
    unpod,
)
from .releases import template_retry_strategy
from .results import ArtifactRecord, AttemptResult, DriverError, LauncherError, TaskResult
from .stores import StoreError
from .values import go_json, json_obj, pb_value_to_text, text_to_pb, to_pb

__all__ = ["launch"]

_EXECUTOR_OUTPUT_FIELDS = {"parameters", "artifacts", "parameterValues", "parameter_values"}
_RUNTIME_ARTIFACT_FIELDS = {
    "name",
    "type",
    "uri",
    "properties",
    "customProperties",
    "custom_properties",
    "metadata",
    "customPath",
    "custom_path",
}


def launch(
    cluster: Cluster,
    run: Run,
    node: Execution,
    executor_input: dict[str, Any],
    user_command: list[str],
    container: Mapping[str, Any],
    fingerprint: str | None,
) -> None:
    """The launcher pods of one container execution, retried as Argo does (``RetryClock``).

    ``TaskResult.executor_input`` is the backend-exact JSON the component receives;
    ``local_executor_input`` the one actually passed (pod-rooted paths)."""
    result = node.result
    assert result is not None
    pod_root = run.run_dir / "pods" / f"{node.id}-{node.name}"
    with_defaults = _add_default_params(executor_input, node.component)
    local_input = localize(with_defaults, pod_root)
    result.executor_input = _received_input(with_defaults, lambda p: p)
    result.local_executor_input = _received_input(local_input, lambda p: str(pod_path(pod_root, p)))
    result.command = _compile_cmd_and_args(user_command, local_input, pod_root)
    retries = RetryClock(node.task.get("retryPolicy"), template_retry_strategy(cluster))
    number = 0
    while True:
        number += 1
        attempt = _execute(cluster, run, node, local_input, container, pod_root, number)
        retries.finish(attempt, number)
        result.attempts.append(attempt)
        node.state = "COMPLETE" if attempt.succeeded else "FAILED"
        result.mlmd_state = node.state
        update_dag_states(node, recursive=cluster.at_least("2.17"))
        delay = None if attempt.succeeded else retries.retry_delay(attempt, number, result)
        if delay is None:
            break
        result.retry_delays_s.append(delay)
        time.sleep(delay * cluster.backoff_scale)
    if not cluster.keep_pods:
        shutil.rmtree(pod_root, ignore_errors=True)
    _publish(cluster, run, node, result, fingerprint)


def _publish(
    cluster: Cluster, run: Run, node: Execution, result: TaskResult, fingerprint: str | None
) -> None:
    """The task's end: failed (the last attempt's error), or succeeded with its outputs and,
    for a task with caching enabled, a cache entry."""
    assert node.parent is not None
    final = result.attempts[-1]
    if not final.succeeded:
        run.fail(result, node.parent, f"failed to execute component: {final.error}")
        return
    result.state = "SUCCEEDED"
    result.outputs = copy.deepcopy(node.out_params)
    result.output_artifacts = dict(node.out_artifacts)
    node.parent.argo[node.name] = "Succeeded"
    if fingerprint:
        entry = CacheEntry(
            execution_id=node.id,
            run_id=run.result.run_id,
            task=result.path,
            out_params=copy.deepcopy(node.out_params),
            out_artifacts=dict(node.out_artifacts),
        )
        cluster.metadata.add_cache_entry(fingerprint, run.ir.name, cluster.namespace, entry)


def _execute(
    cluster: Cluster,
    run: Run,
    node: Execution,
    local_input: dict[str, Any],
    container: Mapping[str, Any],
    pod_root: pathlib.Path,
    number: int,
) -> AttemptResult:
    """One launcher pod: fresh file system, downloads, the command, outputs, uploads."""
    assert node.result is not None
    result = node.result
    cwd = fresh_pod(pod_root)
    log_path = run.run_dir / "logs" / f"{node.id}-{node.name}-attempt{number}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    attempt = AttemptResult(
        number=number,
        exit_code=None,
        signal=None,
        killed_by_hook=False,
        error=None,
        log="",
        pod_root=str(pod_root),
        started_at=time.time(),
        duration_s=0.0,
    )
    started = time.monotonic()
    try:
        _download_inputs(cluster, local_input, pod_root, attempt, run.result.run_root)
        _prepare_output_folders(local_input, pod_root)
        dirs = task_dirs(result.path, local_input, pod_root, cwd)
        env = pod_env(cluster, run, node, container, pod_root, number)
        hooks = [h for h in cluster.hooks if h.matches(result, number)]
        run_container(cluster, result.command, env, dirs, hooks, log_path, attempt)
        _collect_outputs(cluster, run, node, local_input, pod_root, attempt)
    except (LauncherError, StoreError) as err:
        attempt.error = str(err)
        if not attempt.killed_by_hook:
            attempt.phase = "Failed"
    finally:
        attempt.duration_s = time.monotonic() - started
        attempt.simulated_s += attempt.duration_s
        if not attempt.log and log_path.exists():
            attempt.log = log_path.read_text(encoding="utf-8", errors="replace")
    return attempt


def _opened_buckets(artifacts: Mapping[str, Any], default: str) -> set[str]:
    """``fetchNonDefaultBuckets``: the non-default buckets opened before any download -- one
    per input, from its list's FIRST artifact only (``artifactList.Artifacts[0]``, "TODO:
    Support multiple artifacts someday"), when that artifact is not under the run's root."""
    opened = set()
    for lst in artifacts.values():
        first = (lst.get("artifacts") or [{}])[0].get("uri", "")
        if first and not first.startswith(default) and "://" in first:
            opened.add(_bucket_key(first))
    return opened


def _bucket_key(uri: str) -> str:
    """``ParseBucketConfigForArtifactURI(uri).PrefixedBucket()``: ``scheme://bucket``."""
    scheme, _, rest = uri.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def _download_inputs(
    cluster: Cluster,
    executor_input: Mapping[str, Any],
    pod_root: pathlib.Path,
    attempt: AttemptResult,
    run_root: str,
) -> None:
    """``downloadArtifacts``: before the command, every input artifact whose URI has a
    ``gs://``, ``minio://`` or ``s3://`` scheme is DOWNLOADED to its local path
    (``LocalPathForURI``); other schemes are skipped with a warning. The default bucket is the
    RUN's root (``execution.GetPipeline().GetPipelineRoot()``: ``<root>/<pipeline>/<run id>``,
    metadata/client.go ``GetPipeline``), so an artifact of another run (a cache hit) needs a
    bucket ``fetchNonDefaultBuckets`` opened -- which it does only from each input list's FIRST
    artifact: a collected list whose first artifact is this run's and a later one a cache hit
    fails (component/launcher_v2.go ``downloadArtifacts``, 2.14.0-2.17.0 alike)."""
    artifacts = executor_input.get("inputs", {}).get("artifacts", {})
    default = _prefixed_bucket(run_root)
    opened = _opened_buckets(artifacts, default)
    for name, lst in artifacts.items():
        for artifact in lst.get("artifacts", []):
            uri = artifact.get("uri", "")
            try:
                local = pod_path(pod_root, local_path_for_uri(uri))
            except ValueError:
                attempt.warnings.append(
                    f"Input Artifact {json.dumps(name)} does not have a recognized storage "
                    f"URI {json.dumps(uri)}. Skipping downloading to local path."
                )
                continue
            if not uri.startswith(default) and _bucket_key(uri) not in opened:
                raise LauncherError(
                    f"failed to get bucket when downloading input artifact {name} with bucket "
                    f"key {_bucket_key(uri)}: %!w(<nil>)"
                )
            try:
                files = cluster.store_for(uri).download_dir(uri, local)
            except StoreError as err:
                raise LauncherError(
                    f"failed to download input artifact {json.dumps(name)} from remote "
                    f"storage URI {json.dumps(uri)}: {err}"
                ) from None
            attempt.downloaded.setdefault(name, []).extend(str(f) for f in files)


def _prepare_output_folders(executor_input: Mapping[str, Any], pod_root: pathlib.Path) -> None:
    """``prepareOutputFolders``: the parent folders of output files and artifact paths (only
    the parents: an output artifact's own path does not exist when the command starts)."""
    outputs = executor_input.get("outputs", {})
    for spec in outputs.get("parameters", {}).values():
        pathlib.Path(spec["outputFile"]).parent.mkdir(parents=True, exist_ok=True)
    for name, lst in outputs.get("artifacts", {}).items():
        for art in lst.get("artifacts", []):
            try:
                path = local_path_for_uri(art.get("uri", ""))
            except ValueError as err:
                raise LauncherError(
                    f"failed to generate local storage path for output artifact "
                    f"{json.dumps(name)}: {err}"
                ) from None
            pod_path(pod_root, path).parent.mkdir(parents=True, exist_ok=True)


def _collect_outputs(
    cluster: Cluster,
    run: Run,
    node: Execution,
    local_input: Mapping[str, Any],
    pod_root: pathlib.Path,
    attempt: AttemptResult,
) -> None:
    """After exit 0: ``getExecutorOutputFile``, ``collectOutputParameters``, then each output
    artifact gets the executor output's URI/metadata merged in (``mergeRuntimeArtifacts``) and
    is uploaded and recorded (``uploadOutputArtifacts``)."""
    outputs = local_input.get("outputs", {})
    executor_output = _read_executor_output(outputs.get("outputFile", ""))
    params = _output_parameters(node, outputs, executor_output, pod_root)
    reported = executor_output.get("artifacts", {})
    records: dict[str, ArtifactRecord] = {}
    for name, lst in outputs.get("artifacts", {}).items():
        for provisioned in lst.get("artifacts", []):
            artifact = copy.deepcopy(provisioned)
            user = (reported.get(name) or {}).get("artifacts") or []
            if user:
                _merge_runtime_artifact(user[0], artifact)
            records[name] = _upload_output(cluster, run, node, name, artifact, pod_root, attempt)
    node.out_params = params
    node.out_artifacts = records


def _read_executor_output(path: str) -> dict[str, Any]:
    """``getExecutorOutputFile``: missing -> empty; ``protojson.Unmarshal`` rejects unknown
    fields."""
    if not path or not os.path.exists(path):
        return {}
    text = pathlib.Path(path).read_text(encoding="utf-8")
    where = f"failed to unmarshall ExecutorOutput in file {json.dumps(path)}: "
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise LauncherError(where + f"proto: syntax error: {err}") from None
    if not isinstance(data, dict):
        raise LauncherError(where + "proto: syntax error: expected object")
    unknown = set(data) - _EXECUTOR_OUTPUT_FIELDS
    if unknown:
        raise LauncherError(where + f"proto: unknown field {json.dumps(sorted(unknown)[0])}")
    if "parameter_values" in data:
        data.setdefault("parameterValues", data.pop("parameter_values"))
    for lst in (data.get("artifacts") or {}).values():
        for art in (lst or {}).get("artifacts", []):
            bad = set(art) - _RUNTIME_ARTIFACT_FIELDS
            if bad:
                raise LauncherError(where + f"proto: unknown field {json.dumps(sorted(bad)[0])}")
    return data


def _output_parameters(
    node: Execution,
    outputs: Mapping[str, Any],
    executor_output: Mapping[str, Any],
    pod_root: pathlib.Path,
) -> dict[str, Any]:
    """``collectOutputParameters``: the executor output's values, the rest read from their
    output files and parsed with the declared type (``TextToPbValue``)."""
    params = {k: to_pb(v) for k, v in executor_output.get("parameterValues", {}).items()}
    declared = node.component.get("outputDefinitions", {}).get("parameters", {})
    for name, spec in outputs.get("parameters", {}).items():
        if name in params:
            continue
        if name not in declared:
            raise LauncherError(
                f"failed to find output parameter name={json.dumps(name)} in component spec"
            )
        ptype = declared[name].get("parameterType", "")
        path = spec["outputFile"]
        where = (
            f"failed to read output parameter name={json.dumps(name)} "
            f"type={json.dumps(ptype)} path={json.dumps(unpod(pod_root, path))}: "
        )
        try:
            text = pathlib.Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise LauncherError(
                where + f"open {unpod(pod_root, path)}: {err.strerror.lower()}"
            ) from None
        try:
            params[name] = text_to_pb(text, ptype)
        except ValueError as err:
            raise LauncherError(where + str(err)) from None
    return params


def _merge_runtime_artifact(src: Mapping[str, Any], dst: dict[str, Any]) -> None:
    """``mergeRuntimeArtifacts``: URI if set, metadata field by field (a custom path, which
    only workspace artifacts have, is not reproduced)."""
    if src.get("uri"):
        dst["uri"] = src["uri"]
    if src.get("metadata") is not None:
        if not dst.get("metadata"):
            dst["metadata"] = copy.deepcopy(src["metadata"])
        else:
            dst["metadata"].update(copy.deepcopy(src["metadata"]))


def _prefixed_bucket(run_root: str) -> str:
    """objectstore.Config.PrefixedBucket of the run root: ``scheme://bucket/prefix``."""
    scheme, _, rest = run_root.split("?")[0].partition("://")
    return f"{scheme}://{rest.rstrip('/')}"


def _upload_output(
    cluster: Cluster,
    run: Run,
    node: Execution,
    name: str,
    artifact: dict[str, Any],
    pod_root: pathlib.Path,
    attempt: AttemptResult,
) -> ArtifactRecord:
    """``uploadOutputArtifacts`` and ``RecordArtifact`` for one output artifact: UPLOADED from
    its local path (a file -> one object, a folder -> its files; nothing written -> a warning,
    still recorded; a URI outside the run root -> error), then recorded in ML Metadata with the
    converted metadata (``mlmd_value``) plus ``display_name`` and ``store_session_info``."""
    run_prefix = _prefixed_bucket(run.result.run_root)
    uri = artifact.get("uri", "")
    local, backend_local, uploaded = None, None, []
    try:
        backend_local = local_path_for_uri(uri)
        local = str(pod_path(pod_root, backend_local))
    except ValueError:
        attempt.warnings.append(
            f"Output Artifact {json.dumps(name)} does not have a recognized storage "
            f"URI {json.dumps(uri)}. Skipping uploading to remote storage."
        )
    if local is not None:
        if not uri.startswith(run_prefix) or not uri[len(run_prefix) :].strip("/"):
            raise LauncherError(
                f"failed to upload output artifact {json.dumps(name)}: URI "
                f"{json.dumps(uri)} does not have expected bucket prefix "
                f"{json.dumps(run_prefix)}"
            )
        try:
            uploaded = cluster.store_for(uri).upload_dir(local, uri)
        except FileNotFoundError:
            attempt.warnings.append(f"Local filepath {json.dumps(backend_local)} does not exist")
        except StoreError as err:
            raise LauncherError(
                f"failed to upload output artifact {json.dumps(name)} to remote "
                f"storage URI {json.dumps(uri)}: {err}"
            ) from None
    metadata = to_pb(artifact.get("metadata") or {})
    try:
        properties = {k: mlmd_value(v) for k, v in metadata.items()}
    except ValueError as err:
        raise LauncherError(
            f"unable to produce MLMD artifact for output {json.dumps(name)}: failed "
            f"to convert RuntimeArtifact to MLMD artifact: {err}"
        ) from None
    properties.setdefault("display_name", name)
    properties.setdefault("store_session_info", go_json(run.session_info))
    artifact_type = artifact.get("type", {})
    return ArtifactRecord(
        id=cluster.metadata.new_artifact_id(),
        output_name=name,
        uri=uri,
        schema_title=artifact_type.get("schemaTitle", ""),
        schema_version=artifact_type.get("schemaVersion", ""),
        metadata=metadata,
        mlmd_properties=properties,
        local_path=local,
        backend_local_path=backend_local,
        producer=node.path,
        uploaded=uploaded,
    )


def _add_default_params(
    executor_input: Mapping[str, Any], component: Mapping[str, Any]
) -> dict[str, Any]:
    """``addDefaultParams``: component defaults for absent inputs (in a copy)."""
    out = copy.deepcopy(dict(executor_input))
    values = out.setdefault("inputs", {}).setdefault("parameterValues", {})
    for name, spec in component.get("inputDefinitions", {}).get("parameters", {}).items():
        if "defaultValue" in spec and name not in values:
            values[name] = to_pb(spec["defaultValue"])
    if not values:
        del out["inputs"]["parameterValues"]
    return out


def _executor_input_json(executor_input: Mapping[str, Any]) -> str:
    """``protojson.Marshal(executorInput)`` as the component parses it (2.0 is written as
    ``2``, so an ``int`` input reads an ``int``; 2.5 arrives as a float)."""
    return json.dumps(json_obj(executor_input), ensure_ascii=False, separators=(",", ":"))


def _placeholders(
    executor_input: Mapping[str, Any], to_path: Callable[[str], str]
) -> dict[str, str]:
    """``getPlaceholders``: artifact URIs/paths, input parameter texts, output parameter files;
    ``to_path`` maps a pod path (``/minio/…``) to the path used here."""
    placeholders: dict[str, str] = {}
    inputs = executor_input.get("inputs", {})
    for name, lst in inputs.get("artifacts", {}).items():
        if not lst.get("artifacts"):
            continue
        art = lst["artifacts"][0]
        placeholders[f"{{{{$.inputs.artifacts['{name}'].uri}}}}"] = art.get("uri", "")
        try:
            path = local_path_for_uri(art.get("uri", ""))
        except ValueError:
            continue
        placeholders[f"{{{{$.inputs.artifacts['{name}'].path}}}}"] = to_path(path)
    outputs = executor_input.get("outputs", {})
    for name, lst in outputs.get("artifacts", {}).items():
        art = lst["artifacts"][0]
        placeholders[f"{{{{$.outputs.artifacts['{name}'].uri}}}}"] = art.get("uri", "")
        try:
            path = local_path_for_uri(art.get("uri", ""))
        except ValueError:
            return {}  # getPlaceholders fails and compileCmdAndArgs drops its error: no map
        placeholders[f"{{{{$.outputs.artifacts['{name}'].path}}}}"] = to_path(path)
    for name, value in inputs.get("parameterValues", {}).items():
        if value is None:
            return {}  # "unknown PipelineSpec Value type", dropped the same way
        text = pb_value_to_text(value)  # FormatFloat 'f', FormatBool, json.Marshal
        placeholders[f"{{{{$.inputs.parameters['{name}']}}}}"] = text
    for name, spec in outputs.get("parameters", {}).items():
        placeholders[f"{{{{$.outputs.parameters['{name}'].output_file}}}}"] = spec["outputFile"]
    return placeholders


def _replace_all(text: str, placeholders: Mapping[str, str]) -> str:
    for placeholder, replacement in placeholders.items():
        text = text.replace(placeholder, replacement)
    return text


def _compile_cmd_and_args(
    command: Sequence[str], executor_input: Mapping[str, Any], pod_root: pathlib.Path
) -> list[str]:
    """``compileCmdAndArgs``: ``{{$}}`` first, then the placeholders -- also inside the executor
    input JSON just inserted, so a parameter whose value is another input's placeholder (what
    the compiler binds for resource settings from pipeline parameters) reaches the component
    as that input's text, though the driver type-checked the literal placeholder string. The
    command's first word gets ``{{$}}`` only; the command runs with no shell of its own."""
    if not command:
        raise DriverError("container has no command")
    payload = _executor_input_json(executor_input)
    placeholders = _placeholders(executor_input, lambda p: str(pod_path(pod_root, p)))
    first = command[0].replace("{{$}}", payload)
    return [first, *(_replace_all(a.replace("{{$}}", payload), placeholders) for a in command[1:])]


def _received_input(
    executor_input: Mapping[str, Any], to_path: Callable[[str], str]
) -> dict[str, Any]:
    """The executor input JSON as a component reading ``{{$}}`` receives it."""
    text = _executor_input_json(executor_input)
    try:
        return json.loads(_replace_all(text, _placeholders(executor_input, to_path)))
    except json.JSONDecodeError:
        return json.loads(text)
