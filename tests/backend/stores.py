"""Object stores on loopback behind one small interface, for the backend-faithful runner.

The KFP v2 launcher moves artifacts between a pod's local paths and the pipeline root's object
store with gocloud blob buckets (backend/src/v2/objectstore/object_store.go). ``ObjectStore``
reproduces the two operations it uses:

- ``upload_dir`` follows ``UploadBlob``: a file becomes one object at the artifact's key, a
  folder one object per file below the key (recursively); a missing local path raises
  ``FileNotFoundError`` (the launcher logs it and goes on: a component may write nothing);
- ``download_dir`` follows ``DownloadBlob``: list the key as a raw prefix, keep objects whose
  key equals it or lies below ``key + "/"`` (``isBlobKeyUnderPrefix``), refuse keys with ``..``
  (``sanitizeDownloadPath``) and write each to ``local/<relative key>`` (the key itself to
  ``local``). Nothing found is not an error.

Two implementations run real servers on 127.0.0.1:

- ``GcsStore``: google-cloud-storage against fake-gcs-server (tests/conftest.py
  ``start_fake_gcs``), for ``gs://`` pipeline roots;
- ``S3Store``: boto3 against moto's S3 server (``MotoS3Server``), standing in for the MinIO /
  SeaweedFS of a default KFP install, whose pipeline root is ``minio://mlpipeline/v2/artifacts``
  (backend/src/v2/config/env.go ``defaultPipelineRoot``; the ``minio`` provider is S3 with the
  ``minio-service`` endpoint). It serves both ``minio://`` and ``s3://`` URIs by default.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import pathlib
from collections.abc import Iterable
from typing import Any

__all__ = ["GcsStore", "MotoS3Server", "ObjectStore", "S3Store", "StoreError", "split_uri"]


class StoreError(Exception):
    """An object store operation failed (message names the URI)."""


def split_uri(uri: str) -> tuple[str, str, str]:
    """``minio://bucket/a/b`` -> ``("minio://", "bucket", "a/b")``."""
    scheme, sep, rest = uri.partition("://")
    if not sep or not scheme:
        raise StoreError(f"not an object store URI: {uri!r}")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StoreError(f"no bucket in URI: {uri!r}")
    return scheme + "://", bucket, key


class ObjectStore(abc.ABC):
    """A bucket-based object store reached through ``scheme://bucket/key`` URIs."""

    #: URI schemes (with ``://``) this store serves.
    schemes: tuple[str, ...] = ()

    # --- primitives -------------------------------------------------------------------------

    @abc.abstractmethod
    def create_bucket(self, bucket: str) -> None:
        """Creates ``bucket`` (no error when it exists)."""

    @abc.abstractmethod
    def _put_file(self, bucket: str, key: str, path: pathlib.Path) -> None: ...

    @abc.abstractmethod
    def _get_file(self, bucket: str, key: str, path: pathlib.Path) -> None: ...

    @abc.abstractmethod
    def _list_keys(self, bucket: str, prefix: str) -> list[str]: ...

    @abc.abstractmethod
    def _put_bytes(self, bucket: str, key: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def _get_bytes(self, bucket: str, key: str) -> bytes: ...

    # --- the interface the launcher uses ----------------------------------------------------

    def serves(self, uri: str) -> bool:
        """Whether ``uri``'s scheme belongs to this store."""
        return any(uri.startswith(s) for s in self.schemes)

    def _split(self, uri: str) -> tuple[str, str]:
        scheme, bucket, key = split_uri(uri)
        if scheme not in self.schemes:
            raise StoreError(f"{type(self).__name__} does not serve {scheme} URIs: {uri}")
        return bucket, key

    def upload_dir(self, local: str | os.PathLike[str], uri: str) -> list[str]:
        """UploadBlob: ``local`` (file or folder) to ``uri``; returns the object URIs written."""
        path = pathlib.Path(local)
        bucket, key = self._split(uri)
        if not path.exists():
            raise FileNotFoundError(f"unable to stat local filepath {str(path)!r}")
        written: list[str] = []
        if path.is_file():
            self._put(bucket, key, path, uri)
            return [uri]
        for child in sorted(path.rglob("*")):
            if child.is_file():
                rel = child.relative_to(path).as_posix()
                child_uri = f"{uri.rstrip('/')}/{rel}"
                self._put(bucket, f"{key.rstrip('/')}/{rel}", child, child_uri)
                written.append(child_uri)
        return written

    def _put(self, bucket: str, key: str, path: pathlib.Path, uri: str) -> None:
        try:
            self._put_file(bucket, key, path)
        except Exception as err:  # the SDKs raise many types; name the object
            raise StoreError(
                f"uploadFile(): unable to complete copying {str(path)!r} to remote storage "
                f"{key!r}: {err}"
            ) from err

    def download_dir(self, uri: str, local: str | os.PathLike[str]) -> list[pathlib.Path]:
        """DownloadBlob: every object at or below ``uri`` to ``local``; returns local files."""
        bucket, key = self._split(uri)
        base = pathlib.Path(local)
        prefix = key.rstrip("/")
        written: list[pathlib.Path] = []
        try:
            keys = self._list_keys(bucket, key)
        except Exception as err:
            raise StoreError(f"failed to list objects in remote storage {key!r}: {err}") from err
        for obj in keys:
            if not (obj == prefix or obj.startswith(prefix + "/")):
                continue  # a sibling sharing the raw prefix (e.g. "model2" for "model")
            if ".." in obj.split("/"):
                raise StoreError(f"path traversal detected: blob key {obj!r} contains '..'")
            rel = obj[len(prefix) :].lstrip("/")
            target = base / rel if rel else base
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._get_file(bucket, obj, target)
            except Exception as err:
                raise StoreError(
                    f"downloadFile(): unable to complete copying {obj!r} to local storage "
                    f"{str(target)!r}: {err}"
                ) from err
            written.append(target)
        return written

    def exists(self, uri: str) -> bool:
        """An object at ``uri``, or at least one object below ``uri/``."""
        return bool(self.list(uri))

    def list(self, uri: str) -> list[str]:
        """URIs of the objects at ``uri`` or below ``uri/``, sorted."""
        scheme, bucket, key = split_uri(uri)
        prefix = key.rstrip("/")
        keys = self._list_keys(bucket, prefix)
        return sorted(
            f"{scheme}{bucket}/{k}"
            for k in keys
            if not prefix or k == prefix or k.startswith(prefix + "/")
        )

    def read_bytes(self, uri: str) -> bytes:
        """The content of the object at ``uri``."""
        bucket, key = self._split(uri)
        return self._get_bytes(bucket, key)

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Writes one object."""
        bucket, key = self._split(uri)
        self._put_bytes(bucket, key, data)


class GcsStore(ObjectStore):
    """``gs://`` through google-cloud-storage, pointed at an emulator such as fake-gcs-server."""

    schemes = ("gs://",)

    def __init__(self, endpoint: str, project: str = "kfp-backend-runner") -> None:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        self.endpoint = endpoint.rstrip("/")
        self.client = storage.Client(
            project=project,
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=self.endpoint),
        )

    @classmethod
    def from_fake_server(cls, server: Any) -> GcsStore:
        """A store on a running ``FakeGCSServer`` (tests/conftest.py ``start_fake_gcs``)."""
        return cls(server.url)

    def create_bucket(self, bucket: str) -> None:
        from google.api_core.exceptions import Conflict

        with contextlib.suppress(Conflict):
            self.client.create_bucket(bucket)

    def _put_file(self, bucket: str, key: str, path: pathlib.Path) -> None:
        self.client.bucket(bucket).blob(key).upload_from_filename(str(path))

    def _get_file(self, bucket: str, key: str, path: pathlib.Path) -> None:
        self.client.bucket(bucket).blob(key).download_to_filename(str(path))

    def _list_keys(self, bucket: str, prefix: str) -> list[str]:
        return [b.name for b in self.client.list_blobs(bucket, prefix=prefix or None)]

    def _put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        self.client.bucket(bucket).blob(key).upload_from_string(data)

    def _get_bytes(self, bucket: str, key: str) -> bytes:
        return self.client.bucket(bucket).blob(key).download_as_bytes()


class S3Store(ObjectStore):
    """S3-compatible storage through boto3 (path-style), serving ``minio://`` and ``s3://``."""

    def __init__(
        self,
        endpoint: str,
        *,
        schemes: Iterable[str] = ("minio://", "s3://"),
        access_key: str = "minio",
        secret_key: str = "minio123",
        region: str = "us-east-1",
    ) -> None:
        import boto3
        from botocore.config import Config

        self.endpoint = endpoint.rstrip("/")
        self.schemes = tuple(schemes)
        self.client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def create_bucket(self, bucket: str) -> None:
        existing = {b["Name"] for b in self.client.list_buckets().get("Buckets", [])}
        if bucket not in existing:
            self.client.create_bucket(Bucket=bucket)

    def _put_file(self, bucket: str, key: str, path: pathlib.Path) -> None:
        self.client.upload_file(str(path), bucket, key)

    def _get_file(self, bucket: str, key: str, path: pathlib.Path) -> None:
        self.client.download_file(bucket, key, str(path))

    def _list_keys(self, bucket: str, prefix: str) -> list[str]:
        keys: list[str] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys

    def _put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def _get_bytes(self, bucket: str, key: str) -> bytes:
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()


class MotoS3Server:
    """moto's S3 API in a server thread on 127.0.0.1 (a free port), with buckets created.

    KFP's default install creates the ``mlpipeline`` bucket at deployment; so does ``start``
    (pass ``buckets=()`` to start empty)."""

    def __init__(self, buckets: Iterable[str] = ("mlpipeline",)) -> None:
        self.buckets = tuple(buckets)
        self._server: Any = None
        self.endpoint = ""

    def start(self) -> MotoS3Server:
        """Starts the server thread and creates the buckets."""
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        store = self.store()
        for bucket in self.buckets:
            store.create_bucket(bucket)
        return self

    def store(self, schemes: Iterable[str] = ("minio://", "s3://")) -> S3Store:
        """An ``S3Store`` on this server."""
        if not self.endpoint:
            raise StoreError("MotoS3Server is not started")
        return S3Store(self.endpoint, schemes=schemes)

    def stop(self) -> None:
        """Stops the server thread."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> MotoS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
