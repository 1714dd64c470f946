"""Compiling the pipeline, submitting runs to a KFP API server or to Vertex AI Pipelines, and
triggering runs on new data.

KFP authentication uses the standard ``kfp.Client`` options: ``--token`` (``existing_token``),
or inside a cluster the service-account token the client finds by itself
(``KF_PIPELINES_SA_TOKEN_PATH``); ``--namespace`` for multi-user deployments; ``--ssl-ca-cert``.
Vertex AI uses Application Default Credentials (workload identity federation in CI).

Every submission is checked first: the parameters (against the one table), the images (a
cluster pulls from a registry, so a name without a registry host is refused), and the data's
fingerprint is added (``data_fingerprint``), so that new data is analysed again instead of
being a cache hit of the last run's analysis.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import sys
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from components.bit import params, storage
from components.bit.errors import BittuneError
from components.bit.machines import TrainingMachine
from components.image import ACCELERATORS, IMAGE_REGISTRY, IMAGE_TAG, image_for, registry_host

PIPELINE_FILES = {
    "kubeflow": os.path.join(os.path.dirname(__file__), "bit_finetune.yaml"),
    "vertex": os.path.join(os.path.dirname(__file__), "bit_finetune_vertex.yaml"),
}
DEFAULT_PIPELINE_FILE = PIPELINE_FILES["kubeflow"]
STALE_CLAIM = datetime.timedelta(minutes=15)
MAX_CHANGES_SHOWN = 8  # folders named in the trigger's "how the data changed"
# The oldest KFP backend the compiled pipeline runs on: the oldest release the backend-faithful
# runner (tests/backend) passes it with.
MINIMUM_BACKEND = (2, 14)


def default_pipeline_file(target: str = "kubeflow") -> str:
    return PIPELINE_FILES[target]


class SubmitError(BittuneError):
    """A run could not be submitted, with the reason."""


# ---------------------------------------------------------------------------------------------
# Compiling


def compile_pipeline(
    output: str | None = None,
    registry: str = IMAGE_REGISTRY,
    tag: str = IMAGE_TAG,
    target: str = "kubeflow",
    machine: TrainingMachine | None = None,
) -> str:
    """Write the pipeline's IR YAML for ``target`` (kubeflow: the pipeline spec plus the
    Kubernetes platform spec; vertex: one document), training on ``machine`` (default: one
    GPU), images pointed at ``registry``/``tag``. A bad machine raises a one-line error."""
    from kfp import compiler

    from pipelines.bit_finetune import build

    output = output or default_pipeline_file(target)
    try:
        pipeline = build(target, machine)
    except params.ParameterError as exc:
        raise SubmitError(str(exc)) from None
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "pipeline.yaml")
        compiler.Compiler().compile(pipeline, path)
        with open(path, encoding="utf-8") as f:
            documents = list(yaml.safe_load_all(f))
    text = yaml.safe_dump_all(documents, sort_keys=True)
    for kind in ACCELERATORS:  # executors, and the image a CustomJob's worker pools run
        text = text.replace(image_for(kind), image_for(kind, registry, tag))
    storage.write_text(output, text)
    return output


def pipeline_images(spec: Mapping[str, Any]) -> list[str]:
    """The container images a compiled pipeline runs."""
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    return sorted({e["container"]["image"] for e in executors.values() if "container" in e})


def check_images(spec: Mapping[str, Any], path: str) -> None:
    """Refuse images a cluster cannot pull from a registry of yours."""
    bare = [image for image in pipeline_images(spec) if registry_host(image) is None]
    if bare:
        raise SubmitError(
            f"{path} runs images without a registry host ({', '.join(bare)}), which a cluster "
            "would pull from Docker Hub: push the images to your registry and compile for it, "
            "e.g. bittune compile --image-registry us-docker.pkg.dev/PROJECT/bittune "
            "--output bit_finetune.yaml, then submit --pipeline bit_finetune.yaml"
        )


def data_fingerprint(source: str, data_dir: str = "") -> str:
    """A digest of the objects a data source reads (names, sizes, generations): the folder, the
    manifest's folder, or the TFDS data folder. Local paths count by modification time."""
    if source.startswith("tfds:"):
        root = storage.join(data_dir, source[len("tfds:") :].split(":")[0])
    elif source.lower().endswith((".csv", ".jsonl")):
        root = source.rsplit("/", 1)[0]
    else:
        root = source
    if root.startswith("/gcs/"):
        root = "gs://" + root[len("/gcs/") :]
    return fingerprint(root)


def _checked(values: Mapping[str, Any], spec: Mapping[str, Any], path: str, target: str):
    """The run's parameters, checked, with the data fingerprint added; the images checked."""
    from pipelines.bit_finetune import PIPELINE_NAME

    values = dict(values)
    if spec["pipelineInfo"]["name"] == PIPELINE_NAME:
        declared = pipeline_parameters(spec)
        defaults = {k: d["defaultValue"] for k, d in declared.items() if "defaultValue" in d}
        try:
            params.check_pipeline({**defaults, **values}, on_cluster=True, target=target)
        except params.ParameterError as exc:
            raise SubmitError(str(exc)) from None
        if not values.get("data_fingerprint") and "data_fingerprint" in declared:
            data_dir = values.get("data_dir") or defaults.get("data_dir", "")
            values["data_fingerprint"] = data_fingerprint(values["data_source"], data_dir)
    check_images(spec, path)
    return values


def load_pipeline(path: str) -> tuple[str, dict[str, Any]]:
    """A compiled pipeline's text and its spec, loaded safely (plain YAML only)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        spec = next(yaml.safe_load_all(text), None)
    except OSError as exc:
        raise SubmitError(f"cannot read the pipeline file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise SubmitError(f"{path} is not a plain YAML pipeline file: {first}") from None
    if not isinstance(spec, dict) or "pipelineInfo" not in spec or "root" not in spec:
        raise SubmitError(f"{path} is not a compiled KFP pipeline (no pipelineInfo/root)")
    return text, spec


def pipeline_parameters(spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The pipeline's parameters: {name: {"parameterType": …, "defaultValue"?: …}}."""
    return spec["root"]["inputDefinitions"]["parameters"]


def parse_params(pairs: Sequence[str], spec: Mapping[str, Any]) -> dict[str, Any]:
    """``k=v`` strings typed by the pipeline's parameter types; unknown names are refused."""
    declared = pipeline_parameters(spec)
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise SubmitError(f"--param {pair!r}: expected NAME=VALUE")
        if name in params.COMPILE_TIME and name not in declared:
            raise SubmitError(params.not_a_run_parameter(name))
        if name not in declared:
            raise SubmitError(f"unknown parameter {name!r}; valid: {', '.join(sorted(declared))}")
        values[name] = _typed(name, text, declared[name]["parameterType"])
    missing = [
        n
        for n, d in declared.items()
        if "defaultValue" not in d and n not in values and not d.get("isOptional")
    ]
    if missing:
        raise SubmitError(f"missing required parameter(s): {', '.join(missing)} (--param NAME=…)")
    return values


def _typed(name: str, text: str, kind: str) -> Any:
    try:
        if kind == "NUMBER_INTEGER":
            return int(text)
        if kind == "NUMBER_DOUBLE":
            return float(text)
        if kind == "BOOLEAN":
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if kind in ("STRUCT", "LIST"):
            value = json.loads(text)
            if not isinstance(value, dict if kind == "STRUCT" else list):
                raise ValueError(text)
            return value
    except ValueError:
        raise SubmitError(f"parameter {name}: {text!r} is not a valid {kind.lower()}") from None
    return text


# ---------------------------------------------------------------------------------------------
# Submitting


def _client(
    host: str,
    token: str | None = None,
    namespace: str | None = None,
    ssl_ca_cert: str | None = None,
):
    import warnings

    import kfp

    try:
        with warnings.catch_warnings():  # "This client only works with … v2.0.0-beta.2 and
            warnings.simplefilter("ignore", FutureWarning)  # later": submit checks the release
            return kfp.Client(
                host=host,
                existing_token=token,
                namespace=namespace or "kubeflow",
                ssl_ca_cert=ssl_ca_cert,
            )
    except Exception as exc:  # connection and auth failures surface as many types
        raise SubmitError(f"cannot reach the KFP API at {host}: {_reason(exc)}") from None


def submit(
    host: str,
    params: Mapping[str, Any],
    experiment: str = "bittune",
    pipeline_file: str = DEFAULT_PIPELINE_FILE,
    token: str | None = None,
    namespace: str | None = None,
    ssl_ca_cert: str | None = None,
) -> dict[str, str]:
    """Upload the pipeline (a new version when it exists and changed) and start a run.

    Everything is checked first (parameters, images) and the data fingerprint added: a bad
    submission fails here, before the KFP API is called."""
    text, spec = load_pipeline(pipeline_file)
    name = spec["pipelineInfo"]["name"]
    params = _checked(params, spec, pipeline_file, "kubeflow")
    version_name = f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    client = _client(host, token, namespace, ssl_ca_cert)
    import urllib3
    from kfp_server_api.exceptions import ApiException

    try:
        check_backend_version(client, host)
        pipeline_id = client.get_pipeline_id(name)
        if pipeline_id is None:
            # The first version takes the pipeline's name; its description carries the
            # content-named version, so that the same YAML is recognised next time.
            description = f"{spec['pipelineInfo'].get('description', '')} [{version_name}]"
            pipeline_id = client.upload_pipeline(
                pipeline_file, pipeline_name=name, description=description.strip()
            ).pipeline_id
            version_id = _version_id(client, pipeline_id, version_name)
        else:
            version_id = _version_id(client, pipeline_id, version_name)
            if version_id is None:
                version_id = client.upload_pipeline_version(
                    pipeline_file, pipeline_version_name=version_name, pipeline_id=pipeline_id
                ).pipeline_version_id
        experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
        run = client.run_pipeline(
            experiment_id=experiment_id,
            job_name=f"{name}-{stamp}",
            pipeline_id=pipeline_id,
            version_id=version_id,
            params=dict(params),
        )
    except ApiException as exc:
        raise SubmitError(f"the KFP API refused the request ({exc.status}): {exc.reason}") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:  # kfp_server_api calls urllib3
        raise SubmitError(f"cannot reach the KFP API at {host}: {_reason(exc)}") from None
    return {
        "run_id": run.run_id,
        "pipeline_id": pipeline_id,
        "version_id": version_id,
        "experiment_id": experiment_id,
        "url": f"{host.rstrip('/')}/#/runs/details/{run.run_id}",
    }


def backend_version(client) -> str | None:
    """The KFP server's release (``tag_name`` of ``/apis/v2beta1/healthz``, which the API server
    fills from its TAG_NAME setting: backend/src/apiserver/main.go ``newHealthzResponse``), or
    None when it does not say. Read raw: kfp_server_api's response model drops the field."""
    from kfp_server_api.exceptions import ApiException

    try:
        raw = client._healthz_api.healthz_service_get_healthz(_preload_content=False)
        tag = json.loads(raw.data or b"{}").get("tag_name", "")
    except (ApiException, ValueError, AttributeError):
        return None
    return tag if re.fullmatch(r"v?\d+\.\d+(\.\d+)?([-+.].*)?", str(tag)) else None


def check_backend_version(client, host: str) -> None:
    """Refuse a KFP server older than :data:`MINIMUM_BACKEND` in one line. One that does not say
    its version is let through with a one-line note: release images built without TAG_NAME
    report ``unknown`` (backend/Dockerfile's default; kubeflow/pipelines issue 11573), so an
    older release cannot be told from a newer one there."""
    version = backend_version(client)
    if version is None:
        minimum = ".".join(map(str, MINIMUM_BACKEND))
        print(
            f"note: the KFP server at {host} does not say its release; bittune's pipeline needs "
            f"Kubeflow Pipelines {minimum} or newer (README: Supported backends)",
            file=sys.stderr,
        )
        return
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    if numbers < MINIMUM_BACKEND:
        minimum = ".".join(map(str, MINIMUM_BACKEND))
        raise SubmitError(
            f"the KFP server at {host} runs Kubeflow Pipelines {version}; bittune's pipeline "
            f"needs {minimum} or newer (README: Supported backends)"
        )


def _version_id(client, pipeline_id: str, display_name: str) -> str | None:
    response = client.list_pipeline_versions(pipeline_id, page_size=200)
    for version in response.pipeline_versions or []:
        if display_name in (version.display_name, *_bracketed(version.description)):
            return version.pipeline_version_id
    return None


def _bracketed(text: str | None) -> list[str]:
    return re.findall(r"\[([^\]]+)\]", text or "")


NETWORK = re.compile(r"^projects/[^/]+/global/networks/[^/]+$")
KMS_KEY = re.compile(r"^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$")


def check_vertex_options(region: str, network: str | None, key: str | None) -> None:
    """Refuse, in one line, a region python-aiplatform does not know (the list
    ``aiplatform.init`` checks: google/cloud/aiplatform/constants/base.py ``SUPPORTED_REGIONS``,
    via utils/__init__.py ``validate_region``), a multi-region (``MREP_JURISDICTIONS``, e.g.
    ``us``) or ``global``, which that list also holds: GCPC's launcher reaches the job's region
    as ``{location}-aiplatform.googleapis.com`` (GCPC 2.22.0 container/v1/gcp_launcher/
    job_remote_runner.py ``JobRemoteRunner.__init__``), which they are not; a network that is
    not a full VPC name and a key that is not a full Cloud KMS key name (the forms the
    PipelineJob fields ``network`` and ``encryption_spec.kms_key_name`` take)."""
    from google.cloud.aiplatform.constants import base

    wide = set(getattr(base, "MREP_JURISDICTIONS", ())) | {"global"}
    if region.lower() in wide:
        raise SubmitError(
            f"--region {region} is not a single region: Vertex AI Pipelines and the CustomJobs "
            "it starts run in one region (e.g. us-central1, europe-west4)"
        )
    if region.lower() not in set(base.SUPPORTED_REGIONS):
        raise SubmitError(
            f"--region {region} is not a Vertex AI region (e.g. us-central1, europe-west4; the "
            "regions are listed at https://cloud.google.com/vertex-ai/docs/general/locations)"
        )
    if network and not NETWORK.match(network):
        raise SubmitError(
            f"--network {network!r} is not a full VPC name: projects/PROJECT_NUMBER/global/"
            "networks/NETWORK (peered with Vertex AI by private services access)"
        )
    if key and not KMS_KEY.match(key):
        raise SubmitError(
            f"--encryption-spec-key-name {key!r} is not a Cloud KMS key: projects/P/locations/"
            f"{region}/keyRings/R/cryptoKeys/K"
        )


def submit_vertex(
    params: Mapping[str, Any],
    project: str,
    region: str,
    pipeline_root: str,
    pipeline_file: str | None = None,
    service_account: str | None = None,
    experiment: str | None = None,
    api_endpoint: str | None = None,
    network: str | None = None,
    encryption_spec_key_name: str | None = None,
) -> dict[str, str]:
    """Submit a Vertex AI PipelineJob of the compiled (``--target vertex``) pipeline.

    Checked first like :func:`submit`, and more: one YAML document (Vertex refuses a
    Kubernetes platform spec), a ``gs://`` pipeline root, the region, network and key.
    Application Default Credentials authenticate; an ``api_endpoint`` given as plain
    ``http://`` (a local stand-in) gets none. The run's steps, and a CustomJob it starts, run
    as ``service_account`` (None: Vertex's default, the project's Compute Engine default
    service account), on ``network``, encrypted with ``encryption_spec_key_name``.

    Failures are one line (:func:`_vertex_failure`). When the job was created but joining
    ``experiment`` failed, the run is returned with a ``warning``: it exists, and must not be
    submitted again."""
    pipeline_file = pipeline_file or default_pipeline_file("vertex")
    text, spec = load_pipeline(pipeline_file)
    if len([d for d in yaml.safe_load_all(text) if d is not None]) != 1:
        raise SubmitError(
            f"{pipeline_file} holds a Kubernetes platform spec, which Vertex AI refuses: "
            "compile it with bittune compile --target vertex"
        )
    if not pipeline_root.startswith("gs://"):
        raise SubmitError(
            f"the Vertex AI pipeline root must be a gs:// folder, got {pipeline_root}"
        )
    check_vertex_options(region, network, encryption_spec_key_name)
    params = _checked(params, spec, pipeline_file, "vertex")
    from google.cloud import aiplatform

    options: dict[str, Any] = {"project": project, "location": region}
    if api_endpoint:
        options.update(api_endpoint=api_endpoint, api_transport="rest")
    name = spec["pipelineInfo"]["name"]
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    endpoint = api_endpoint or f"{region}-aiplatform.googleapis.com"
    job = None
    with _sdk_log() as log:
        try:
            anonymous = bool(api_endpoint and api_endpoint.startswith("http://"))
            aiplatform.init(**options, credentials=_credentials(anonymous))
            job = aiplatform.PipelineJob(
                display_name=f"{name}-{stamp}",
                template_path=pipeline_file,
                pipeline_root=pipeline_root,
                parameter_values=dict(params),
                job_id=f"{name}-{stamp}-{uuid.uuid4().hex[:6]}",  # two in one second never collide
                labels={"app": "bittune"},
                encryption_spec_key_name=encryption_spec_key_name or None,
            )
            job.submit(service_account=service_account, network=network or None,
                       experiment=experiment)  # fmt: skip
            warning = ""
        except Exception as exc:  # the API's refusals, the client's own checks, the network
            if job is None or not job._gca_resource.name:  # not created: nothing to keep
                raise SubmitError(_vertex_failure(exc, endpoint, log)) from None
            reason = _vertex_failure(exc, endpoint, log, "the request")
            warning = f"the run was created, but adding it to Vertex AI Experiment {experiment} "
            warning += f"failed: {reason}"
    url = (f"https://console.cloud.google.com/vertex-ai/locations/{region}/pipelines/runs/"
           f"{job.job_id}?project={project}")  # fmt: skip
    run = {"run_id": job.job_id, "name": job.resource_name, "url": url}
    return {**run, "warning": warning} if warning else run


class _Records(list):
    """The SDK's log records of one submission (the SDK logs a failed bucket check with
    its traceback and carries on: pipeline_jobs.py ``PipelineJob.submit``)."""


class _sdk_log:
    """Keep google.cloud.aiplatform's log records of a submission instead of printing them:
    each of its module loggers has a handler of its own (google/cloud/aiplatform/base.py
    ``Logger``), so they are all routed to one list for the duration, then restored."""

    def __enter__(self) -> _Records:
        import logging

        self.records = _Records()
        handler = logging.Handler(logging.WARNING)
        handler.emit = self.records.append
        top = "google.cloud.aiplatform"
        names = [n for n in logging.root.manager.loggerDict if n.startswith(top + ".")]
        self.saved = []
        for name in [top, *names]:
            logger = logging.getLogger(name)
            self.saved.append((logger, logger.handlers[:], logger.propagate, logger.level))
            logger.handlers, logger.propagate = ([handler] if name == top else []), name != top
            logger.setLevel(logging.WARNING if name == top else logging.NOTSET)
        return self.records

    def __exit__(self, *exc: object) -> None:
        for logger, handlers, propagate, level in self.saved:
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)


def _credentials(anonymous: bool):
    """Application Default Credentials with a fresh token, fetched here so that a token
    endpoint that cannot be reached fails at once in one line (the SDK would first spend its
    bucket check's two-minute retry on it). None for a local stand-in."""
    if anonymous:
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    import google.auth
    import google.auth.transport.requests

    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    credentials.refresh(google.auth.transport.requests.Request())
    return credentials


def _vertex_failure(
    exc: BaseException, endpoint: str, log: Sequence[Any] = (), what: str = "the pipeline job"
) -> str:
    """One line for a failed Vertex AI call: the credentials' token endpoint or the API that
    could not be reached (google.auth's TransportError / RefreshError; requests' and
    google-api-core's connection errors), else the API's refusal, else the client's own."""
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    chain = _exception_chain(exc)
    experiment = _experiment_failure(chain, endpoint, log)
    if experiment:
        return experiment
    for error in chain:
        if isinstance(error, auth.DefaultCredentialsError):
            hint = "gcloud auth application-default login; in CI, workload identity federation"
            return f"no Google credentials: {_first_line(str(error))} ({hint})"
        if isinstance(error, auth.TransportError | auth.RefreshError):
            host = _host_in(str(error)) or "Google's token endpoint"
            return f"cannot get an access token: {host} could not be reached ({_reason(error)})"
    for error in chain:
        if isinstance(error, api.ServiceUnavailable | api.RetryError | api.DeadlineExceeded):
            return f"cannot reach the Vertex AI API at {endpoint}: {_reason(error)}"
        if isinstance(error, api.GoogleAPICallError):
            reason = re.sub(r"^[A-Z]+ \S+: ", "", _first_line(error.message))  # less "POST url: "
            return f"Vertex AI refused {what} ({error.code}): {reason}"
    import requests

    if any(isinstance(e, requests.ConnectionError | ConnectionError) for e in chain):
        return f"cannot reach the Vertex AI API at {endpoint}: {_reason(chain[-1])}"
    noted = [r.getMessage() for r in log if r.levelno >= 40]
    extra = f" (after: {_first_line(noted[0])})" if noted else ""
    return f"Vertex AI refused {what}: {_first_line(str(exc))}{extra}"


EXPERIMENT_FAILED = re.compile(r"^Experiment (.+) could not be found or created\.")


def _experiment_failure(chain: Sequence[BaseException], endpoint: str, log: Sequence[Any]) -> str:
    """One line when the SDK could not get or create the Experiment: ``PipelineJob.submit``
    does that before it creates the job (python-aiplatform pipeline_jobs.py ``submit``:
    ``_validate_experiment``, then ``create_pipeline_job``), raising ``RuntimeError("Experiment
    X could not be found or created. PipelineJob not created")`` from the API's error
    (metadata/experiment_resources.py ``_ExperimentLoggable._validate_experiment``); ""
    otherwise."""
    for error in chain:
        match = EXPERIMENT_FAILED.match(str(error)) if isinstance(error, RuntimeError) else None
        if match:
            cause = error.__cause__ or error.__context__
            reason = (_vertex_failure(cause, endpoint, log, "the Experiment") if cause
                      else _first_line(str(error)))  # fmt: skip
            return (f"Vertex AI Experiment {match.group(1)} could not be found or created, so "
                    f"nothing was submitted: {reason}")  # fmt: skip
    return ""


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _first_line(text: str) -> str:
    return (str(text).strip().splitlines() or [""])[0][:300]


def _host_in(text: str) -> str:
    """The host (and port) an error message names: urllib3's ``host='…', port=…`` or a URL."""
    match = re.search(r"host='([^']+)', port=(\d+)", text)
    if match:
        return f"{match.group(1)}:{match.group(2)}"
    match = re.search(r"https?://([^/\s'\"]+)", text)
    return match.group(1) if match else ""


def _reason(error: BaseException) -> str:
    """The innermost cause of a connection failure, e.g. "Connection refused"."""
    text = str(error)
    for pattern in (r"\[Errno -?\d+\] ([^'\")\]]+)", r"(Name or service not known)",
                    r"(timed out)", r"(Connection refused)"):  # fmt: skip
        match = re.search(pattern, text)
        if match:
            return match.group(1).strip()
    return _first_line(text) or type(error).__name__


# ---------------------------------------------------------------------------------------------
# Triggering on new data


def fingerprint(data: str) -> str:
    """A digest of every object under ``data``: names, sizes and generations (local files:
    modification times)."""
    return _digest(_listing(data))


def _listing(data: str) -> list[tuple[str, int, int]]:
    objects = storage.object_versions(data)
    if not objects:
        raise SubmitError(f"no objects under {data}")
    return objects


def _digest(objects: object) -> str:
    return hashlib.sha256(json.dumps(objects).encode()).hexdigest()


def folder_digests(objects: list[tuple[str, int, int]]) -> dict[str, list]:
    """Per folder (an image folder's class, ``train/cat``): [objects, digest], what the
    trigger state keeps to say how the data changed without keeping every name."""
    folders: dict[str, list] = {}
    for name, size, generation in objects:
        folders.setdefault(name.rpartition("/")[0] or ".", []).append((name, size, generation))
    return {f: [len(o), _digest(o)[:16]] for f, o in folders.items()}


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'s' if n != 1 else ''}"


def describe_change(last: Mapping[str, Any] | None, after: dict[str, list]) -> str:
    """How the folders changed since the last submitted run (its state), in a few words."""
    before = (last or {}).get("folders")
    if not before:
        files = sum(entry[0] for entry in after.values())
        first = "changed (the last state has no folder counts)" if last else "first triggered run"
        return f"{first}: {_count(files, 'file')} in {_count(len(after), 'folder')}"
    parts = [f"new {f} ({_count(after[f][0], 'file')})" for f in sorted(set(after) - set(before))]
    parts += [
        f"removed {f} ({_count(before[f][0], 'file')})" for f in sorted(set(before) - set(after))
    ]
    for f in sorted(set(before) & set(after)):
        if before[f][1] == after[f][1]:
            continue
        was, now = before[f][0], after[f][0]
        parts.append(f"{f} {was:,} -> {now:,} files" if was != now else f"{f} files replaced")
    shown = parts[:MAX_CHANGES_SHOWN]
    more = len(parts) - len(shown)
    return "; ".join(shown) + (f"; and {more:,} more folders" if more else "")


def trigger(data: str, state: str, submit_run, now: datetime.datetime | None = None) -> dict:
    """Submit a run (``submit_run(fingerprint)``, the fingerprint becoming the run's
    ``data_fingerprint``) when ``data`` changed since the last successful trigger.

    The state object is claimed and updated with generation preconditions, so of two triggers
    racing on the same change exactly one submits; a claim left by a crashed trigger is taken
    over after 15 minutes. Returns {"action": "submitted" | "unchanged" | "busy", …}; a
    submission says how the data changed since the last one (``change``, per folder).
    """
    if not storage.is_gcs(state):
        raise SubmitError(f"the trigger state must be a gs:// object, got {state}")
    now = now or datetime.datetime.now(datetime.UTC)
    objects = _listing(data)
    current, folders = _digest(objects), folder_digests(objects)
    raw, generation = storage.read_versioned(state)
    previous = json.loads(raw) if raw else {}
    if previous.get("fingerprint") == current:
        if previous.get("status") == "submitted":
            return {"action": "unchanged", "fingerprint": current, "run": previous.get("run")}
        claimed = datetime.datetime.fromisoformat(previous.get("claimed_at", now.isoformat()))
        if now - claimed < STALE_CLAIM:
            return {"action": "busy", "fingerprint": current}
    last_submitted = previous if previous.get("status") == "submitted" else previous.get("last")
    claim = {
        "fingerprint": current,
        "status": "submitting",
        "claim_id": uuid.uuid4().hex,  # makes this trigger's write unique (write_if_generation)
        "claimed_at": now.isoformat(),
        "last": last_submitted,
    }
    try:
        generation = storage.write_if_generation(state, json.dumps(claim).encode(), generation)
    except storage.PreconditionFailed:
        return {"action": "busy", "fingerprint": current}
    try:
        run = submit_run(current)
    except BaseException:
        restore = last_submitted or {}
        storage.write_if_generation(state, json.dumps(restore).encode(), generation)
        raise
    done = {
        "fingerprint": current,
        "status": "submitted",
        "submitted_at": now.isoformat(),
        "run": run,
        "folders": folders,
    }
    storage.write_if_generation(state, json.dumps(done).encode(), generation)
    change = describe_change(last_submitted, folders)
    return {"action": "submitted", "fingerprint": current, "run": run, "change": change}
