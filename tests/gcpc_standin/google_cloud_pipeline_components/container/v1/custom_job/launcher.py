"""A stand-in for Google Cloud Pipeline Components 2.22.0's CustomJob launcher, for tests.

The real package cannot be installed beside bittune's stack (it needs google-cloud-aiplatform
< 2), so this follows its source rule by rule (kubeflow/pipelines, components/google-cloud/
google_cloud_pipeline_components/container/v1/):
  * arguments --type, --project, --location, --payload, --gcp_resources
    (gcp_launcher/utils/parser_util.py ``parse_default_args``);
  * a non-empty ``gcp_resources`` file names the job to poll instead of creating one
    (gcp_launcher/job_remote_runner.py ``check_if_job_exists``: the URI after
    ``https://<endpoint>/v1/``);
  * otherwise the payload is parsed and the job created, and ``gcp_resources`` written with
    one CustomJob resource (``create_job``; custom_job/remote_runner.py ``create_custom_job``);
  * the job is polled until it ends: SUCCEEDED exits 0; FAILED, CANCELLED, PAUSED or EXPIRED
    raise, which exits 1 (``poll_job``; utils/error_util.py ``exit_with_internal_error``).
The endpoint is ``<location>-aiplatform.googleapis.com`` as in ``JobRemoteRunner.__init__``,
unless BITTUNE_VERTEX_API_ENDPOINT points at a local stand-in of the API (REST, anonymous)."""

import argparse
import json
import os
import sys
import time


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
        name = client.create_custom_job(parent=parent, custom_job=json.loads(args.payload)).name
        with open(args.gcp_resources, "w") as f:
            json.dump({"resources": [{"resourceType": "CustomJob",
                                      "resourceUri": prefix + name}]}, f)  # fmt: skip
        print(f"created {name}", flush=True)
    while True:
        state = client.get_custom_job(name=name).state.name
        if state == "JOB_STATE_SUCCEEDED":
            return 0
        if state in ("JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_PAUSED",
                     "JOB_STATE_EXPIRED"):  # fmt: skip
            print(f"Job failed with error state: {state}", file=sys.stderr, flush=True)
            return 1
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
