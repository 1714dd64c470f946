"""Run the bit-finetune pipeline on this machine with kfp.local, readably.

kfp.local prints everything to stdout: every executor input, every step's whole log, colour
codes. While it runs, :class:`StepConsole` stands in for stdout: each step's log goes to its own
file under ``OUTPUT/logs/<run>/``, and the console shows one line as a step starts and one as it
ends (its duration and the figure that matters), training's progress, and the final summary.
``verbose`` shows every line too; TensorFlow's start-up noise is kept out of the console either
way, and colour codes appear only on a terminal.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import datetime
import glob
import io
import json
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from components.bit import dataset as ds
from components.bit import params, storage
from components.bit.errors import ERROR_PREFIX, RESULT_PREFIX, BittuneError
from components.bit.machines import TrainingMachine
from components.bit.tf_env import NOISE
from components.image import IMAGE_REGISTRY, IMAGE_TAG, retarget_images

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([^']+)'")
_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
_PROGRESS = re.compile(r"^\s*step (\d+)/(\d+) ")


@dataclasses.dataclass
class _Step:
    """A running step: its name, log file, start time and headline figure."""

    name: str
    log: Any
    started: float
    result: str = ""


class StepConsole(io.TextIOBase):
    """A stand-in for stdout while kfp.local runs: per-step log files, one console line per
    step start and end, training progress, and the failed step's one-line error. Steps of a
    loop run in parallel threads; a line belongs to the step its thread runs."""

    def __init__(self, out, log_dir: str, verbose: bool = False) -> None:
        self.out, self.log_dir, self.verbose = out, log_dir, verbose
        self.tty = out.isatty()
        os.makedirs(log_dir, exist_ok=True)
        self.run_log = open(os.path.join(log_dir, "run.log"), "a", encoding="utf-8")  # noqa: SIM115
        self.steps: dict[int, _Step] = {}
        self.count = 0
        self.error: str | None = None
        self.failed_log: str | None = None
        self.last_progress = 0.0
        self._pending: dict[int, str] = {}
        self._lock = threading.RLock()

    # io.TextIOBase
    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            thread = threading.get_ident()
            pending = self._pending.get(thread, "") + text
            *lines, self._pending[thread] = pending.split("\n")
            for line in lines:
                self._line(_ANSI.sub("", line), thread)
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def close(self) -> None:
        with self._lock:
            for thread, rest in self._pending.items():
                if rest:
                    self._line(_ANSI.sub("", rest), thread)
            self._pending.clear()
            for thread in list(self.steps):
                self._close(thread)
            self.run_log.close()

    # what a line means
    def _line(self, line: str, thread: int) -> None:
        started, ended = _START.search(line), _END.search(line)
        if started:
            self._open(started[1], thread)
        step = self.steps.get(thread)
        (step.log if step else self.run_log).write(line + "\n")
        if self.verbose and not NOISE.match(line):
            self._say(line)
        if ended:
            self._end(ended[2], thread)
            return
        if step is None:
            return
        text = line.strip()
        if text.startswith(RESULT_PREFIX):
            step.result = text[len(RESULT_PREFIX) :]
        elif ERROR_PREFIX in text:
            self.error = text[text.index(ERROR_PREFIX) + len(ERROR_PREFIX) :]
        elif _PROGRESS.match(text) and not self.verbose:
            self._progress(step.name, text)

    def _open(self, name: str, thread: int) -> None:
        self._close(thread)
        self.count += 1
        path = os.path.join(self.log_dir, f"{self.count:02d}-{name}.log")
        log = open(path, "w", encoding="utf-8")  # noqa: SIM115
        self.steps[thread] = _Step(name, log, time.monotonic())
        self._say(f"{self._clock()} {name:<24} started")

    def _end(self, status: str, thread: int) -> None:
        step = self.steps[thread]
        took = time.monotonic() - step.started
        if status == "SUCCESS":
            figure = f": {step.result}" if step.result else ""
            self._say(f"{self._clock()} {step.name:<24} done in {took:.1f} s{figure}")
        else:
            self.failed_log = step.log.name
            self._say(f"{self._clock()} {step.name:<24} FAILED after {took:.1f} s")
        self._close(thread)

    def _close(self, thread: int) -> None:
        step = self.steps.pop(thread, None)
        if step is not None:
            step.log.close()

    def _progress(self, name: str, text: str) -> None:
        """Training progress: rewritten in place on a terminal, every 30 s when piped."""
        step, end = (int(v) for v in _PROGRESS.match(text).groups())
        line = f"{self._clock()} {name:<24} {text}"
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            self.out.write("\r" + line[:width])
            self.out.flush()
        elif time.monotonic() - self.last_progress >= 30 or step == end:
            self.last_progress = time.monotonic()
            self._say(line)

    def _say(self, line: str) -> None:
        prefix = "\r\x1b[K" if self.tty else ""
        self.out.write(prefix + line + "\n")
        self.out.flush()

    @staticmethod
    def _clock() -> str:
        return datetime.datetime.now().strftime("%H:%M:%S")


# ---------------------------------------------------------------------------------------------
# Running


def run_locally(
    data_source: str | None,
    pipeline_root: str,
    runner: str = "subprocess",
    image_registry: str = IMAGE_REGISTRY,
    image_tag: str = IMAGE_TAG,
    verbose: bool = False,
    accelerator: str = "",
    **parameters: Any,
) -> dict[str, Any]:
    """Run the whole pipeline under ``pipeline_root``; return where its outputs are.

    Without ``data_source``, the embedded default: scikit-learn's digits with the demo schedule.
    ``runner="docker"`` runs every step in the CPU image ``{image_registry}/bittune-cpu:{tag}``
    (training included: local Docker has no GPU), with the local paths it reads mounted.
    ``accelerator`` (gpu, tpu or cpu) makes training insist on one; '' takes what there is."""
    storage.check_writable(pipeline_root)
    note = None
    if not data_source:
        data_source, parameters, note = _embedded_default(pipeline_root, runner, parameters)
    machine = TrainingMachine(accelerator)
    params.check_pipeline({"data_source": data_source, **parameters}, on_cluster=False)
    if note:
        print(note)
    from kfp import local

    from pipelines.bit_finetune import build

    pipeline = build("local", machine)
    os.makedirs(pipeline_root, exist_ok=True)
    images: contextlib.AbstractContextManager = contextlib.nullcontext()
    if runner == "docker":
        chosen = docker_runner(pipeline_root, data_source, parameters)
        images = _images_retargeted(pipeline, image_registry, image_tag)
    elif runner == "subprocess":
        chosen = local.SubprocessRunner(use_venv=False)
    else:
        raise BittuneError(f"unknown runner {runner!r} (use subprocess or docker)")
    local.init(runner=chosen, pipeline_root=pipeline_root, raise_on_error=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    console = StepConsole(sys.stdout, os.path.join(pipeline_root, "logs", stamp), verbose)
    # kfp.local's parallel loop steps patch and restore builtins.print in overlapping threads,
    # which can leave it indenting every later print: put the real one back afterwards.
    real_print = builtins.print
    try:
        with (
            images,
            _without_retries(pipeline),
            contextlib.redirect_stdout(console),
            contextlib.redirect_stderr(console),
        ):
            pipeline(data_source=data_source, **parameters)
    except RuntimeError as exc:
        builtins.print = real_print
        console.close()
        failed = _ANSI.sub("", str(exc).splitlines()[0]).rstrip(".")
        where = f"; its log: {console.failed_log}" if console.failed_log else ""
        raise BittuneError(f"{console.error or f'pipeline failed: {failed}'}{where}") from None
    builtins.print = real_print
    console.close()
    return {**latest_outputs(pipeline_root), "logs": console.log_dir}


def _embedded_default(pipeline_root: str, runner: str, parameters: dict[str, Any]):
    """The digits (written once), the demo schedule as HyperRule overrides, and a note."""
    from components.bit.datasets import DIGITS_DEMO_OVERRIDES, materialize_digits

    # Docker runs read it from inside the pipeline root, which the containers can reach.
    inside = os.path.join(pipeline_root, "inputs", "digits") if runner == "docker" else None
    source = materialize_digits(inside)
    given = parameters.get("hyperrule_overrides") or "{}"
    with contextlib.suppress(params.ParameterError):  # checked, with every other problem, next
        given = json.dumps({**DIGITS_DEMO_OVERRIDES, **params.parse_overrides(given)})
    note = (
        f"no --data given: the embedded default dataset (scikit-learn digits) at {source};\n"
        f"model {parameters.get('model', 'bittune-tiny')}; demo schedule "
        f"{json.dumps(DIGITS_DEMO_OVERRIDES)}"
    )
    return source, {**parameters, "hyperrule_overrides": given}, note


# The image's own non-root user (docker/Dockerfile).
IMAGE_UID = 1000


def docker_runner(pipeline_root: str, data_source: str, parameters: dict[str, Any]):
    """kfp.local's DockerRunner for this run: the local paths the steps read are bind-mounted
    read-only at the same path (kfp mounts the pipeline root itself); the serving root is
    mounted writable. Containers never run as root: they run as the calling user, or, when
    that is root, as the image's own user, who is given the folders the steps write."""
    import docker
    from docker.types import Mount
    from kfp import local

    try:
        docker.from_env().ping()
    except docker.errors.DockerException as exc:
        raise BittuneError(
            f"--runner docker needs a running Docker daemon ({exc}); start dockerd, or use "
            "--runner subprocess"
        ) from None
    root = os.path.abspath(pipeline_root)
    writable = [root]
    serving = parameters.get("serving_root") or ""
    if serving and "://" not in serving and not _inside(serving, root):
        os.makedirs(serving, exist_ok=True)
        writable.append(os.path.abspath(serving))
    read_only = {
        os.path.abspath(path)
        for path in (
            data_source,
            parameters.get("data_dir"),
            parameters.get("baseline_model"),
            parameters.get("model"),
        )
        if path and "://" not in path and os.path.exists(path)
    }
    mounts = [Mount(target=p, source=p, type="bind", read_only=True) for p in sorted(read_only)]
    mounts += [Mount(target=p, source=p, type="bind") for p in writable[1:]]
    if os.getuid() == 0:
        for path in [*writable, *read_only]:
            blocked = _closed_ancestor(path)
            if blocked:
                raise BittuneError(
                    f"--runner docker: the containers run as the image's user (uid {IMAGE_UID}),"
                    f" who cannot reach {path} ({blocked} is closed to other users); use "
                    "folders outside it, e.g. --output /tmp/bittune-runs"
                )
        user = f"{IMAGE_UID}:{IMAGE_UID}"
        for path in writable:
            os.chown(path, IMAGE_UID, IMAGE_UID)
    else:
        user = f"{os.getuid()}:{os.getgid()}"
    return local.DockerRunner(
        mounts=mounts, user=user, environment={"HOME": "/tmp", "MPLCONFIGDIR": "/tmp"}
    )


def _closed_ancestor(path: str) -> str | None:
    """The first folder above ``path`` that other users cannot enter, if any."""
    folder = os.path.dirname(os.path.abspath(path))
    while True:
        if not os.stat(folder).st_mode & 0o001:
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([os.path.abspath(path), root]) == root


@contextlib.contextmanager
def _without_retries(pipeline) -> Iterator[None]:
    """Local runs fail fast: the steps' retries (with minutes of backoff) are there for
    preempted cluster nodes, and a step that failed here would only fail again."""
    spec = pipeline.pipeline_spec
    dags = [spec.root.dag] + [c.dag for c in spec.components.values() if c.HasField("dag")]
    saved = []
    for dag in dags:
        for task in dag.tasks.values():
            if task.HasField("retry_policy"):
                saved.append((task, type(task.retry_policy)()))
                saved[-1][1].CopyFrom(task.retry_policy)
                task.ClearField("retry_policy")
    try:
        yield
    finally:
        for task, policy in saved:
            task.retry_policy.CopyFrom(policy)


@contextlib.contextmanager
def _images_retargeted(pipeline, registry: str, tag: str) -> Iterator[None]:
    """Run the compiled pipeline's steps in the CPU image of ``registry``/``tag`` for a while."""
    executors = pipeline.pipeline_spec.deployment_spec["executors"]
    containers = [executors[name]["container"] for name in executors]
    before = [container["image"] for container in containers]
    retarget_images(containers, registry, tag, accelerated=False)
    try:
        yield
    finally:
        for container, image in zip(containers, before, strict=True):
            container["image"] = image


# ---------------------------------------------------------------------------------------------
# Where the outputs are


def latest_outputs(pipeline_root: str) -> dict[str, Any]:
    """Paths and figures of the newest run under a local pipeline root."""
    runs = sorted(glob.glob(os.path.join(pipeline_root, "bit-finetune-*")), key=os.path.getmtime)
    if not runs:
        raise BittuneError(f"no pipeline run found under {pipeline_root}")
    run = runs[-1]
    dataset = os.path.join(run, "gather-dataset", "dataset")
    manifest = ds.read_manifest(dataset)
    model = os.path.join(run, "train-model", "trained_model")
    training = _json_or_empty(model, "training.json")
    analysis = os.path.join(run, "analyze-dataset", "analysis")
    drift = _json_or_empty(analysis, ds.STATS_FILE).get("drift", {})
    return {
        "drift": drift.get("summary") or drift.get("note"),
        "run": run,
        "analysis": os.path.join(run, "analyze-dataset", "analysis"),
        "report_html": os.path.join(run, "analyze-dataset", "analysis", ds.REPORT_HTML),
        "dataset": dataset,
        "totals": manifest.totals,
        "examples": manifest.examples("train"),
        "model": model,
        "validation_accuracy": (training.get("validation") or [{}])[-1].get("accuracy"),
        **_evaluation(run),
    }


def _json_or_empty(*parts: str) -> dict[str, Any]:
    """A JSON file's content, or {} when the step that writes it did not run."""
    path = os.path.join(*parts)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _evaluation(run: str) -> dict[str, Any]:
    folder = os.path.join(run, "evaluate-model", "evaluation")
    result = _json_or_empty(folder, "metrics.json")
    if not result:
        return {}
    pushed = _json_or_empty(run, "push-model", "executor_output.json")
    return {
        "evaluation": folder,
        "evaluation_report": os.path.join(folder, "report.html"),
        "test_split": result["split"],
        "test_accuracy": result["metrics"]["accuracy"],
        "without_leaked": result["metrics"].get("without_leaked", {}),
        "served_data": result["metrics"].get("served_data", {}),
        "comparisons": result.get("comparisons", []),  # paired with the served model
        "label_issues": result.get("label_issue_count", 0),
        "blessed": result["blessed"],
        "reason": result["reason"],
        "pushed": pushed.get("parameterValues", {}).get("Output"),
    }


def _leak_line(without: dict[str, Any]) -> list[str]:
    if not without.get("leaked"):
        return []
    return [
        f"  without its {without['leaked']:,} examples that have a near-duplicate in training: "
        f"accuracy {without['accuracy']:.4f} ({without['examples']:,} examples)"
    ]


def _served_line(served: dict[str, Any]) -> list[str]:
    if not served.get("examples"):
        return [f"  {served['note']}"] if served.get("note") else []
    return [
        f"  on the served model's test data: accuracy {served['accuracy']:.4f}, the served "
        f"model {served['served_accuracy']:.4f} ({served['examples']:,} examples)"
    ]


def summary_lines(outputs: dict[str, Any]) -> list[str]:
    """What a finished run says: accounting, accuracy and verdict, and where everything is."""
    totals = outputs["totals"]
    verdict = "BLESSED" if outputs.get("blessed") else "NOT BLESSED"
    return [
        f"pipeline finished: {totals['inputs']:,} inputs = {totals['written']:,} written + "
        f"{totals['rejected']:,} rejected; {outputs['examples']:,} training examples",
        f"{outputs['test_split']} accuracy {outputs['test_accuracy']:.4f} — {verdict}: "
        f"{outputs['reason']}",
        *([f"  {outputs['drift']}"] if outputs.get("drift") else []),
        *_served_line(outputs.get("served_data") or {}),
        *[
            f"  paired with the served model {c['sentence']}"
            for c in outputs.get("comparisons", [])
        ],
        *_leak_line(outputs.get("without_leaked") or {}),
        *(
            [
                f"  likely label errors: {outputs['label_issues']:,} (label_issues.json beside "
                "the evaluation report; --exclude-list leaves them out next run)"
            ]
            if outputs.get("label_issues")
            else []
        ),
        f"  analysis report:   {outputs['report_html']}",
        f"  dataset:           {outputs['dataset']}",
        f"  model:             {outputs['model']}",
        f"  evaluation report: {outputs['evaluation_report']}",
        f"  pushed version:    {outputs['pushed'] or '(not pushed)'}",
        f"  step logs:         {outputs['logs']}",
    ]
