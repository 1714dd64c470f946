"""The driver, API server and Argo rules that differ between the KFP releases the runner
reproduces (``Cluster.backend_version``), one function each. Every docstring has the table the
rule was read from: release -> behaviour -> file and function at that tag (kubeflow/pipelines
``backend/src/...`` at tags 2.14.0, 2.15.0, 2.16.0, 2.17.0; Argo at the version each release's
manifests ship, ``ARGO_VERSIONS``).

Gated elsewhere, with their own tables: the artifact ``dsl.OneOf`` (resolve.py
``_producer_subtask``), DAG state propagation (launcher.py / metadata.py ``update_dag_states``)
and the executor output file (driver.py ``_provision_outputs``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from .cluster import Cluster

__all__ = [
    "ARGO_VERSIONS",
    "driver_resolves_container_args",
    "job_time_placeholder",
    "loop_record_name",
    "null_k8s_parameter_fails",
    "template_retry_strategy",
    "validates_literals",
]

# manifests/kustomize/third-party/argo/base/workflow-controller-deployment-patch.yaml at each
# tag: the workflow-controller and argoexec images a release installs (go.mod pins the Argo
# library the compiler builds with; 2.16.0's is v3.7.8, but it installs v3.7.3).
ARGO_VERSIONS = {"2.14": "v3.6.7", "2.15": "v3.7.3", "2.16": "v3.7.3", "2.17": "v4.0.5"}

JOB_TIME_PLACEHOLDERS = (
    "{{$.pipeline_job_create_time_utc}}",
    "{{$.pipeline_job_schedule_time_utc}}",
)


def loop_record_name(cluster: Cluster, key: str, task: Mapping[str, Any]) -> str:
    """The name a ParallelFor's executions (the loop DAG and its iterations) are recorded under
    in ML Metadata -- the name a consumer of its collected outputs must find. Consumers look up
    the producer's task KEY (``<key>_<dag id>``; driver/resolve.go ``resolveUpstreamArtifacts``,
    ``resolveUpstreamParameters``; metadata/client.go ``GetExecutionsInDAG`` keys the DAG's
    executions by ``TaskName()``).

    release -> recorded as -> source (kubeflow/pipelines at the tag)
      2.14.0, 2.15.0 -> the display name (``taskInfo.name``); a named loop's consumers fail with
          ``cannot find producer task "for-loop-1_<id>"`` -> compiler/argocompiler/dag.go
          ``iterationItemTask`` gives the loop's DAG driver no task name (and the iterations
          "iteration-item", which ``dagDriverTask`` drops); driver/dag.go ``DAG`` then uses
          ``opts.Task.GetTaskInfo().GetName()``
      2.16.0, 2.17.0 -> the task key -> dag.go ``iterationItemTask(..., parallelForTaskKey)``
          passes the key to both drivers (PR 12808, issue 11964)

    An unnamed loop's display name is its key, so it resolves on every release."""
    if cluster.at_least("2.16"):
        return key
    return task.get("taskInfo", {}).get("name", "") or key


def null_k8s_parameter_fails(cluster: Cluster) -> bool:
    """Whether a ``nodeSelectorJson`` / ``tolerationJson`` bound to a null parameter (an optional
    pipeline input without a default) fails the container driver instead of being skipped.

    release -> null node selector / toleration -> source
      2.14.0 -> the driver fails: "failed to resolve node selector: failed to resolve k8s
          parameter: the resolved input parameter is null: X", "failed to resolve toleration:
          the resolved input parameter is null: X" -> driver/k8s.go ``extendPodSpecPatch``
          returns every ``resolveK8sJsonParameter`` / ``resolveInputParameter`` error
      2.15.0, 2.16.0, 2.17.0 -> skipped (no selector; that toleration left out) -> k8s.go
          ``extendPodSpecPatch``: ``errors.Is(err, ErrResolvedParameterNull)`` ->
          ``skipNodeSelector`` / ``continue``"""
    return not cluster.at_least("2.15")


def job_time_placeholder(cluster: Cluster, constant: str, created: dt.datetime) -> str:
    """The value of a ``{{$.pipeline_job_create_time_utc}}`` or
    ``{{$.pipeline_job_schedule_time_utc}}`` runtime constant (the whole constant) in a one-off
    run created at ``created``.

    release -> value -> source
      2.14.0, 2.15.0 -> the placeholder text itself -> driver/resolve.go
          ``resolveInputParameter`` has no case for either (``default: v = val``)
      2.16.0 -> "" for both: recognised, never filled -> resolve.go ``resolveInputParameter``
          reads ``opts.PipelineJobCreateTimeUTC`` / ``PipelineJobScheduleTimeUTC``, but
          cmd/driver/main.go ``drive`` builds ``driver.Options`` without them and the compiler
          passes no flag for them
      2.17.0 -> create: the workflow's creation time, RFC 3339 (``2026-01-09T12:34:56Z``);
          schedule: a recurring run's ``workflowEpoch`` label, else the create time ->
          compiler/argocompiler/container.go passes ``--pipeline_job_create_time_utc``
          ``{{workflow.creationTimestamp}}`` (argo.go ``runCreationTimeUTC``; Argo formats it
          with time.RFC3339); cmd/driver/main.go ``resolvePipelineJobTimes``,
          ``resolvePipelineJobScheduleTimeUTCFromWorkflow``"""
    if not cluster.at_least("2.16"):
        return constant
    if not cluster.at_least("2.17"):
        return ""
    return created.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def validates_literals(cluster: Cluster) -> bool:
    """Whether a parameter's ``literals`` (its allowed values in the IR; the kfp 2.17 SDK's
    compiler writes none, so the tests add them) are enforced, by the API server for a run's
    parameters and by the driver for every task input.

    release -> literals -> source
      2.14.0, 2.15.0 -> not checked: any value of the type passes -> nothing in backend/src
          reads ``GetLiterals()``
      2.16.0, 2.17.0 -> checked: "input parameter \"x\" value ... does not match any of the
          allowed literal values" (API server: invalid input; driver: "validating parameter
          \"x\": ...") -> common/util/validate_literal.go ``ValidateLiteralParameter``, called
          from apiserver/template/v2_template.go ``validatePipelineJobInputs`` and
          driver/resolve.go ``resolveInputs``"""
    return cluster.at_least("2.16")


def driver_resolves_container_args(cluster: Cluster) -> bool:
    """Whether the container DRIVER resolves ``{{$.inputs.parameters['x']}}`` in the command
    and args -- without component defaults, so an optional input the task does not pass fails
    it -- before the launcher's own substitution.

    release -> who resolves input-parameter placeholders in command/args -> source
      2.14.0, 2.15.0, 2.16.0 -> the launcher only, after adding component defaults ->
          component/launcher_v2.go ``executeV2``: ``addDefaultParams``, then
          ``compileCmdAndArgs`` (``getPlaceholders``)
      2.17.0 -> the driver first ("failed to resolve container args: failed to resolve input
          parameters: parameter \"x\" not found in executor input"), then the launcher as
          before -> driver/driver.go ``initPodSpecPatch`` -> driver/util.go
          ``resolveContainerArgs``, ``resolveSinglePlaceholder``"""
    return cluster.at_least("2.17")


# manifests/kustomize/third-party/argo/base/workflow-controller-configmap-patch.yaml at 2.17.0
# (``workflowDefaults``; commit 2dea6fd468, PR 13485), included by every env overlay through
# third-party/argo/installs/*.
STOCK_2_17_TEMPLATE_RETRY = {"limit": "2", "retryPolicy": "OnError"}


def template_retry_strategy(cluster: Cluster) -> dict[str, str]:
    """The ``templateDefaults.retryStrategy`` Argo merges into every template of the run: the
    cluster's own setting (``Cluster.template_retry``, what its admin put in the
    workflow-controller config map) or else what the release's manifests install. ``{}``: none.

    Argo merges the defaults field by field, the template's own fields winning
    (argo-workflows v4.0.5 workflow/controller/operator.go ``mergedTemplateDefaultsInto``:
    ``strategicpatch.StrategicMergePatch(defaults, template)``, called from
    ``executeTemplate``). The KFP compiler writes a task's ``limit`` and ``backoff`` but never
    a ``retryPolicy`` (argocompiler/container.go ``getTaskRetryStrategyFromInput``, 2.14.0-2.17.0),
    so the default's ``retryPolicy`` is what a ``set_retry`` step gets, and a step without
    ``set_retry`` gets the whole default. ``processNodeRetries`` then retries Failed nodes only
    under OnFailure (``RetryPolicyActual``'s default) or Always, Error nodes (a deleted pod)
    only under OnError or Always.

    release -> stock templateDefaults.retryStrategy -> source
      2.14.0, 2.15.0, 2.16.0 -> none: OnFailure -> manifests/kustomize/third-party/argo/base/
          workflow-controller-configmap-patch.yaml has no ``workflowDefaults``
      2.17.0 -> ``{limit: '2', retryPolicy: OnError}`` (and a 1 h ``ttlStrategy``): a step that
          exits non-zero is NOT retried, a deleted pod is -> the same file at 2.17.0; Argo
          v4.0.5 operator.go ``mergedTemplateDefaultsInto``, ``processNodeRetries``
    Not modelled: the defaults also land on the DAG and driver templates, so an Error that
    exhausts a step's retries can re-run the step's wrapper DAG with a fresh retry budget."""
    if cluster.template_retry is not None:
        return dict(cluster.template_retry)
    return dict(STOCK_2_17_TEMPLATE_RETRY) if cluster.at_least("2.17") else {}
