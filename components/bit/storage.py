"""One place for local and ``gs://`` file I/O.

``gs://`` goes through google-cloud-storage, so ``STORAGE_EMULATOR_HOST`` points it at an
emulator (TensorFlow's own gs:// filesystem cannot be redirected). Every gs:// request, writes
included, is retried with exponential backoff on dropped connections, timeouts, 429 and 5xx
(whole-object writes of the same bytes are idempotent); each retry is logged and counted.
Errors no retry can fix fail at once with one line: a refused connection (nothing listens
there), missing credentials, 401 and 403. Local writes are atomic: a temporary file in the same
folder is renamed into place when complete. :func:`check_writable` checks an output location
before any work is done.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import glob
import logging
import os
import tempfile
import threading
from collections.abc import Iterator

from components.bit.errors import BittuneError

GCS_PREFIX = "gs://"
# (connect, read) seconds for one gs:// request; the retry policy bounds the whole call.
TIMEOUT = (10, 60)
RETRY_DEADLINE_S = 300.0
# First backoff delay; it doubles up to 16 s. BITTUNE_GCS_RETRY_INITIAL_S tunes it.
RETRY_INITIAL_S = float(os.environ.get("BITTUNE_GCS_RETRY_INITIAL_S", "1.0"))

log = logging.getLogger("bittune.storage")
_retries = {"count": 0}
_retries_lock = threading.Lock()


def retry_count() -> int:
    """How many gs:// requests this process has retried so far."""
    return _retries["count"]


def _note_retry(exc: Exception) -> None:
    with _retries_lock:
        _retries["count"] += 1
    log.warning("gs:// request failed (%s); retrying", str(exc).splitlines()[0][:200])


class StorageError(BittuneError):
    """A path that cannot be read or written, with a one-line reason."""


_TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)


def _causes(exc: BaseException):
    """``exc`` and every exception it wraps (causes, contexts, urllib3 reasons, args)."""
    seen, todo = set(), [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        nested = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        nested += [a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]
        todo += [n for n in nested if isinstance(n, BaseException)]


def _refused(exc: BaseException) -> bool:
    return any(isinstance(e, ConnectionRefusedError) for e in _causes(exc))


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: dropped connections, timeouts, 408/429/5xx. Not a refused connection:
    nothing listens there, and no retry changes that."""
    import requests
    from google.api_core import exceptions
    from google.auth import exceptions as auth_exceptions

    if _refused(exc):
        return False
    if isinstance(exc, exceptions.GoogleAPICallError):
        return exc.code in _TRANSIENT_STATUS
    status = getattr(getattr(exc, "response", None), "status_code", None)  # resumable media
    if status is not None:
        return status in _TRANSIENT_STATUS
    return isinstance(
        exc,
        (
            requests.exceptions.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.Timeout,
            auth_exceptions.TransportError,
            ConnectionError,
        ),
    )


def _retry():
    from google.api_core.retry import Retry

    return Retry(
        predicate=is_transient,
        initial=RETRY_INITIAL_S,
        maximum=16.0,
        multiplier=2.0,
        timeout=RETRY_DEADLINE_S,
        on_error=_note_retry,
    )


def _endpoint() -> str:
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    return (
        f"the storage emulator at STORAGE_EMULATOR_HOST={emulator}"
        if emulator
        else ("Cloud Storage (storage.googleapis.com)")
    )


def _call(method, *args, **kwargs):
    """A google-cloud-storage call with bittune's retry policy and timeout; errors no retry
    fixes become one-line :class:`StorageError` s (404 and 412 are left to the caller)."""
    from google.api_core import exceptions

    try:
        return method(*args, retry=_retry(), timeout=TIMEOUT, **kwargs)
    except (exceptions.Unauthorized, exceptions.Forbidden) as exc:
        raise StorageError(f"permission denied by {_endpoint()}: {_first_line(exc)}") from None
    except exceptions.RetryError as exc:
        cause = exc.cause or exc
        raise StorageError(
            f"{_endpoint()} kept failing for {RETRY_DEADLINE_S:.0f} s: {_first_line(cause)}"
        ) from None
    except Exception as exc:
        if _refused(exc):
            raise StorageError(f"cannot connect to {_endpoint()}: connection refused") from None
        raise


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """A file found under a folder: its full URI, its path relative to the folder, its size."""

    uri: str
    relpath: str
    size: int


def is_gcs(uri: str) -> bool:
    return uri.startswith(GCS_PREFIX)


def split_gcs(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``."""
    bucket, _, name = uri[len(GCS_PREFIX) :].partition("/")
    if not bucket:
        raise StorageError(f"not a gs:// URI with a bucket: {uri}")
    return bucket, name


def join(base: str, *parts: str) -> str:
    if is_gcs(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(base, *parts)


@functools.lru_cache(maxsize=128)
def _client(emulator: str | None, pid: int, thread: int):
    """One client per process and thread: a forked child must not share its parent's
    connections, and concurrent threads must not share one HTTP session."""
    from google.auth import exceptions as auth_exceptions
    from google.cloud import storage  # imported lazily: local runs never need it

    if emulator:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project="bittune-test", credentials=AnonymousCredentials())
    try:
        return storage.Client()
    except auth_exceptions.DefaultCredentialsError:
        raise StorageError(
            "no Google Cloud credentials for gs:// paths: run `gcloud auth application-default "
            "login`, set GOOGLE_APPLICATION_CREDENTIALS, or run where a service account is "
            "attached (GKE workload identity, Vertex AI)"
        ) from None


def gcs_client():
    """A google-cloud-storage client (anonymous when ``STORAGE_EMULATOR_HOST`` is set)."""
    return _client(os.environ.get("STORAGE_EMULATOR_HOST"), os.getpid(), threading.get_ident())


def _blob(uri: str):
    bucket, name = split_gcs(uri)
    return gcs_client().bucket(bucket).blob(name)


def exists(uri: str) -> bool:
    if is_gcs(uri):
        bucket, name = split_gcs(uri)
        if not name:
            return _call(gcs_client().bucket(bucket).exists)
        return _call(_blob(uri).exists) or is_dir(uri)
    return os.path.exists(uri)


def is_dir(uri: str) -> bool:
    """A local folder, or a gs:// prefix with at least one object below it."""
    if is_gcs(uri):
        bucket, name = split_gcs(uri)
        prefix = name.rstrip("/") + "/" if name else ""
        blobs = _call(gcs_client().list_blobs, bucket, prefix=prefix, max_results=1)
        return any(True for _ in blobs)
    return os.path.isdir(uri)


def list_files(root: str) -> Iterator[FileEntry]:
    """Every file below ``root`` (recursively), in no particular order."""
    if is_gcs(root):
        bucket, name = split_gcs(root)
        prefix = name.rstrip("/") + "/" if name else ""
        for blob in _call(gcs_client().list_blobs, bucket, prefix=prefix):
            if blob.name.endswith("/"):  # folder placeholder objects
                continue
            rel = blob.name[len(prefix) :]
            yield FileEntry(f"{GCS_PREFIX}{bucket}/{blob.name}", rel, int(blob.size or 0))
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for filename in filenames:
            path = os.path.join(dirpath, filename)
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            yield FileEntry(path, os.path.relpath(path, root).replace(os.sep, "/"), size)


def list_dirs(root: str) -> list[str]:
    """Names of the immediate sub-folders of a local folder (gs:// folders are implicit)."""
    if is_gcs(root):
        return sorted({e.relpath.split("/", 1)[0] for e in list_files(root) if "/" in e.relpath})
    return sorted(e.name for e in os.scandir(root) if e.is_dir())


def read_bytes(uri: str) -> bytes:
    if is_gcs(uri):
        from google.api_core import exceptions

        try:
            return _call(_blob(uri).download_as_bytes)
        except exceptions.NotFound:
            raise StorageError(f"not found: {uri}") from None
    with open(uri, "rb") as f:
        return f.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file at once; readers never see it half-written."""
    if is_gcs(uri):
        blob = _blob(uri)
        _upload(blob, lambda: _call(blob.upload_from_string, data), lambda: [data])
        return
    fd, tmp = local_temp(uri)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        make_readable(tmp)
        os.replace(tmp, uri)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def local_temp(path: str) -> tuple[int, str]:
    """A hidden temporary file beside ``path`` (``.NAME.tmp-XXXX``), to be renamed onto it when
    complete. Temporaries a killed writer of the same file left behind are removed first."""
    folder, base = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    for stale in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(base)}.tmp-*")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
    return tempfile.mkstemp(dir=folder, prefix=f".{base}.tmp-")


def upload_file(local_path: str, uri: str) -> None:
    """Upload a finished local file to ``gs://`` (the object appears only when complete)."""

    def chunks() -> Iterator[bytes]:
        with open(local_path, "rb") as f:
            yield from iter(lambda: f.read(1 << 20), b"")

    blob = _blob(uri)
    _upload(blob, lambda: _call(blob.upload_from_filename, local_path), chunks)


def _upload(blob, send, content) -> None:
    """Run an upload (``send()``). When it fails after a reply may have been lost (the retry of
    a finished resumable upload finds its session gone, say), the write still counts if the
    object is there with exactly our bytes: the CRC32C of ``content()`` (its chunks, read only
    then) is the object's."""
    try:
        send()
    except Exception:
        import google_crc32c

        checksum = google_crc32c.Checksum()
        for chunk in content():
            checksum.update(chunk)
        expected = base64.b64encode(checksum.digest()).decode()
        try:
            _call(blob.reload)
            landed = blob.crc32c == expected
        except Exception:
            landed = False
        if not landed:
            raise
        log.warning(
            "gs://%s/%s: the reply was lost, but the object is complete",
            blob.bucket.name,
            blob.name,
        )


def make_readable(path: str) -> None:
    """Give a temporary file the permissions a normal file gets (mkstemp makes it 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


class PreconditionFailed(StorageError):
    """The object changed since it was read (another writer got there first)."""


def read_versioned(uri: str) -> tuple[bytes | None, int]:
    """A gs:// object's bytes and generation; (None, 0) when it does not exist."""
    from google.api_core import exceptions

    blob = _blob(uri)
    try:
        data = _call(blob.download_as_bytes)
    except exceptions.NotFound:
        return None, 0
    return data, int(blob.generation)


def write_if_generation(uri: str, data: bytes, generation: int) -> int:
    """Write a gs:// object only if its generation is still ``generation`` (0: only if absent);
    return the new generation. Two writers racing from the same read: exactly one succeeds.

    A retried write can fail its precondition because its own earlier attempt landed (the reply
    was lost): when the object now holds exactly ``data``, that write was ours. ``data`` must
    therefore be unique to the writer (callers put a claim id in it)."""
    from google.api_core import exceptions

    blob = _blob(uri)
    try:
        _call(blob.upload_from_string, data, if_generation_match=generation)
    except exceptions.PreconditionFailed:
        current, current_generation = read_versioned(uri)
        if current == data:
            return current_generation
        raise PreconditionFailed(f"{uri} changed since it was read") from None
    return int(blob.generation)


def object_versions(root: str) -> list[tuple[str, int, int]]:
    """(relative name, size, generation) of every object under a gs:// prefix; for a local
    folder the modification time in nanoseconds stands in for the generation."""
    if not is_gcs(root):
        return sorted((e.relpath, e.size, os.stat(e.uri).st_mtime_ns) for e in list_files(root))
    bucket, name = split_gcs(root)
    prefix = name.rstrip("/") + "/" if name else ""
    return sorted(
        (b.name[len(prefix) :], int(b.size or 0), int(b.generation))
        for b in _call(gcs_client().list_blobs, bucket, prefix=prefix)
    )


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def check_writable(uri: str) -> None:
    """Refuse, before any work, an output location that cannot be written: a local path under
    a regular file or in a read-only folder, a gs:// bucket that does not exist, or storage
    that cannot be reached or refuses our credentials."""
    if is_gcs(uri):
        from google.api_core import exceptions

        bucket, name = split_gcs(uri)
        try:
            blobs = _call(gcs_client().list_blobs, bucket, prefix=name, max_results=1)
            any(True for _ in blobs)
        except exceptions.NotFound:
            raise StorageError(f"cannot write to {uri}: bucket {bucket} does not exist") from None
        return
    path = os.path.abspath(uri)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise StorageError(f"cannot write to {uri}: {existing} is a file, not a folder")
    read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
    if read_only or not os.access(existing, os.W_OK | os.X_OK):
        raise StorageError(f"cannot write to {uri}: {existing} is read-only")
