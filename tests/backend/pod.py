"""A launcher pod emulated on this machine -- the runner's own choices, not the backend's.

Every attempt runs in a fresh process: the container's ``command`` + ``args`` literally, with
``python_bin`` (the project's venv) first on PATH, cwd a fresh folder, env = ``base_env`` + the
container's ``env`` + ``KFP_POD_NAME``/``KFP_POD_UID`` (+ ``KFP_RETRY_INDEX``). Images are not
pulled; the image name is recorded.

A pod's file system is a "pod root" folder per task, wiped before every attempt (so outputs
start EMPTY) and deleted when the task ends (``keep_pods`` keeps it): paths the backend fixes in
the executor input (``/tmp/kfp/outputs/…``, the executor output file) are re-rooted under it,
and ``_shim/sitecustomize.py`` (on PYTHONPATH) re-roots the SDK's ``/gcs/``, ``/minio/``,
``/s3/``, ``/oci/`` prefixes the moment ``kfp.dsl.types.artifact_types`` is imported. A
sitecustomize was chosen over rewriting URIs because the component must see the backend's real
URIs (``minio://…``) and derive paths from them itself, as on a cluster; an import hook keeps it
lazy, and it needs no root, mount namespace or container. A path recorded by another task (a
string) points into a pod root that no longer exists -- as on a cluster, where it was never
downloaded.

``kill_on(task, when)`` SIGKILLs an attempt (whole process group) when ``when(TaskDirs,
attempt)`` turns true, polled every ``poll_interval_s``."""

from __future__ import annotations

import contextlib
import copy
import os
import pathlib
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping
from typing import Any

from .cluster import Cluster, KillHook, Run
from .metadata import Execution
from .results import AttemptResult, LauncherError, TaskDirs

__all__ = ["local_path_for_uri", "localize", "pod_path", "run_container", "task_dirs"]

_SHIM_DIR = pathlib.Path(__file__).resolve().parent / "_shim"
_LOCAL_PREFIXES = {"gs://": "/gcs/", "minio://": "/minio/", "s3://": "/s3/"}
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def local_path_for_uri(uri: str) -> str:
    """component.LocalPathForURI (launcher_v2.go): the path an artifact has inside a pod
    (``/gcs/…``, ``/minio/…``, ``/s3/…``) -- gs:// too: open-source KFP has no FUSE mount."""
    for scheme, prefix in _LOCAL_PREFIXES.items():
        if uri.startswith(scheme):
            return prefix + uri[len(scheme) :]
    raise ValueError(f"failed to generate local path for URI {uri}: unsupported storage scheme")


def pod_path(pod_root: pathlib.Path, backend_path: str) -> pathlib.Path:
    """A pod's absolute path, re-rooted under the pod root folder."""
    if backend_path.startswith(str(pod_root)):
        return pathlib.Path(backend_path)
    return pod_root / backend_path.lstrip("/")


def unpod(pod_root: pathlib.Path, path: str) -> str:
    """The path as the pod sees it (the pod root prefix removed)."""
    prefix = str(pod_root)
    return path[len(prefix) :] if path.startswith(prefix) else path


def localize(executor_input: Mapping[str, Any], pod_root: pathlib.Path) -> dict[str, Any]:
    """The executor input with the backend's fixed pod paths re-rooted under ``pod_root``."""
    out = copy.deepcopy(dict(executor_input))
    outputs = out.get("outputs", {})
    if "outputFile" in outputs:
        outputs["outputFile"] = str(pod_path(pod_root, outputs["outputFile"]))
    for spec in outputs.get("parameters", {}).values():
        spec["outputFile"] = str(pod_path(pod_root, spec["outputFile"]))
    return out


def fresh_pod(pod_root: pathlib.Path) -> pathlib.Path:
    """Wipes the pod root and creates its working, temporary and home folders; returns cwd."""
    shutil.rmtree(pod_root, ignore_errors=True)
    cwd = pod_root / "work"
    for folder in (cwd, pod_root / "tmp", pod_root / "home"):
        folder.mkdir(parents=True, exist_ok=True)
    return cwd


def task_dirs(
    path: str, executor_input: Mapping[str, Any], pod_root: pathlib.Path, cwd: pathlib.Path
) -> TaskDirs:
    """Where a running attempt keeps its files (what ``kill_on`` conditions look at)."""
    outputs: dict[str, pathlib.Path] = {}
    for name, lst in executor_input.get("outputs", {}).get("artifacts", {}).items():
        with contextlib.suppress(ValueError):
            outputs[name] = pod_path(
                pod_root, local_path_for_uri(lst["artifacts"][0].get("uri", ""))
            )
    inputs: dict[str, list[pathlib.Path]] = {}
    for name, lst in executor_input.get("inputs", {}).get("artifacts", {}).items():
        for art in lst.get("artifacts", []):
            with contextlib.suppress(ValueError):
                local = pod_path(pod_root, local_path_for_uri(art.get("uri", "")))
                inputs.setdefault(name, []).append(local)
    files = {
        n: pathlib.Path(s["outputFile"])
        for n, s in executor_input.get("outputs", {}).get("parameters", {}).items()
    }
    return TaskDirs(path, pod_root, cwd, outputs, inputs, files)


def pod_env(
    cluster: Cluster,
    run: Run,
    node: Execution,
    container: Mapping[str, Any],
    pod_root: pathlib.Path,
    attempt: int,
) -> dict[str, str]:
    """The attempt's environment (see the module docstring)."""
    env = dict(cluster.base_env)
    for item in container.get("env", []) or []:
        env[str(item.get("name"))] = str(item.get("value", ""))
    path = env.get("PATH", _DEFAULT_PATH)
    env["PATH"] = f"{cluster.python_bin}{os.pathsep}{path}"
    python_path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(_SHIM_DIR) + (os.pathsep + python_path if python_path else "")
    env["KFP_BACKEND_RUNNER_POD_ROOT"] = str(pod_root)
    env["TMPDIR"] = str(pod_root / "tmp")
    env.setdefault("HOME", str(pod_root / "home"))
    env["KFP_POD_NAME"] = f"{run.result.run_name}-system-container-impl-{node.id}"
    env["KFP_POD_UID"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{node.id}/{attempt}"))
    if node.task.get("retryPolicy"):
        env["KFP_RETRY_INDEX"] = str(attempt - 1)
    return env


def run_container(
    cluster: Cluster,
    command: list[str],
    env: dict[str, str],
    dirs: TaskDirs,
    hooks: list[KillHook],
    log_path: pathlib.Path,
    attempt: AttemptResult,
) -> None:
    """Runs the command to its end (or a kill) with stdout+stderr in ``log_path``; a non-zero
    exit or a signal raises ``LauncherError`` as the launcher words it."""
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.Popen(
                command,
                cwd=dirs.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as err:
            raise LauncherError(f'exec: "{command[0]}": {err.strerror}') from None
        code = _wait(cluster, proc, hooks, dirs, attempt)
    attempt.log = log_path.read_text(encoding="utf-8", errors="replace")
    if code < 0:
        attempt.signal = -code
        attempt.exit_code = 128 - code
        name = signal.Signals(-code).name.removeprefix("SIG").lower()
        raise LauncherError(f"signal: {'killed' if name == 'kill' else name}")
    attempt.exit_code = code
    if code != 0:
        raise LauncherError(f"exit status {code}")


def _wait(
    cluster: Cluster,
    proc: subprocess.Popen[bytes],
    hooks: list[KillHook],
    dirs: TaskDirs,
    attempt: AttemptResult,
) -> int:
    """Polls the process, firing kill hooks and ``task_timeout_s``; returns its exit code."""
    timeout = cluster.task_timeout_s
    deadline = time.monotonic() + timeout if timeout else None
    while True:
        code = proc.poll()
        if code is not None:
            return code
        for hook in hooks:
            try:
                fire = hook.when(dirs, attempt.number)
            except Exception:  # a condition on files that are half written: try again
                fire = False
            if fire:
                hook.fired.append(dirs.task)
                attempt.killed_by_hook = True
                attempt.phase = hook.phase
                attempt.simulated_s += hook.ran_for_s
                _kill_group(proc)
                return proc.wait()
        if deadline is not None and time.monotonic() > deadline:
            attempt.warnings.append(f"killed after task_timeout_s={timeout}")
            _kill_group(proc)
            return proc.wait()
        time.sleep(cluster.poll_interval_s)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
