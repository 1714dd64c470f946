"""Parameter checks that run before anything expensive, in ``bittune run``/``submit`` and at the
start of every component: one clear message that names every bad parameter. No TensorFlow."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from components.bit import hyperrule, model_sources, sources
from components.bit.errors import BittuneError

VARIANTS = hyperrule.VARIANTS
STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
# Where a step running on a cluster can read from: Cloud Storage (or its /gcs/ FUSE mount),
# TFDS names, and web URLs for checkpoints. A path on the submitting machine is not.
CLUSTER_READABLE = ("gs://", "/gcs/", "tfds:", "https://", "http://")


class ParameterError(BittuneError):
    """One or more invalid parameters; the message lists each with the reason."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> str | None:
    """A problem with an integer parameter, or None."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # KFP hands some integers over as floats
    if not _is_int(value):
        return f"{name} must be a whole number, got {value!r}"
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        return f"{name} must be {bound}, got {value}"
    return None


def check_fraction(name: str, value: Any) -> str | None:
    """A problem with a number that must lie in [0, 1], or None."""
    if not _is_number(value) or not 0 <= value <= 1:
        return f"{name} must be a number between 0 and 1, got {value!r}"
    return None


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str | None:
    if value not in choices:
        return f"{name} must be one of {', '.join(choices)}, got {value!r}"
    return None


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
    """HyperRule overrides (a JSON object or a mapping) with known fields of sensible values."""
    if isinstance(text, Mapping):
        overrides = dict(text)
    else:
        try:
            overrides = json.loads(text or "{}")
        except json.JSONDecodeError as exc:
            raise ParameterError(f"hyperrule_overrides is not valid JSON: {exc}") from None
    if not isinstance(overrides, dict):
        raise ParameterError(f"hyperrule_overrides must be a JSON object, got {text!r}")
    problems = []
    unknown = sorted(set(overrides) - set(hyperrule.OVERRIDABLE))
    if unknown:
        valid = ", ".join(hyperrule.OVERRIDABLE)
        problems.append(f"unknown HyperRule field(s) {', '.join(unknown)} (valid: {valid})")
    for name, value in overrides.items():
        problem = None
        if name in ("resize", "crop", "batch_size", "micro_batch_size", "total_steps"):
            problem = check_int(f"hyperrule_overrides.{name}", value, 1)
        elif name == "warmup_steps":
            problem = check_int(f"hyperrule_overrides.{name}", value, 0)
        elif name == "decay_steps":
            ok = isinstance(value, list) and all(_is_int(v) and v >= 1 for v in value)
            if not ok or value != sorted(set(value)):
                problem = f"hyperrule_overrides.decay_steps must be increasing steps, got {value!r}"
        elif name == "base_lr" and not (_is_number(value) and value > 0):
            problem = f"hyperrule_overrides.base_lr must be a positive number, got {value!r}"
        elif name == "mixup_alpha" and not (_is_number(value) and value >= 0):
            problem = f"hyperrule_overrides.mixup_alpha must be a number >= 0, got {value!r}"
        elif name == "momentum" and not (_is_number(value) and 0 <= value < 1):
            problem = f"hyperrule_overrides.momentum must be in [0, 1), got {value!r}"
        if problem:
            problems.append(problem)
    if not problems and overrides.get("crop", 0) > overrides.get("resize", float("inf")):
        problems.append("hyperrule_overrides: crop is larger than resize")
    if problems:
        raise ParameterError("; ".join(problems))
    return overrides


def _parsed(parse: Callable[[Any], Any], value: Any) -> str | None:
    try:
        parse(value)
    except BittuneError as exc:
        return str(exc)
    return None


def pipeline_problems(params: Mapping[str, Any], *, on_cluster: bool) -> list[str]:
    """Every problem with the bit-finetune pipeline's parameters (missing ones keep defaults).

    ``on_cluster``: the run executes on a KFP cluster, which cannot read the submitting
    machine's files; otherwise local paths must exist."""
    p = dict(params)
    problems = [
        check_int("few_shot", p.get("few_shot", 0), 0),
        check_int("max_pixels", p.get("max_pixels", 1), 1),
        check_int("preprocess_workers", p.get("preprocess_workers", 1), 1, 1000),
        check_int("shard_megabytes", p.get("shard_megabytes", 1), 1, 10_000),
        check_int("seed", p.get("seed", 0), 0),
        check_int("checkpoint_every", p.get("checkpoint_every", 1), 1),
        check_int("accelerator_count", p.get("accelerator_count", 0), 0),
        check_fraction("blessing_threshold", p.get("blessing_threshold", 0.0)),
        check_fraction("baseline_tolerance", p.get("baseline_tolerance", 0.0)),
        check_choice("hyperrule_variant", p.get("hyperrule_variant", "reference"), VARIANTS),
        check_choice("training_strategy", p.get("training_strategy", "auto"), STRATEGIES),
        check_choice("precision", p.get("precision", "auto"), PRECISIONS),
        _parsed(parse_fractions, p.get("split_fractions", "0.8,0.1,0.1")),
        _parsed(parse_overrides, p.get("hyperrule_overrides", "{}")),
    ]
    for name in ("random_crop", "random_flip", "mixup"):
        if not isinstance(p.get(name, True), bool):
            problems.append(f"{name} must be true or false, got {p[name]!r}")
    data, data_dir = p.get("data_source"), p.get("data_dir") or None
    paths = {"data_source": data, "data_dir": data_dir, "baseline_model": p.get("baseline_model")}
    paths["serving_root"] = p.get("serving_root")
    if not data:
        problems.append("data_source is required")
    elif on_cluster:
        for name, value in paths.items():
            if value and not str(value).startswith(CLUSTER_READABLE):
                problems.append(
                    f"{name} {value!r} is a path on this machine, which the cluster cannot "
                    "read; use gs://… (or /gcs/…)"
                )
    else:
        problems.append(_parsed(lambda _: sources.check_source(data, data_dir), data))
    model = p.get("model", model_sources.TINY_MODEL)
    if not (on_cluster and str(model).startswith(("gs://", "/gcs/"))):
        problems.append(_parsed(model_sources.check_model, model))
    return [problem for problem in problems if problem]


def check_pipeline_parameters(params: Mapping[str, Any], *, on_cluster: bool = False) -> None:
    """Raise :class:`ParameterError` naming every invalid parameter."""
    problems = pipeline_problems(params, on_cluster=on_cluster)
    if problems:
        raise ParameterError("invalid parameters:\n  - " + "\n  - ".join(problems))


def require(*problems: str | None) -> None:
    """For components: raise :class:`ParameterError` if any check found a problem."""
    found = [problem for problem in problems if problem]
    if found:
        raise ParameterError("invalid parameters: " + "; ".join(found))
