"""A stand-in for Google Cloud Pipeline Components 2.22.0's CustomJob launcher, for tests.

The real package cannot be installed beside bittune's stack (it needs google-cloud-aiplatform
< 2), so this follows its source rule by rule (kubeflow/pipelines, components/google-cloud/
google_cloud_pipeline_components/container/v1/):
  * arguments --type, --project, --location, --payload, --gcp_resources
    (gcp_launcher/utils/parser_util.py ``parse_default_args``);
  * a non-empty ``gcp_resources`` file names the job to poll instead of creating one
    (gcp_launcher/job_remote_runner.py ``check_if_job_exists``: the URI after
    ``https://<endpoint>/v1/``);
  * otherwise the payload is parsed, its empty fields removed (``json_util.
    recursive_remove_empty``) and the job created, and ``gcp_resources`` written with one
    CustomJob resource (``create_job``; custom_job/remote_runner.py ``create_custom_job``);
  * the job is polled (``JobRemoteRunner.poll_job``): SUCCEEDED returns (exit 0); a state in
    ``_JOB_ERROR_STATES`` (FAILED, CANCELLED, PAUSED) raises ValueError when the job's
    ``error.code`` is in ``_JOB_USER_ERROR_CODES`` (uncaught: a traceback, exit 1), else
    RuntimeError, which custom_job/remote_runner.py ``create_custom_job`` turns into exit 13
    (utils/error_util.py ``exit_with_internal_error``); every other state, EXPIRED included,
    is polled again.
The endpoint is ``<location>-aiplatform.googleapis.com`` as in ``JobRemoteRunner.__init__``,
unless BITTUNE_VERTEX_API_ENDPOINT points at a local stand-in of the API (REST, anonymous)."""

import argparse
import json
import os
import sys
import time

# gcp_launcher/job_remote_runner.py, GCPC 2.22.0
ERROR_STATES = ("JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_PAUSED")
USER_ERROR_CODES = (3, 5, 7, 6, 9, 11, 12)  # INVALID_ARGUMENT ... UNIMPLEMENTED (google.rpc.Code)


def _client(location: str):
    from google.api_core.client_options import ClientOptions
    from google.cloud import aiplatform_v1

    public = f"{location}-aiplatform.googleapis.com"
    endpoint = os.environ.get("BITTUNE_VERTEX_API_ENDPOINT") or public
    options = {"client_options": ClientOptions(api_endpoint=endpoint)}
    if endpoint.startswith("http://"):
        from google.auth.credentials import AnonymousCredentials

        options.update(credentials=AnonymousCredentials(), transport="rest")
    return aiplatform_v1.JobServiceClient(**options), f"https://{public}/v1/"


def _without_empty(value):
    """One pass of gcp_launcher/utils/json_util.py ``__remove_empty`` (which
    ``recursive_remove_empty`` repeats until nothing changes): empty values inside objects go;
    primitives inside lists stay."""
    if isinstance(value, list):
        kept = [_without_empty(v) for v in value]
        return [v for v, raw in zip(kept, value, strict=True)
                if isinstance(raw, int | float | str | bool) or v]  # fmt: skip
    if isinstance(value, dict):
        return {k: _without_empty(v) for k, v in value.items() if v}
    return value


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    for name in ("--type", "--project", "--location", "--payload", "--gcp_resources"):
        parser.add_argument(name, required=True)
    args = parser.parse_args(argv)
    client, prefix = _client(args.location)
    name = None
    if os.path.exists(args.gcp_resources) and os.path.getsize(args.gcp_resources):
        with open(args.gcp_resources) as f:
            name = json.load(f)["resources"][0]["resourceUri"].removeprefix(prefix)
        print(f"CustomJob name already exists: {name}. Continue polling the status", flush=True)
    else:
        parent = f"projects/{args.project}/locations/{args.location}"
        payload = json.loads(args.payload, strict=False)
        while _without_empty(payload) != payload:  # until no field is left empty
            payload = _without_empty(payload)
        name = client.create_custom_job(parent=parent, custom_job=payload).name
        with open(args.gcp_resources, "w") as f:
            json.dump({"resources": [{"resourceType": "CustomJob",
                                      "resourceUri": prefix + name}]}, f)  # fmt: skip
        print(f"created {name}", flush=True)
    while True:
        job = client.get_custom_job(name=name)
        state = job.state.name
        if state == "JOB_STATE_SUCCEEDED":
            return 0
        if state in ERROR_STATES:
            if job.error.code in USER_ERROR_CODES:
                raise ValueError(f"Job failed with value error in error state: {state}.")
            print(f"Job failed with error state: {state}.", file=sys.stderr, flush=True)
            return 13
        print(f"Job {name} is in a non-final state {state}.", flush=True)
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
