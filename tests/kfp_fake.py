"""In-process fake of the Kubeflow Pipelines v2beta1 REST API, for tests of code using kfp.Client.

It serves the endpoints `kfp.Client` (kfp 2.17) calls to upload pipelines and versions, manage
experiments and create and read runs, with the real server's paths, snake_case JSON field names,
RFC 3339 timestamps, filter/paging query parameters and error status codes. Nothing is executed:
a created run stays PENDING until a test moves it with `set_run_state`.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

API_PREFIX = "/apis/v2beta1"
_GRPC_CODES = {400: 3, 404: 5, 409: 6, 501: 12}  # HTTP status -> google.rpc.Code
_FILTER_OPS = {1: "EQUALS", 2: "NOT_EQUALS", 8: "IN", 9: "IS_SUBSTRING"}  # filter.proto enum
_EPOCH = "1970-01-01T00:00:00Z"  # what the real server reports for an unset finished_at


class ApiError(Exception):
    """An error response; `upload` selects the upload handlers' body shape over grpc-gateway's."""

    def __init__(self, status: int, message: str, upload: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.upload = status, message, upload

    def body(self) -> dict[str, Any]:
        if self.upload:
            return {"error_message": self.message, "error_details": self.message}
        code = _GRPC_CODES.get(self.status, 2)
        return {"error": self.message, "code": code, "message": self.message, "details": []}


@dataclass
class _Request:
    query: dict[str, str]
    body: bytes
    content_type: str

    def json(self) -> dict[str, Any]:
        try:
            data = json.loads(self.body or b"{}")
        except ValueError as err:
            raise ApiError(400, f"Invalid JSON body: {err}") from err
        if not isinstance(data, dict):
            raise ApiError(400, "Request body must be a JSON object")
        return data


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _new_id() -> str:
    return str(uuid.uuid4())


def _matches(item: dict[str, Any], pred: dict[str, Any]) -> bool:
    """Evaluates one filter.proto predicate; unsupported operations are ignored (match)."""
    op = pred.get("operation")
    op = _FILTER_OPS.get(op, op) if isinstance(op, int) else op
    key = str(pred.get("key", ""))
    actual = item.get(key, item.get("display_name") if key == "name" else None)
    actual = "" if actual is None else str(actual)
    value = next(
        (
            str(pred[k])
            for k in (
                "string_value",
                "stringValue",
                "int_value",
                "intValue",
                "long_value",
                "longValue",
            )
            if k in pred
        ),
        "",
    )
    if op == "EQUALS":
        return actual == value
    if op == "NOT_EQUALS":
        return actual != value
    if op == "IS_SUBSTRING":
        return value in actual
    if op == "IN":
        values = pred.get("string_values") or pred.get("stringValues") or {}
        return actual in [str(v) for v in values.get("values", [])]
    return True


def _list(items: list[dict[str, Any]], req: _Request, field: str) -> dict[str, Any]:
    """Filters, sorts and pages `items` into a List*Response body (empty fields omitted)."""
    try:
        flt = json.loads(req.query["filter"]) if req.query.get("filter") else {}
        offset = int(req.query.get("page_token") or 0)
        size = int(req.query.get("page_size") or 0)
    except ValueError as err:
        raise ApiError(400, f"Invalid list request: {err}") from err
    preds = flt.get("predicates", []) if isinstance(flt, dict) else []
    items = [it for it in items if all(_matches(it, p) for p in preds if isinstance(p, dict))]
    sort_key, _, order = req.query.get("sort_by", "").partition(" ")
    if order.strip() == "desc":  # newest first among equal keys too
        items.reverse()
    if sort_key:
        items.sort(key=lambda it: str(it.get(sort_key, "")), reverse=order.strip() == "desc")
    end = offset + size if size > 0 else len(items)
    out: dict[str, Any] = {}
    if items[offset:end]:
        out[field] = items[offset:end]
    if items:
        out["total_size"] = len(items)
    if end < len(items):
        out["next_page_token"] = str(end)
    return out


def _parse_pipeline_file(filename: str, data: bytes) -> dict[str, Any]:
    """Validates an uploaded IR YAML the way the server stores it: spec, or spec + platform."""
    if not filename.endswith((".yaml", ".yml")):
        raise ApiError(
            400, "Unexpected pipeline file format. Support .zip, .tar.gz or YAML.", upload=True
        )
    try:
        docs = [d for d in yaml.safe_load_all(data.decode("utf-8")) if d is not None]
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        reason = getattr(err, "problem", None) or err
        raise ApiError(400, f"Invalid pipeline YAML: {reason}", upload=True) from err
    specs = [d for d in docs if isinstance(d, dict) and "platforms" not in d]
    platforms = [d for d in docs if isinstance(d, dict) and "platforms" in d]
    if len(specs) != 1 or not {"pipelineInfo", "root"} <= specs[0].keys():
        raise ApiError(
            400,
            "Invalid pipeline spec: expected one document with pipelineInfo and root",
            upload=True,
        )
    if platforms:
        return {"pipeline_spec": specs[0], "platform_spec": platforms[0]}
    return specs[0]


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeKfpServer


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        ctype = self.headers.get("Content-Type", "")
        status, payload = self.server.fake.handle(self.command, self.path, ctype, body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        """Keeps test output quiet."""


class FakeKfpServer:
    """Threaded HTTP server on 127.0.0.1 (free port) implementing the KFP v2beta1 endpoints
    kfp.Client uses. State lives in plain dicts keyed by id, holding the JSON the API returns."""

    def __init__(self, tag_name: str = "2.17.0") -> None:
        self.tag_name = tag_name  # the release the server reports (healthz)
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.RLock()
        self._httpd = _HttpServer(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        self._thread: threading.Thread | None = None
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., Any]]] = [
            ("GET", re.compile(r"/healthz"), self._healthz),
            ("POST", re.compile(r"/pipelines/upload"), self._upload_pipeline),
            ("POST", re.compile(r"/pipelines/upload_version"), self._upload_version),
            ("GET", re.compile(r"/pipelines"), self._list_pipelines),
            ("GET", re.compile(r"/pipelines/(?P<pid>[^/:]+)"), self._get_pipeline),
            ("GET", re.compile(r"/pipelines/(?P<pid>[^/:]+)/versions"), self._list_versions),
            (
                "GET",
                re.compile(r"/pipelines/(?P<pid>[^/:]+)/versions/(?P<vid>[^/:]+)"),
                self._get_version,
            ),
            ("POST", re.compile(r"/experiments"), self._create_experiment),
            ("GET", re.compile(r"/experiments"), self._list_experiments),
            ("GET", re.compile(r"/experiments/(?P<eid>[^/:]+)"), self._get_experiment),
            ("POST", re.compile(r"/runs"), self._create_run),
            ("GET", re.compile(r"/runs"), self._list_runs),
            ("GET", re.compile(r"/runs/(?P<rid>[^/:]+)"), self._get_run),
        ]

    def start(self) -> FakeKfpServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> FakeKfpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_run_state(self, run_id: str, state: str) -> None:
        """Moves a run to `state` (e.g. "RUNNING", "SUCCEEDED"), as the backend would."""
        with self._lock:
            run, now = self.runs[run_id], _now()
            run["state"] = state
            run["state_history"].append({"update_time": now, "state": state})
            if state in ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED"):
                run["finished_at"] = now

    def handle(self, method: str, raw_path: str, content_type: str, body: bytes) -> tuple[int, Any]:
        """Routes one request; returns (HTTP status, JSON body)."""
        parts = urlsplit(raw_path)
        with self._lock:
            self.requests.append((method, parts.path))
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        sub = parts.path.removeprefix(API_PREFIX).rstrip("/")
        try:
            path_known = False
            if parts.path.startswith(API_PREFIX + "/"):
                for route_method, pattern, handler in self._routes:
                    match = pattern.fullmatch(sub)
                    if match and route_method == method:
                        args = {k: unquote(v) for k, v in match.groupdict().items()}
                        with self._lock:
                            return 200, handler(_Request(query, body, content_type), **args)
                    path_known = path_known or match is not None
            if path_known:
                raise ApiError(501, "Method Not Allowed")
            raise ApiError(404, "Not Found")
        except ApiError as err:
            return err.status, err.body()

    # --- pipelines -------------------------------------------------------------------------

    def _healthz(self, req: _Request) -> dict[str, Any]:
        """backend/src/apiserver/main.go ``newHealthzResponse``: the release from TAG_NAME."""
        return {"commit_sha": "unknown", "tag_name": self.tag_name, "multi_user": False,
                "pipeline_store": "database"}  # fmt: skip

    def _read_upload(self, req: _Request) -> tuple[str, dict[str, Any]]:
        """Returns (file name, stored spec) from the multipart form field `uploadfile`."""
        head = f"Content-Type: {req.content_type}\r\n\r\n".encode()
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + req.body)
        for part in msg.iter_parts() if msg.is_multipart() else []:
            if part.get_param("name", header="content-disposition") == "uploadfile":
                filename = part.get_filename() or ""
                data = part.get_payload(decode=True)
                return filename, _parse_pipeline_file(filename, data or b"")
        raise ApiError(400, "Failed to read pipeline from file", upload=True)

    def _add_version(
        self, pid: str, name: str, display: str, req: _Request, spec: dict[str, Any]
    ) -> dict[str, Any]:
        version = {
            "pipeline_id": pid,
            "pipeline_version_id": _new_id(),
            "name": name,
            "display_name": display,
            "created_at": _now(),
            "pipeline_spec": spec,
        }
        if req.query.get("description"):
            version["description"] = req.query["description"]
        self.versions[version["pipeline_version_id"]] = version
        return version

    def _upload_pipeline(self, req: _Request) -> dict[str, Any]:
        filename, spec = self._read_upload(req)
        name = req.query.get("name") or req.query.get("display_name") or filename
        display = req.query.get("display_name") or name
        if any(
            name in (p["name"], p["display_name"]) or display == p["display_name"]
            for p in self.pipelines.values()
        ):
            raise ApiError(409, "Failed to create a pipeline and a pipeline version", upload=True)
        pipeline = {
            "pipeline_id": _new_id(),
            "name": name,
            "display_name": display,
            "created_at": _now(),
        }
        if req.query.get("description"):
            pipeline["description"] = req.query["description"]
        self.pipelines[pipeline["pipeline_id"]] = pipeline
        self._add_version(pipeline["pipeline_id"], name, display, req, spec)
        return pipeline

    def _upload_version(self, req: _Request) -> dict[str, Any]:
        filename, spec = self._read_upload(req)
        pid = req.query.get("pipelineid", "")
        if pid not in self.pipelines:  # the real server answers 400 here, not 404
            raise ApiError(400, "Failed to create a pipeline version", upload=True)
        name = req.query.get("name") or req.query.get("display_name") or filename
        display = req.query.get("display_name") or name
        if any(v["pipeline_id"] == pid and v["name"] == name for v in self.versions.values()):
            raise ApiError(409, "Failed to create a pipeline version", upload=True)
        return self._add_version(pid, name, display, req, spec)

    def _pipeline(self, pid: str) -> dict[str, Any]:
        if pid not in self.pipelines:
            raise ApiError(404, f"Failed to get pipeline: Pipeline {pid} not found")
        return self.pipelines[pid]

    def _list_pipelines(self, req: _Request) -> dict[str, Any]:
        return _list(list(self.pipelines.values()), req, "pipelines")

    def _get_pipeline(self, req: _Request, pid: str) -> dict[str, Any]:
        return self._pipeline(pid)

    def _list_versions(self, req: _Request, pid: str) -> dict[str, Any]:
        self._pipeline(pid)
        mine = [v for v in self.versions.values() if v["pipeline_id"] == pid]
        return _list(mine, req, "pipeline_versions")

    def _get_version(self, req: _Request, pid: str, vid: str) -> dict[str, Any]:
        version = self.versions.get(vid)
        if version is None or version["pipeline_id"] != pid:
            raise ApiError(404, f"Failed to get pipeline version: Version {vid} not found")
        return version

    # --- experiments -----------------------------------------------------------------------

    def _new_experiment(
        self, display: str, description: str = "", namespace: str = ""
    ) -> dict[str, Any]:
        exp = {
            "experiment_id": _new_id(),
            "display_name": display,
            "created_at": _now(),
            "storage_state": "AVAILABLE",
        }
        exp.update({k: v for k, v in (("description", description), ("namespace", namespace)) if v})
        self.experiments[exp["experiment_id"]] = exp
        return exp

    def _create_experiment(self, req: _Request) -> dict[str, Any]:
        body = req.json()
        display, namespace = body.get("display_name") or "", body.get("namespace") or ""
        if not display:
            raise ApiError(400, "Invalid input error: Experiment display name is empty")
        if any(
            e["display_name"] == display and e.get("namespace", "") == namespace
            for e in self.experiments.values()
        ):
            raise ApiError(409, f"Already exist error: Experiment {display!r} already exists")
        return self._new_experiment(display, body.get("description") or "", namespace)

    def _list_experiments(self, req: _Request) -> dict[str, Any]:
        return _list(list(self.experiments.values()), req, "experiments")

    def _get_experiment(self, req: _Request, eid: str) -> dict[str, Any]:
        if eid not in self.experiments:
            raise ApiError(404, f"Failed to get experiment: Experiment {eid} not found")
        return self.experiments[eid]

    # --- runs ------------------------------------------------------------------------------

    def _create_run(self, req: _Request) -> dict[str, Any]:
        body = req.json()
        if not body.get("display_name"):
            raise ApiError(400, "Invalid input error: Run display name is empty")
        eid = body.get("experiment_id") or req.query.get("experiment_id") or ""
        if not eid:  # like the server, fall back to a "Default" experiment
            default = [e for e in self.experiments.values() if e["display_name"] == "Default"]
            eid = (default[0] if default else self._new_experiment("Default"))["experiment_id"]
        experiment = self._get_experiment(req, eid)
        run: dict[str, Any] = {
            "experiment_id": eid,
            "run_id": _new_id(),
            "display_name": body["display_name"],
        }
        ref = body.get("pipeline_version_reference") or {}
        if ref.get("pipeline_version_id") or ref.get("pipeline_id"):
            version = self._resolve_version(ref)
            run["pipeline_version_reference"] = {
                "pipeline_id": version["pipeline_id"],
                "pipeline_version_id": version["pipeline_version_id"],
            }
            spec = version["pipeline_spec"]
        elif body.get("pipeline_spec"):
            run["pipeline_spec"] = spec = body["pipeline_spec"]
        else:
            raise ApiError(
                400,
                "Invalid input error: Run has neither pipeline_spec nor pipeline_version_reference",
            )
        config = body.get("runtime_config") or {}
        self._check_parameters(spec, config.get("parameters") or {})
        now = _now()
        run.update(
            {
                "storage_state": "AVAILABLE",
                "runtime_config": config,
                "created_at": now,
                "scheduled_at": now,
                "finished_at": _EPOCH,
                "state": "PENDING",
                "state_history": [{"update_time": now, "state": "PENDING"}],
            }
        )
        run.update({k: body[k] for k in ("description", "service_account") if body.get(k)})
        experiment["last_run_created_at"] = now
        self.runs[run["run_id"]] = run
        return run

    def _resolve_version(self, ref: dict[str, Any]) -> dict[str, Any]:
        """The referenced version, or the pipeline's latest when only pipeline_id is given."""
        pid, vid = ref.get("pipeline_id") or "", ref.get("pipeline_version_id") or ""
        if not vid:
            self._pipeline(pid)
            return [v for v in self.versions.values() if v["pipeline_id"] == pid][-1]
        version = self.versions.get(vid)
        if version is None:
            raise ApiError(404, f"Failed to get pipeline version: Version {vid} not found")
        if pid and version["pipeline_id"] != pid:
            raise ApiError(400, "Invalid input error: pipeline ID should be parent of version")
        return version

    @staticmethod
    def _check_parameters(spec: dict[str, Any], params: dict[str, Any]) -> None:
        """Rejects parameters the pipeline's root does not declare, so a misspelt parameter
        fails at submission instead of in a run that never executes here."""
        root = spec.get("pipeline_spec", spec).get("root", {})
        declared = root.get("inputDefinitions", {}).get("parameters", {})
        unknown = sorted(set(params) - set(declared))
        if unknown:
            raise ApiError(400, f"Invalid input error: Unrecognized input parameters {unknown}")

    def _list_runs(self, req: _Request) -> dict[str, Any]:
        eid = req.query.get("experiment_id")
        runs = [r for r in self.runs.values() if not eid or r["experiment_id"] == eid]
        return _list(runs, req, "runs")

    def _get_run(self, req: _Request, rid: str) -> dict[str, Any]:
        if rid not in self.runs:
            raise ApiError(404, f"Failed to get run: Run {rid} not found")
        return self.runs[rid]
