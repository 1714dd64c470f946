"""Scheduling as the Argo workflow the KFP compiler writes runs it: DAG dependencies, skipped
and omitted tasks, failFast, and retries of the executor pod on a simulated clock
(backend/src/v2/compiler/argocompiler/dag.go, container.go; argo-workflows
workflow/controller/operator.go at the version each release installs -- v3.6.7 for KFP 2.14,
v3.7.3 for 2.15 and 2.16, v4.0.5 for 2.17, ``releases.ARGO_VERSIONS``. The rules used here read
the same in all three, except the retry policy a cluster's ``templateDefaults`` sets:
``releases.template_retry_strategy``)."""

from __future__ import annotations

import decimal
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from .cluster import Run
from .metadata import Execution, recount
from .results import AttemptResult, TaskResult

__all__ = ["RetryClock", "run_dag"]

DriveTask = Callable[[Run, Execution, str, dict[str, Any]], None]


def run_dag(run: Run, dag: Execution, drive: DriveTask) -> None:
    """Runs a DAG's tasks in dependency order with ``drive(run, dag, key, task)``.

    argocompiler/dag.go: a task starts when every ``dependentTasks`` entry Succeeded
    (``depends(...)`` builds ``a.Succeeded && b.Succeeded``); otherwise it is OMITTED. After a
    failure no new task starts (Argo ``failFast``). A false condition SKIPS the task (``when:
    condition != false``, recorded by the driver) and a cache hit counts as Succeeded.

    Tasks run one at a time, ready tasks in name order (Argo runs siblings in parallel; a
    loop's ``parallelismLimit`` is only recorded), so a later iteration can hit the cache entry
    of an earlier one, and after a failure the iterations not yet started never start. Because
    of that, a DAG in which a launcher ran is counted once more when its tasks are done: on a
    cluster the sibling drivers have created their executions by the time the last launcher
    finishes (metadata/client.go ``UpdateDAGExecutionsState``)."""
    tasks = dag.dag_tasks()
    for key in topological(tasks):
        task = tasks[key]
        deps = [d for d in task.get("dependentTasks", []) if d in tasks]
        if any(dag.argo.get(d) != "Succeeded" for d in deps):
            run.record_unrun(dag, key, task, "OMITTED")
        elif run.failed:
            run.record_unrun(dag, key, task, "NOT_STARTED")
        else:
            drive(run, dag, key, task)
    if dag.launched and dag.kind != "root":
        recount(dag)


def topological(tasks: Mapping[str, Any]) -> list[str]:
    """Task keys so that every task follows its ``dependentTasks`` (ties by name)."""
    pending = {k: set(tasks[k].get("dependentTasks", [])) & set(tasks) for k in tasks}
    order: list[str] = []
    while pending:
        ready = sorted(k for k, deps in pending.items() if not deps)
        if not ready:
            raise ValueError(f"dependency cycle among tasks {sorted(pending)}")
        for key in ready:
            order.append(key)
            del pending[key]
        for deps in pending.values():
            deps.difference_update(ready)
    return order


def parse_duration_seconds(text: Any) -> int:
    """A protobuf Duration (``"30s"``) as the whole seconds the Argo compiler passes on."""
    if text is None or text == "":
        return 0
    if isinstance(text, int | float):
        return int(text)
    match = re.fullmatch(r"(-?\d+(?:\.\d+)?)s", str(text).strip())
    if not match:
        raise ValueError(f"not a protobuf Duration: {text!r}")
    return int(float(match.group(1)))


def go_float_text(value: float) -> str:
    """Go's ``fmt.Sprintf("%v", float64)`` (strconv 'g', shortest digits): "2" for 2.0, "1.5",
    "1e+06" -- what ``wfapi.AnyStringPtr`` makes of the IR's ``backoffFactor``."""
    if not math.isfinite(value):
        return {math.inf: "+Inf", -math.inf: "-Inf"}.get(value, "NaN")
    if value == 0:
        return "0"
    digits = decimal.Decimal(repr(value)).normalize()
    exponent = digits.adjusted()
    sign, mantissa = ("-" if digits < 0 else ""), "".join(map(str, digits.as_tuple().digits))
    if exponent < -4 or exponent >= 6:  # strconv 'g' with the shortest digits: eprec 6
        tail = f".{mantissa[1:]}" if len(mantissa) > 1 else ""
        return f"{sign}{mantissa[0]}{tail}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    return format(digits, "f")


def argo_factor(value: Any) -> tuple[int, str]:
    """The backoff factor as Argo reads it: the KFP compiler passes the IR's double through
    ``wfapi.AnyStringPtr`` (argocompiler/container.go ``getTaskRetryParametersWithValues``,
    ``getTaskRetryStrategyFromInput``: ``Factor`` is an IntOrString of that text), and Argo's
    ``processNodeRetries`` parses it with util/intstr ``Int32`` (``strconv.Atoi``). Returns
    (factor, "") or (0, the error). An absent factor is 0 (``GetBackoffFactor()``).

    release -> backoff factor -> source
      2.14 (Argo v3.6.7), 2.15, 2.16 (v3.7.3), 2.17 (v4.0.5) -> a whole number is the
          factor (``duration * factor**(n-1)``; 0 or less: ``duration`` every time); any
          fractional one (1.5) errors the retry node at the first retry decision, "value '1.5'
          cannot be resolved to an int", and nothing is retried -> workflow/controller/
          operator.go ``processNodeRetries``; util/intstr/parametrizable.go ``Int``, ``Int32``
    The same in every release: not gated, but wrong in this runner before (it took 1.5)."""
    text = go_float_text(float(value or 0.0))
    if re.fullmatch(r"[+-]?[0-9]+", text) is None:
        return 0, f"value '{text}' cannot be resolved to an int"
    return int(text), ""


class RetryPolicy(NamedTuple):
    """A task's ``retryPolicy`` as Argo applies it (durations in whole seconds):
    argocompiler/container.go ``getTaskRetryParametersWithValues``."""

    max_retries: int
    base: float
    factor: int
    max_duration: float
    factor_error: str = ""

    @classmethod
    def of(cls, policy: Mapping[str, Any]) -> RetryPolicy:
        """The policy of a task's ``retryPolicy`` (none: no retries)."""
        if not policy:
            return cls(0, 0.0, 0, 0.0)
        duration = policy.get("backoffMaxDuration")
        factor, error = argo_factor(policy.get("backoffFactor"))
        return cls(
            max_retries=int(policy.get("maxRetryCount", 0) or 0),
            base=parse_duration_seconds(policy.get("backoffDuration")),
            factor=factor,
            max_duration=parse_duration_seconds(duration) if duration else 0,
            factor_error=error,
        )

    def delay(self, number: int) -> float:
        """The backoff after attempt ``number``: ``duration * factor**(number-1)`` (a factor
        of 0 or less: ``duration``)."""
        if self.factor <= 0:
            return self.base
        return self.base * (self.factor ** (number - 1))


# argo-workflows workflow/controller/operator.go ``processNodeRetries`` (v3.6.7-v4.0.5): the
# node phases each retryPolicy retries (OnTransientError, which reads the message, is left out).
RETRIED_PHASES = {
    "OnFailure": ("Failed",),
    "OnError": ("Error",),
    "Always": ("Failed", "Error"),
}


class RetryClock:
    """Argo's retries of one container task, on a simulated clock.

    ``retryPolicy`` applies to the executor pod only (argocompiler/container.go
    ``addContainerExecutorTemplate``, ``getTaskRetryParametersWithValues``): the driver runs
    once, so every attempt gets the SAME executor input, and a driver failure is never retried.
    The clock counts seconds since the first attempt started: an attempt's real run time plus
    the ``ran_for_s`` of the kill hook that stopped it, a backoff as its configured
    ``duration * factor**(n-1)`` (the real wait is shrunk by ``backoff_scale``)."""

    def __init__(
        self, retry_policy: Mapping[str, Any] | None, defaults: Mapping[str, str] | None = None
    ) -> None:
        """``defaults``: the cluster's ``templateDefaults.retryStrategy``
        (``releases.template_retry_strategy``); its ``retryPolicy`` applies to every step, its
        ``limit`` to a step without ``set_retry`` (which then retries with no backoff)."""
        defaults = defaults or {}
        self.policy = RetryPolicy.of(retry_policy or {})
        if not retry_policy and defaults.get("limit"):
            self.policy = RetryPolicy(int(defaults["limit"]), 0.0, 0, 0.0)
        self.retry_on = defaults.get("retryPolicy") or "OnFailure"  # RetryPolicyActual
        if self.retry_on not in RETRIED_PHASES:
            raise ValueError(f"retryPolicy must be one of {', '.join(RETRIED_PHASES)}")
        self.clock = 0.0

    def finish(self, attempt: AttemptResult, number: int) -> None:
        """Advances the clock past ``attempt``. A RETRIED attempt still running at first start +
        ``backoffMaxDuration`` is stopped there: argo-workflows workflow/controller/
        workflowpod.go ``getDeadline`` sets ``ARGO_DEADLINE`` and argoexec stops the
        container."""
        limit = self.policy.max_duration
        if number > 1 and limit and self.clock + attempt.simulated_s > limit:
            attempt.error = attempt.error or "step exceeded its deadline"
            attempt.error = f"{attempt.error} (ARGO_DEADLINE: first start + {limit:g}s)"
            attempt.phase = "Failed"
            attempt.simulated_s = limit - self.clock
        self.clock += attempt.simulated_s

    def retry_delay(self, attempt: AttemptResult, number: int, result: TaskResult) -> float | None:
        """The backoff before the next attempt, or None when Argo retries no more (its reason,
        if any, goes to ``result.warnings``); the clock moves past the backoff."""
        stop = self.refusal(attempt, number)
        if stop is not None:
            if stop:
                result.warnings.append(stop)
            return None
        delay = self.policy.delay(number)
        self.clock += delay
        return delay

    def refusal(self, attempt: AttemptResult, number: int) -> str | None:
        """Why Argo does not retry a failed attempt ("" when retries are simply used up), or
        None to retry. argo-workflows workflow/controller/operator.go ``processNodeRetries``
        (v3.6.7, v3.7.3, v4.0.5 alike): past first start + ``maxDuration`` -> "Max duration
        limit exceeded"; a factor that is not a whole number -> the retry node errors
        (``argo_factor``); the next start (this attempt's end + ``duration * factor**(n-1)``)
        past it -> "Backoff would exceed max duration limit"; then the retry policy: the KFP
        compiler sets none (argocompiler/container.go ``getTaskRetryStrategyFromInput``), so
        it is the cluster's ``templateDefaults`` one, else ``RetryPolicyActual``
        (pkg/apis/workflow/v1alpha1/workflow_types.go) OnFailure, which retries Failed nodes
        and not Error ones (a deleted pod); ``RETRIED_PHASES``."""
        policy = self.policy
        if not policy.max_retries:
            return ""
        limit = policy.max_duration
        if limit and self.clock > limit:
            return "Max duration limit exceeded"
        if policy.factor_error:
            return f"retry node Error: {policy.factor_error}"
        if limit and self.clock + policy.delay(number) > limit:
            return "Backoff would exceed max duration limit"
        if attempt.phase not in RETRIED_PHASES[self.retry_on]:
            return (
                f"Node not set to be retried after status: {attempt.phase} "
                f"(retry policy {self.retry_on})"
            )
        if number > policy.max_retries:
            return ""
        return None
