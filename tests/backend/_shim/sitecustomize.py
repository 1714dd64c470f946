"""Loaded by every task process the backend-faithful runner starts (its folder is on PYTHONPATH).

On a cluster, the launcher downloads input artifacts to ``/gcs/…``, ``/minio/…``, ``/s3/…``
inside the pod, and the KFP SDK maps artifact URIs to those paths with the constants
``_GCS_LOCAL_MOUNT_PREFIX``, ``_MINIO_LOCAL_MOUNT_PREFIX``, ``_S3_LOCAL_MOUNT_PREFIX`` and
``_OCI_LOCAL_MOUNT_PREFIX`` (kfp/dsl/types/artifact_types.py). The runner gives each task a
fresh "pod root" folder instead of a container file system; this module re-roots those four
prefixes under ``$KFP_BACKEND_RUNNER_POD_ROOT`` the moment ``artifact_types`` is imported.

It patches lazily, through an import hook, so processes that never import kfp (``sh``, pip,
the project's own helpers) pay nothing, and it then hands over to any other ``sitecustomize``
further down ``sys.path`` (a distribution's own), so nothing else changes.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

_ROOT = os.environ.get("KFP_BACKEND_RUNNER_POD_ROOT", "")
_TARGET = "kfp.dsl.types.artifact_types"
_PREFIXES = {
    "_GCS_LOCAL_MOUNT_PREFIX": "gcs",
    "_MINIO_LOCAL_MOUNT_PREFIX": "minio",
    "_S3_LOCAL_MOUNT_PREFIX": "s3",
    "_OCI_LOCAL_MOUNT_PREFIX": "oci",
}


def _patch(module: ModuleType) -> None:
    for name, folder in _PREFIXES.items():
        setattr(module, name, os.path.join(_ROOT, folder) + "/")


def _wrap(loader: Any) -> None:
    original = loader.exec_module

    def exec_module(module: ModuleType) -> None:
        original(module)
        _patch(module)

    loader.exec_module = exec_module


class _PatchArtifactTypes(importlib.abc.MetaPathFinder):
    """Finds ``kfp.dsl.types.artifact_types`` as usual and patches it after it executes."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                _wrap(spec.loader)
                return spec
        return None


def _chain() -> None:
    """Runs the next ``sitecustomize`` on ``sys.path``, if any, as Python would have."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    with contextlib.suppress(Exception):  # a broken distribution hook must not break the task
        spec.loader.exec_module(module)


if _ROOT:
    sys.meta_path.insert(0, _PatchArtifactTypes())
_chain()
