"""The one table of bit-finetune's parameters: name, type, default, bounds or choices, help.

Everything else is derived from it: the pipeline's signature and the descriptions the KFP UI
shows (:func:`pipeline_signature`), the checks ``bittune run``/``submit`` make before anything
starts (:func:`pipeline_problems`), the checks every component and config object makes
(:func:`require`), and the ``bittune`` command-line options (:func:`add_option`). No TensorFlow,
no KFP.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from components.bit import hyperrule, sources
from components.bit.errors import BittuneError

REQUIRED = inspect.Parameter.empty
STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
TARGETS = ("kubeflow", "vertex")
# Where a step running on a cluster can read from: Cloud Storage (or its /gcs/ FUSE mount),
# TFDS names, and web URLs for checkpoints. A path on the submitting machine is not.
CLUSTER_READABLE = ("gs://", "/gcs/", "tfds:", "https://", "http://")
ACCELERATOR_CHOICES = ("", "cpu", "gpu", "tpu")


class ParameterError(BittuneError):
    """One or more invalid parameters; the message lists each with the reason."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Param:
    """One parameter: what it is, its default, the values it accepts and a one-line help."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    parse: Callable[[Any], Any] | None = None  # raises BittuneError on a bad value
    pattern: str | None = None  # text parameters: what the value must look like
    target_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    compile_time: bool = False  # fixed in the compiled pipeline (bittune compile options)

    def default_for(self, target: str = "kubeflow") -> Any:
        return self.target_defaults.get(target, self.default)

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` for this parameter, or None."""
        name = self.name
        if self.type is int:
            if isinstance(value, float) and value.is_integer():
                value = int(value)  # KFP hands some integers over as floats
            if not _is_int(value):
                return f"{name} must be a whole number, got {value!r}"
        elif self.type is float:
            if not _is_number(value):
                return f"{name} must be a number, got {value!r}"
        elif not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            return f"{name} must be {_TYPE_WORDS[self.type]}, got {value!r}"
        if self.pattern and not re.fullmatch(self.pattern, value):
            return f"{name} {value!r} does not look right (expected e.g. {self.default})"
        if self.choices and value not in self.choices:
            return f"{name} must be one of {', '.join(self.choices)}, got {value!r}"
        low, high = self.minimum, self.maximum
        if (low is not None and value < low) or (high is not None and value > high):
            if low is not None and high is not None:
                bound = f"between {low:g} and {high:g}"
            else:
                bound = f">= {low:g}" if low is not None else f"<= {high:g}"
            kind = "a number " if self.type is float else ""
            return f"{name} must be {kind}{bound}, got {value!r}"
        if self.parse is not None:
            try:
                self.parse(value)
            except BittuneError as exc:
                return str(exc)
        return None

    def cli_help(self) -> str:
        if self.default is REQUIRED or self.default in ("", None) or self.type is bool:
            return self.help
        return f"{self.help} (default {self.default})"


_TYPE_WORDS = {bool: "true or false", str: "text", dict: "a JSON object", list: "a JSON list"}


# ---------------------------------------------------------------------------------------------
# Parsers for the parameters that are text with a structure


def parse_fractions(text: str) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` -> three fractions, checked by :func:`sources.check_fractions`."""
    try:
        parts = [float(part) for part in str(text).split(",")]
    except ValueError:
        raise ParameterError(
            f"split_fractions must be three numbers like 0.8,0.1,0.1, got {text!r}"
        ) from None
    try:
        return sources.check_fractions(parts)
    except sources.SourceError as exc:
        raise ParameterError(f"split_fractions {text!r}: {exc}") from None


def parse_overrides(text: str | Mapping[str, Any]) -> dict[str, Any]:
    """HyperRule overrides (a JSON object or a mapping), each field checked by the HyperRule's
    own field table."""
    if isinstance(text, Mapping):
        overrides = dict(text)
    else:
        try:
            overrides = json.loads(text or "{}")
        except json.JSONDecodeError as exc:
            raise ParameterError(f"hyperrule_overrides is not valid JSON: {exc}") from None
    if not isinstance(overrides, dict):
        raise ParameterError(f"hyperrule_overrides must be a JSON object, got {text!r}")
    problems = hyperrule.override_problems(overrides)
    if problems:
        raise ParameterError("; ".join(f"hyperrule_overrides: {p}" for p in problems))
    return overrides


# The Kubernetes quantity grammar (k8s.io/apimachinery pkg/api/resource/quantity.go: a signed
# decimal number, then a binary SI suffix, a decimal SI suffix or a decimal exponent).
_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?"
)
_QUANTITY_SCALE = {"n": "1e-9", "u": "1e-6", "m": "1e-3", "k": "1e3", "M": "1e6", "G": "1e9",
                   "T": "1e12", "P": "1e15", "E": "1e18"}  # fmt: skip


def quantity_value(text: str) -> float:
    """The value of a Kubernetes quantity (``500m`` -> 0.5, ``2Ki`` -> 2048, ``1e3`` ->
    1000); a ``ParameterError`` for text outside its grammar or not above zero."""
    match = _QUANTITY.fullmatch(str(text))
    if match is not None:
        number, suffix = float(match["number"]), match["suffix"] or ""
        if suffix.endswith("i"):
            number *= 1024 ** ("KMGTPE".index(suffix[0]) + 1)
        elif suffix[:1] in "eE" and suffix:
            number = float(f"{match['number']}{suffix}")  # past 1e308: inf, refused below
        elif suffix:
            number *= float(_QUANTITY_SCALE[suffix])
        if 0 < number < float("inf"):
            return number
    raise ParameterError(f"{text!r} is not a resource quantity like 8, 500m, 32G or 30Gi")


def _check_quantity(text: str) -> None:
    """A Kubernetes quantity such as ``8``, ``500m``, ``32G`` or ``30Gi``."""
    quantity_value(text)


def _check_node_selector(selector: Mapping[str, Any]) -> None:
    """Label keys to string values: the KFP driver reads it into ``map[string]string``
    (driver/k8s.go ``extendPodSpecPatch``)."""
    bad = [k for k, v in selector.items() if not isinstance(v, str)]
    if bad:
        value = selector[bad[0]]
        raise ParameterError(f"training_node_selector values must be text, {bad[0]!r} is {value!r}")


# Kubernetes core/v1 Toleration (k8s.io/api core/v1 types.go): its fields, their JSON types,
# and the values ``operator`` and ``effect`` take; the pairings the API server refuses are from
# k8s.io/kubernetes pkg/apis/core/validation/validation.go ``validateTolerations``.
_TOLERATION_FIELDS = {"key": str, "operator": str, "value": str, "effect": str,
                      "tolerationSeconds": int}  # fmt: skip
_OPERATORS = ("Exists", "Equal")
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def _toleration_problem(item: Any) -> str | None:
    if not isinstance(item, dict):
        return f"is {item!r}, not a JSON object"
    for field, value in item.items():
        kind = _TOLERATION_FIELDS.get(field)
        if kind is None:
            return f"has an unknown field {field!r} (known: {', '.join(_TOLERATION_FIELDS)})"
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{field} must be {'a whole number' if kind is int else 'text'}, got {value!r}"
    operator = item.get("operator", "Equal")
    if operator not in _OPERATORS:
        return f"operator must be Exists or Equal, got {operator!r}"
    if item.get("effect", "") not in ("", *_EFFECTS):
        return f"effect must be one of {', '.join(_EFFECTS)}, got {item['effect']!r}"
    if operator == "Exists" and item.get("value"):
        return "operator Exists takes no value"
    if operator == "Equal" and not item.get("key"):
        return "operator Equal needs a key"
    if "tolerationSeconds" in item and item.get("effect") != "NoExecute":
        return "tolerationSeconds needs effect NoExecute"
    return None


def _check_tolerations(tolerations: Sequence[Any]) -> None:
    """Each item a Kubernetes Toleration: the KFP driver reads the list into
    ``[]k8score.Toleration`` (driver/k8s.go ``extendPodSpecPatch``)."""
    for number, item in enumerate(tolerations):
        problem = _toleration_problem(item)
        if problem:
            raise ParameterError(f"training_tolerations[{number}] {problem}")


def _check_formats(text: str) -> None:
    from components.bit import exports

    exports.parse_formats(text)


def _check_model(source: str) -> None:
    from components.bit import model_sources

    model_sources.check_name(source)  # no I/O: existence is checked up front, where it can be


# ---------------------------------------------------------------------------------------------
# The table

PARAMETERS: dict[str, Param] = {
    p.name: p
    for p in (
        Param("data_source", str, REQUIRED,
              "Image folder (gs:// or /gcs/...), CSV/JSONL manifest, or tfds:NAME."),
        Param("data_dir", str, "",
              "TFDS data folder, or the data root manifest paths must stay inside."),
        Param("data_fingerprint", str, "",
              "Digest of the data's objects (bittune submit/trigger set it): new data is "
              "analysed again instead of a cache hit."),
        Param("split_fractions", str, "0.8,0.1,0.1",
              "train,validation,test fractions for sources without splits.",
              parse=parse_fractions),
        Param("few_shot", int, 0,
              "Keep k training images per class (BiT's k-shot setting); 0 keeps all.",
              minimum=0),
        Param("max_pixels", int, 100_000_000,
              "Images above this many pixels are rejected as decompression bombs.", minimum=1),
        Param("exclude_list", str, "",
              "Images to leave out (a reviewed label_issues.json, or one URI or key per "
              "line); recorded in the analysis and the model card."),
        Param("near_duplicates", bool, True,
              "Find near-duplicate images (a perceptual hash of a reduced decode) and keep "
              "each group in one split; off: analysis reads headers only."),
        Param("hyperrule_variant", str, "reference",
              "HyperRule variant: reference (BiT's code) or paper.",
              choices=hyperrule.VARIANTS),
        Param("hyperrule_overrides", str, "{}",
              'JSON object overriding HyperRule fields, e.g. {"batch_size": 128}.',
              parse=parse_overrides),
        Param("model", str, "bittune-tiny",
              "Pretrained BiT: BiT-M-R50x1 (.npz), bit-m-r50x1 (TF Hub), an .npz or "
              "SavedModel path, or bittune-tiny.", parse=_check_model),
        Param("preprocess_workers", int, 2, "Parallel TFRecord-writing workers.",
              minimum=1, maximum=1000),
        Param("shard_megabytes", float, 150.0, "Largest TFRecord shard, MiB.",
              minimum=0.01, maximum=10_000),
        Param("shard_examples", int, 2048,
              "Most examples in one TFRecord shard (keeps small images in many shards).",
              minimum=1, maximum=1_000_000),
        Param("seed", int, 0,
              "Seed for shard order, few-shot choice, shuffling and augmentation.", minimum=0),
        Param("random_crop", bool, True, "Random-crop augmentation (off for counting tasks)."),
        Param("random_flip", bool, True,
              "Random-flip augmentation (off for localisation tasks)."),
        Param("mixup", bool, True, "MixUp when the HyperRule turns it on."),
        Param("training_strategy", str, "auto",
              "tf.distribute strategy: auto, default, mirrored, multiworker or tpu.",
              choices=STRATEGIES),
        Param("precision", str, "auto",
              "auto (bfloat16 on TPU and recent GPUs), float32, bfloat16 or float16.",
              choices=PRECISIONS),
        Param("checkpoint_every", int, 100,
              "Steps between training checkpoints (a retried task resumes).", minimum=1),
        Param("checkpoint_root", str, "",
              "gs:// folder (or a mounted volume) for checkpoints, keyed by run; '' uses the "
              "checkpoints artifact."),
        Param("accelerator", str, "gpu",
              "Training accelerator family, fixed when the pipeline is compiled: gpu, tpu or "
              "cpu ('' in bittune run: whatever this machine has).",
              choices=ACCELERATOR_CHOICES, compile_time=True),
        Param("accelerator_type", str, "",
              "Accelerator type, fixed at compile time: a Kubernetes resource name (default "
              "nvidia.com/gpu or google.com/tpu) or a Vertex AI type (default NVIDIA_L4 or "
              "TPU_V5_LITEPOD).", compile_time=True),
        Param("accelerator_count", int, 1,
              "Accelerators per training machine, fixed at compile time (ignored on cpu).",
              minimum=1, maximum=64, compile_time=True),
        Param("training_cpu", str, "6",
              "CPUs for training (fits an n1-standard-8 or g2-standard-8 node).",
              parse=_check_quantity),
        Param("training_memory", str, "24G", "Memory for training.", parse=_check_quantity),
        Param("training_replicas", int, 1,
              "Training machines, fixed at compile time (Vertex AI: a multi-worker CustomJob; "
              "Kubeflow: 1).", minimum=1, maximum=64, compile_time=True),
        Param("training_machine_type", str, "",
              "Vertex AI machine of each training replica, fixed at compile time ('' picks "
              "one that carries the accelerators, e.g. g2-standard-8).",
              pattern=r"^([a-z][a-z0-9]*(-[a-z0-9]+)+)?$", compile_time=True),
        Param("training_node_selector", dict, {},
              'Node selector for training, e.g. {"cloud.google.com/gke-accelerator": '
              '"nvidia-l4"}.', parse=_check_node_selector),
        Param("training_tolerations", list, [],
              'Tolerations for training, e.g. [{"key": "nvidia.com/gpu", "operator": '
              '"Exists", "effect": "NoSchedule"}].', parse=_check_tolerations),
        Param("blessing_threshold", float, 0.0,
              "Minimum test accuracy to push (the model must also beat the majority class "
              "and the current serving version).", minimum=0, maximum=1),
        Param("baseline_model", str, "",
              "Model to beat (a run or SavedModel); '' compares with the newest version "
              "under serving_root."),
        Param("baseline_tolerance", float, 0.01,
              "How much below the baseline's accuracy is still blessed (non-inferiority "
              "margin): the lower bound of the paired accuracy difference's interval must not "
              "be below -tolerance; 0 asks the challenger to be shown better.",
              minimum=0, maximum=1),
        Param("confidence_level", float, 0.95,
              "Confidence level of the gate's intervals (accuracy, paired difference, "
              "per-class recall).", minimum=0.5, maximum=0.999),
        Param("threshold_on_lower_bound", bool, False,
              "blessing_threshold judges the lower bound of accuracy's interval, not accuracy."),
        Param("class_recall_margin", float, 0.05,
              "Refuse when a class's recall dropped by more than this against the baseline, "
              "with confidence.", minimum=0, maximum=1),
        Param("calibration_margin", float, 0.05,
              "How much worse than the baseline's the expected calibration error may be.",
              minimum=0, maximum=1),
        Param("serving_root", str, "",
              "Versioned serving location (gs://...); '' keeps versions in the push artifact."),
        Param("export_formats", str, "",
              "Exports pushed in <version>/exports/ beside the SavedModel, comma-separated: "
              "tflite, tflite-int8, onnx ('' none).", parse=_check_formats),
        Param("export_agreement_float", float, 0.995,
              "Least top-1 agreement with the SavedModel on the test split for a float export "
              "(tflite, onnx) to be pushed.", minimum=0, maximum=1),
        Param("export_agreement_int8", float, 0.98,
              "Least top-1 agreement with the SavedModel on the test split for the int8 "
              "export to be pushed.", minimum=0, maximum=1),
    )
}  # fmt: skip

KUBEFLOW_ONLY = ("training_node_selector", "training_tolerations")
COMPILE_TIME = tuple(n for n, p in PARAMETERS.items() if p.compile_time)


def cpu_count(quantity: str) -> int:
    """Whole CPUs in a Kubernetes quantity (``6`` -> 6, ``500m`` -> 1): TensorFlow's thread
    pools are sized from it, not from the node's cores."""
    return max(1, round(quantity_value(quantity)))


def names(target: str = "kubeflow") -> list[str]:
    """The pipeline's parameters for a target, required first."""
    other = () if target == "kubeflow" else KUBEFLOW_ONLY
    chosen = [n for n in PARAMETERS if n not in other and n not in COMPILE_TIME]
    return sorted(chosen, key=lambda n: PARAMETERS[n].default is not REQUIRED)


def defaults(target: str = "kubeflow") -> dict[str, Any]:
    return {
        n: PARAMETERS[n].default_for(target)
        for n in names(target)
        if PARAMETERS[n].default is not REQUIRED
    }


# ---------------------------------------------------------------------------------------------
# Derived: checks


def problems(values: Mapping[str, Any]) -> list[str]:
    """A problem per invalid value, named as in the table."""
    found = []
    for name, value in values.items():
        problem = PARAMETERS[name].problem(value)
        if problem:
            found.append(problem)
    return found


def require(**values: Any) -> None:
    """Raise :class:`ParameterError` naming every invalid value (config objects, components)."""
    found = problems(values)
    if found:
        raise ParameterError("invalid parameters: " + "; ".join(found))


def require_inputs(inputs: Mapping[str, Any]) -> None:
    """For components: check every input that is a table parameter (pass ``locals()``)."""
    require(**{name: value for name, value in inputs.items() if name in PARAMETERS})


def require_fields(config: Any, skip: Sequence[str] = ()) -> None:
    """For config dataclasses: check every field named after a table parameter (None means
    "not given" and is not checked). A field has the table's name, so no renaming is needed."""
    require(
        **{
            field.name: getattr(config, field.name)
            for field in dataclasses.fields(config)
            if field.name in PARAMETERS
            and field.name not in skip
            and getattr(config, field.name) is not None
        }
    )


def config_from(cls: type, values: Mapping[str, Any], **fields: Any) -> Any:
    """A config dataclass from table values (a component's inputs, a parsed command line):
    each value whose name is one of ``cls``'s fields, then ``fields`` (paths and the like)."""
    known = {field.name for field in dataclasses.fields(cls)}
    return cls(**{**{n: v for n, v in values.items() if n in known}, **fields})


def require_worker(worker_index: Any, num_workers: Any) -> None:
    """A fan-out worker's index and count (not pipeline parameters: the plan sets them)."""
    count = Param("num_workers", int, 1, "", minimum=1, maximum=1000).problem(num_workers)
    index = None
    if count is None:
        bound = int(num_workers) - 1
        index = Param("worker_index", int, 0, "", minimum=0, maximum=bound).problem(worker_index)
    found = [p for p in (count, index) if p]
    if found:
        raise ParameterError("invalid parameters: " + "; ".join(found))


def pipeline_problems(
    values: Mapping[str, Any], *, on_cluster: bool, target: str = "kubeflow"
) -> list[str]:
    """Every problem with a run's parameters (missing ones take their defaults).

    ``on_cluster``: the run executes on a cluster, which cannot read the submitting machine's
    files; otherwise local paths must exist."""
    found = [not_a_run_parameter(n) for n in values if n not in names(target)]
    given = {n: v for n, v in values.items() if n in names(target)}
    merged = {**defaults(target), **given}
    found += problems({n: v for n, v in merged.items() if n != "data_source"})
    data, data_dir = merged.get("data_source"), merged["data_dir"] or None
    paths = {
        "data_source": data,
        "data_dir": data_dir,
        "baseline_model": merged["baseline_model"],
        "serving_root": merged["serving_root"],
        "checkpoint_root": merged["checkpoint_root"],
    }
    if not data:
        found.append("data_source is required")
    elif on_cluster:
        for name, value in paths.items():
            if value and not str(value).startswith(CLUSTER_READABLE):
                found.append(
                    f"{name} {value!r} is a path on this machine, which the cluster cannot "
                    "read; use gs://… (or /gcs/… on Vertex AI)"
                )
            elif value and target == "kubeflow" and str(value).startswith("/gcs/"):
                # argocompiler/container.go (2.14.0-2.17.0): every executor pod mounts an
                # emptyDir of its own at /gcs (gcsScratchLocation), not Cloud Storage.
                found.append(
                    f"{name} {value!r}: on Kubeflow Pipelines /gcs/ is each pod's own scratch "
                    "folder, not a Cloud Storage mount; use gs://…"
                )
    else:
        found.append(_parsed(lambda: sources.check_source(data, data_dir)))
    model = merged["model"]
    if not (on_cluster and str(model).startswith(("gs://", "/gcs/"))):
        from components.bit import model_sources

        found.append(_parsed(lambda: model_sources.check_model(model)))
    return list(dict.fromkeys(p for p in found if p))  # a problem found twice is named once


def not_a_run_parameter(name: str) -> str:
    """Why ``name`` cannot be given to a run."""
    if name in COMPILE_TIME:
        flag = "--" + name.replace("_", "-")
        return (
            f"{name} is fixed when the pipeline is compiled: give {flag} to bittune compile "
            "(or to bittune submit)"
        )
    return f"unknown parameter {name!r}"


def _parsed(check: Callable[[], Any]) -> str | None:
    try:
        check()
    except BittuneError as exc:
        return str(exc)
    return None


def check_pipeline(
    values: Mapping[str, Any], *, on_cluster: bool = False, target: str = "kubeflow"
) -> None:
    """Raise :class:`ParameterError` naming every invalid parameter of a run."""
    found = pipeline_problems(values, on_cluster=on_cluster, target=target)
    if found:
        raise ParameterError("invalid parameters:\n  - " + "\n  - ".join(found))


# ---------------------------------------------------------------------------------------------
# Derived: the pipeline's signature and descriptions, component descriptions, CLI options


def describe(
    summary: str, inputs: Iterable[str], own: Mapping[str, str] | None = None, returns: str = ""
) -> str:
    """A KFP-style docstring (the descriptions the KFP UI shows): ``Args:`` from the table for
    table parameters, from ``own`` for a component's other inputs."""
    own = own or {}
    lines = [summary, "", "Args:"]
    for name in inputs:
        text = own[name] if name in own else PARAMETERS[name].help
        lines.append(f"    {name}: {text}")
    if returns:
        lines += ["", "Returns:", f"    {returns}"]
    return "\n".join(lines) + "\n"


def pipeline_signature(target: str, summary: str):
    """Decorate a ``def pipeline(**params)`` body with the table's parameters as its signature
    (names, types, defaults for ``target``) and docstring, as ``@dsl.pipeline`` reads them."""
    parameters = [
        inspect.Parameter(
            name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=PARAMETERS[name].default_for(target),
            annotation=PARAMETERS[name].type,
        )
        for name in names(target)
    ]
    signature = inspect.Signature(parameters)
    return lambda body: signed(body, signature, describe(summary, names(target)))


def signed(body: Callable[..., Any], signature: inspect.Signature, doc: str) -> Callable[..., Any]:
    """``body(**arguments)`` behind ``signature`` (KFP calls pipelines positionally and reads
    their signature and docstring)."""

    def function(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return body(**bound.arguments)

    function.__name__ = function.__qualname__ = body.__name__
    function.__module__ = body.__module__
    function.__signature__ = signature  # type: ignore[attr-defined]
    function.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    if signature.return_annotation is not inspect.Signature.empty:
        function.__annotations__["return"] = signature.return_annotation
    function.__doc__ = doc
    return function


def add_option(parser, name: str, **overrides: Any) -> None:
    """An argparse option for a table parameter: ``--name-with-dashes`` (the one name it has
    everywhere), its type, default, choices and help. Booleans that default to true become
    ``--no-…``."""
    param = PARAMETERS[name]
    options: dict[str, Any] = {"dest": name, "help": param.cli_help()}
    if param.type is bool:
        flag = f"--no-{name.replace('_', '-')}"
        options.update(action="store_false" if param.default else "store_true")
    else:
        flag = f"--{name.replace('_', '-')}"
        options.update(type=param.type, default=param.default)
        if param.choices:
            options["choices"] = param.choices
    options.update(overrides)
    parser.add_argument(flag, **options)


def values_of(namespace: Any, names_: Sequence[str]) -> dict[str, Any]:
    """The table parameters ``names_`` read from an argparse namespace."""
    return {name: getattr(namespace, name) for name in names_}
