"""BiT-HyperRule: fine-tuning hyperparameters derived from the dataset itself.

Pure Python, no TensorFlow. Two variants:

* ``reference`` (default) — the rule as BiT's public reference code has it: resize 160/crop 128
  for images under 96*96 px in area, else 512/480; schedules of 500 / 10k / 20k steps with the
  decays of the reference table; MixUp alpha 0.1 from 20,000 examples.
* ``paper`` — the rule as the BiT paper states it: decays at 30/60/90% of the schedule and
  resize 448/crop 384 for large images on every model except R152x4 (which keeps 512/480).

Steps are counted in optimizer updates of the global batch. The HyperRule's batch is 512; it is
kept on small memory by gradient accumulation (``micro_batch_size`` x ``accumulation_steps``).
A different global batch B uses the linear rule: lr x B/512, every step boundary x 512/B.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from components.bit.errors import BittuneError

RULE_BATCH_SIZE = 512
BASE_LR = 0.003
MOMENTUM = 0.9
SMALL_IMAGE_AREA = 96 * 96
MIXUP_MIN_EXAMPLES = 20_000
MIXUP_ALPHA = 0.1
DEFAULT_MICRO_BATCH_SIZE = 64
VARIANTS = ("reference", "paper")

# (examples below this bound) -> (warm-up end, decay steps, end) at batch 512.
_REFERENCE_SCHEDULES: tuple[tuple[float, tuple[int, tuple[int, ...], int]], ...] = (
    (20_000, (100, (200, 300, 400), 500)),
    (500_000, (500, (3_000, 6_000, 9_000), 10_000)),
    (math.inf, (500, (6_000, 12_000, 18_000), 20_000)),
)
_PAPER_DECAY_FRACTIONS = (0.3, 0.6, 0.9)


@dataclasses.dataclass(frozen=True)
class Field:
    """A HyperRule field users may override: its type, smallest value and one-line help."""

    type: type  # int, float, or list (of whole steps)
    minimum: float
    help: str
    exclusive: bool = False  # the value must be above the minimum, not equal to it
    below: float | None = None  # the value must be below this

    def problem(self, name: str, value: Any) -> str | None:
        if self.type is list:
            ok = isinstance(value, list | tuple) and all(_whole(v) and v >= 1 for v in value)
            if not ok or list(value) != sorted(set(value)):
                return f"{name} must increase strictly (whole steps >= 1), got {value!r}"
            return None
        if self.type is int and not _whole(value):
            return f"{name} must be a whole number, got {value!r}"
        if self.type is float and not (
            isinstance(value, int | float) and not isinstance(value, bool)
        ):
            return f"{name} must be a number, got {value!r}"
        too_low = value < self.minimum or (self.exclusive and value == self.minimum)
        if self.below is not None and (too_low or value >= self.below):
            return f"{name} must be in [{self.minimum:g}, {self.below:g}), got {value}"
        if too_low:
            bound = "positive" if self.exclusive else f">= {self.minimum:g}"
            return f"{name} must be {bound}, got {value}"
        return None


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


FIELDS: dict[str, Field] = {
    "resize": Field(int, 1, "resize side, px"),
    "crop": Field(int, 1, "random-crop side, px"),
    "batch_size": Field(
        int, 1, "global batch; other than 512 applies the linear rule to lr and steps"
    ),
    "micro_batch_size": Field(
        int, 1, "per-step batch; accumulation steps = batch / micro-batch (default 64)"
    ),
    "base_lr": Field(float, 0, "learning rate after warm-up", exclusive=True),
    "warmup_steps": Field(int, 0, "linear warm-up length, steps"),
    "decay_steps": Field(list, 1, "steps after which lr x 0.1, e.g. 200,300,400"),
    "total_steps": Field(int, 1, "training length, steps"),
    "mixup_alpha": Field(float, 0, "MixUp Beta(alpha, alpha); 0 turns it off"),
    "momentum": Field(float, 0, "SGD momentum", below=1),
}
OVERRIDABLE = tuple(FIELDS)


def override_problems(overrides: Mapping[str, Any]) -> list[str]:
    """Every unknown field and bad value among ``overrides`` (checked as :func:`validate`
    checks a whole rule), plus a crop larger than the resize."""
    unknown = sorted(set(overrides) - set(FIELDS))
    found = (
        [f"unknown HyperRule field(s) {', '.join(unknown)}; valid: {', '.join(OVERRIDABLE)}"]
        if unknown
        else []
    )
    for name, value in overrides.items():
        problem = FIELDS[name].problem(name, value) if name in FIELDS else None
        if problem:
            found.append(problem)
    if not found and overrides.get("crop", 0) > overrides.get("resize", math.inf):
        found.append(f"crop {overrides['crop']} is larger than resize {overrides['resize']}")
    return found


REQUIRED_FIELDS = (*OVERRIDABLE, "accumulation_steps", "variant")


class HyperRuleError(BittuneError):
    """An input or override the HyperRule cannot accept."""


@dataclasses.dataclass(frozen=True)
class HyperRule:
    """Fine-tuning hyperparameters, with where each value came from and why."""

    resize: int
    crop: int
    batch_size: int
    micro_batch_size: int
    accumulation_steps: int
    base_lr: float
    warmup_steps: int
    decay_steps: tuple[int, ...]
    total_steps: int
    mixup_alpha: float
    momentum: float
    variant: str
    examples: int
    image_area: float
    model: str | None
    sources: Mapping[str, Mapping[str, str]]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["decay_steps"] = list(self.decay_steps)
        data["sources"] = {k: dict(v) for k, v in self.sources.items()}
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def learning_rate(self, step: int) -> float:
        """The learning rate applied at optimizer step ``step`` (0-based)."""
        return learning_rate(step, self.base_lr, self.warmup_steps, self.decay_steps)

    def phases(self) -> list[tuple[int, int, str, float]]:
        """(first step, last step, name, lr at the first step) for each phase of the schedule."""
        bounds = [0, self.warmup_steps, *self.decay_steps, self.total_steps]
        names = ["warm-up", "base"] + [f"decay {i + 1}" for i in range(len(self.decay_steps))]
        out = []
        for i, name in enumerate(names):
            first, last = bounds[i], bounds[i + 1]
            # Decays are strict: the phase after boundary s starts at s + 1.
            start = first if i <= 1 else first + 1
            end = last - 1 if i == 0 else last
            if i == len(names) - 1:
                end = self.total_steps - 1
            if end >= start:
                out.append((start, end, name, self.learning_rate(start)))
        return out


def learning_rate(
    step: int | float, base_lr: float, warmup_steps: int, decay_steps: Sequence[int]
) -> float:
    """The BiT schedule: linear warm-up to ``base_lr``, then x0.1 after each decay step.

    ``lr = base_lr * step / warmup_steps`` for ``step < warmup_steps``; afterwards
    ``base_lr * 0.1 ** k`` with ``k`` the number of decay steps strictly below ``step``.
    """
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    return decayed_rate(base_lr, sum(1 for boundary in decay_steps if boundary < step))


def decayed_rate(base_lr: float, passed: int) -> float:
    """The learning rate after ``passed`` decay steps: ``base_lr * 0.1 ** passed``."""
    return base_lr * 0.1**passed


def resolution(image_area: float, variant: str = "reference", model: str | None = None):
    """(resize, crop, reason) for images of the given (median) area in pixels."""
    if image_area < SMALL_IMAGE_AREA:
        return 160, 128, f"image area {image_area:g} < 96*96: small-image resolution"
    if variant == "paper" and not _is_r152x4(model):
        return 448, 384, f"image area {image_area:g} >= 96*96: paper resolution for non-R152x4"
    return 512, 480, f"image area {image_area:g} >= 96*96: large-image resolution"


def schedule(examples: int, variant: str = "reference"):
    """(warm-up end, decay steps, end, reason) at the HyperRule's batch of 512."""
    warmup, decays, end = next(rule for bound, rule in _REFERENCE_SCHEDULES if examples < bound)
    size = "small" if end == 500 else "medium" if end == 10_000 else "large"
    reason = f"{examples:,} training examples: {size} schedule of {end:,} steps"
    if variant == "paper":
        decays = tuple(round(end * f) for f in _PAPER_DECAY_FRACTIONS)
        reason += ", decays at 30/60/90% (paper)"
    return warmup, decays, end, reason


def mixup_alpha(examples: int) -> tuple[float, str]:
    if examples >= MIXUP_MIN_EXAMPLES:
        return MIXUP_ALPHA, f"{examples:,} >= 20,000 training examples: MixUp on"
    return 0.0, f"{examples:,} < 20,000 training examples: no MixUp"


def _is_r152x4(model: str | None) -> bool:
    return model is not None and "r152x4" in model.lower().replace("-", "").replace("_", "")


def _scale_step(step: int, batch_size: int) -> int:
    """A step boundary at batch 512 moved to batch ``batch_size`` (round half up, at least 1)."""
    return max(1, math.floor(step * RULE_BATCH_SIZE / batch_size + 0.5))


def _scaled(examples: int, variant: str, batch_size: int):
    """The schedule and base learning rate at ``batch_size`` (the linear rule when it is not
    512): (warm-up, decays, end, schedule reason, base lr, lr reason)."""
    warmup, decays, end, reason = schedule(examples, variant)
    if batch_size == RULE_BATCH_SIZE:
        return warmup, decays, end, reason, BASE_LR, "BiT base learning rate at batch 512"
    return (
        _scale_step(warmup, batch_size),
        tuple(_scale_step(s, batch_size) for s in decays),
        _scale_step(end, batch_size),
        reason + f", steps x 512/{batch_size} (linear rule)",
        BASE_LR * batch_size / RULE_BATCH_SIZE,
        f"0.003 x {batch_size}/512 (linear rule)",
    )


def derive(
    examples: int,
    image_area: float,
    *,
    variant: str = "reference",
    model: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> HyperRule:
    """Apply the BiT-HyperRule to a dataset of ``examples`` training images of ``image_area`` px.

    ``overrides`` may set any of :data:`OVERRIDABLE`; ``batch_size`` is an input of the rule
    (linear scaling), every other override replaces the rule's value as given.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    problems = override_problems(overrides)
    if problems:
        raise HyperRuleError("; ".join(problems))
    if variant not in VARIANTS:
        raise HyperRuleError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    _require_int("examples", examples, minimum=1)
    if not isinstance(image_area, int | float) or not image_area > 0:
        raise HyperRuleError(f"image area must be a positive number of pixels, got {image_area!r}")

    sources: dict[str, dict[str, str]] = {}

    def rule(name: str, value: Any, reason: str) -> Any:
        if name in overrides:
            sources[name] = {"source": "override", "reason": f"set by user (rule: {value})"}
            return overrides[name]
        sources[name] = {"source": "rule", "reason": reason}
        return value

    resize_rule, crop_rule, res_reason = resolution(image_area, variant, model)
    resize = rule("resize", resize_rule, res_reason)
    crop = rule("crop", crop_rule, res_reason)

    batch_size = rule("batch_size", RULE_BATCH_SIZE, "the HyperRule's batch")
    default_micro = min(DEFAULT_MICRO_BATCH_SIZE, batch_size)
    micro = rule(
        "micro_batch_size",
        default_micro,
        f"default micro-batch; the batch of {batch_size} is reached by gradient accumulation",
    )
    accumulation = _accumulation(batch_size, micro)
    reason = f"batch {batch_size} / micro-batch {micro}"
    sources["accumulation_steps"] = {"source": "rule", "reason": reason}

    warmup, decays, end, sched_reason, lr, lr_reason = _scaled(examples, variant, batch_size)
    base_lr = rule("base_lr", lr, lr_reason)
    warmup = rule("warmup_steps", warmup, sched_reason)
    decays = rule("decay_steps", decays, sched_reason)
    end = rule("total_steps", end, sched_reason)
    alpha, alpha_reason = mixup_alpha(examples)
    alpha = rule("mixup_alpha", alpha, alpha_reason)
    momentum = rule("momentum", MOMENTUM, "SGD momentum of the BiT recipe")

    hyper = HyperRule(
        resize=resize,
        crop=crop,
        batch_size=batch_size,
        micro_batch_size=micro,
        accumulation_steps=accumulation,
        base_lr=float(base_lr),
        warmup_steps=warmup,
        decay_steps=tuple(decays),
        total_steps=end,
        mixup_alpha=float(alpha),
        momentum=float(momentum),
        variant=variant,
        examples=examples,
        image_area=float(image_area),
        model=model,
        sources=sources,
    )
    validate(hyper)
    return hyper


def validate(hyper: HyperRule) -> None:
    """Raise :class:`HyperRuleError` when the values do not form a usable schedule."""
    for name, field in FIELDS.items():
        problem = field.problem(name, getattr(hyper, name))
        if problem:
            raise HyperRuleError(problem)
    if hyper.crop > hyper.resize:
        raise HyperRuleError(f"crop {hyper.crop} is larger than resize {hyper.resize}")
    if hyper.warmup_steps >= hyper.total_steps:
        raise HyperRuleError(
            f"warmup_steps {hyper.warmup_steps} must be below total_steps {hyper.total_steps}"
        )
    if hyper.decay_steps and hyper.decay_steps[-1] >= hyper.total_steps:
        raise HyperRuleError(
            f"last decay step {hyper.decay_steps[-1]} must be below total_steps {hyper.total_steps}"
        )
    if hyper.decay_steps and hyper.decay_steps[0] < hyper.warmup_steps:
        raise HyperRuleError(
            f"first decay step {hyper.decay_steps[0]} comes before the end of warm-up "
            f"{hyper.warmup_steps}"
        )


def from_dict(data: Mapping[str, Any]) -> HyperRule:
    """Read a HyperRule back from its JSON form, naming any missing or invalid field. Values
    edited by hand after the rule wrote them are marked as overrides (their ``sources`` entry
    would otherwise still say ``rule``)."""
    if not isinstance(data, Mapping):
        raise HyperRuleError("a HyperRule must be a JSON object")
    missing = [f for f in REQUIRED_FIELDS if f not in data]
    if missing:
        raise HyperRuleError(f"HyperRule is missing field(s): {', '.join(missing)}")
    fields = {f.name for f in dataclasses.fields(HyperRule)}
    values = {k: v for k, v in data.items() if k in fields}
    values.setdefault("examples", 0)
    values.setdefault("image_area", 0.0)
    values.setdefault("model", None)
    values.setdefault("sources", {})
    if isinstance(values["decay_steps"], list):
        values["decay_steps"] = tuple(values["decay_steps"])
    hyper = HyperRule(**values)
    validate(hyper)
    if hyper.micro_batch_size * hyper.accumulation_steps != hyper.batch_size:
        raise HyperRuleError(
            f"micro_batch_size {hyper.micro_batch_size} x accumulation_steps "
            f"{hyper.accumulation_steps} != batch_size {hyper.batch_size}"
        )
    return _with_edits_marked(hyper)


def _overridden(hyper: HyperRule) -> dict[str, Any]:
    return {
        name: getattr(hyper, name)
        for name in OVERRIDABLE
        if hyper.sources.get(name, {}).get("source") == "override"
    }


def _rule_for(hyper: HyperRule, overrides: Mapping[str, Any]) -> HyperRule | None:
    """The rule re-derived from the inputs ``hyper`` records, or None without them."""
    if hyper.examples < 1 or not hyper.image_area > 0:
        return None
    return derive(
        hyper.examples,
        hyper.image_area,
        variant=hyper.variant,
        model=hyper.model,
        overrides={k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
    )


def _with_edits_marked(hyper: HyperRule) -> HyperRule:
    try:
        rule = _rule_for(hyper, _overridden(hyper))
    except HyperRuleError:
        rule = None
    if rule is None:
        return hyper
    edited = {
        name: getattr(rule, name)
        for name in OVERRIDABLE
        if name not in _overridden(hyper) and getattr(rule, name) != getattr(hyper, name)
    }
    if not edited:
        return hyper
    sources = {k: dict(v) for k, v in hyper.sources.items()}
    for name, rule_value in edited.items():
        shown = list(rule_value) if isinstance(rule_value, tuple) else rule_value
        sources[name] = {"source": "override", "reason": f"edited by hand (rule: {shown})"}
    return dataclasses.replace(hyper, sources=sources)


def with_overrides(hyper: HyperRule, overrides: Mapping[str, Any]) -> HyperRule:
    """``hyper`` with more overrides applied, as if they had been given to :func:`derive`
    (``batch_size`` rescales the steps the rule chose, nothing the user set)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if not overrides:
        return hyper
    problems = override_problems(overrides)
    if problems:
        raise HyperRuleError("; ".join(problems))
    rule = _rule_for(hyper, {**_overridden(hyper), **overrides})
    if rule is not None:
        return rule
    values = {k: tuple(v) if k == "decay_steps" else v for k, v in overrides.items()}
    sources = {k: dict(v) for k, v in hyper.sources.items()}
    for name in values:
        sources[name] = {"source": "override", "reason": "set by user"}
    changed = dataclasses.replace(hyper, **values, sources=sources)
    accumulation = _accumulation(changed.batch_size, changed.micro_batch_size)
    changed = dataclasses.replace(changed, accumulation_steps=accumulation)
    validate(changed)
    return changed


def load(path: str) -> HyperRule:
    """Read a ``hyperrule.json`` file (local or gs://)."""
    from components.bit import storage

    try:
        data = json.loads(storage.read_text(path))
    except (FileNotFoundError, storage.StorageError):
        raise HyperRuleError(f"HyperRule file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise HyperRuleError(f"HyperRule file {path} is not valid JSON: {exc}") from None
    except HyperRuleError as exc:
        raise HyperRuleError(f"{path}: {exc}") from None
    return from_dict(data)


def format_table(hyper: HyperRule) -> str:
    """A readable summary: each value with its source, then the learning rate of each phase."""
    rows = [
        ("resize", hyper.resize),
        ("crop", hyper.crop),
        ("batch_size", hyper.batch_size),
        ("micro_batch_size", hyper.micro_batch_size),
        ("accumulation_steps", hyper.accumulation_steps),
        ("base_lr", f"{hyper.base_lr:g}"),
        ("warmup_steps", hyper.warmup_steps),
        ("decay_steps", ", ".join(str(s) for s in hyper.decay_steps)),
        ("total_steps", hyper.total_steps),
        ("mixup_alpha", f"{hyper.mixup_alpha:g}"),
        ("momentum", f"{hyper.momentum:g}"),
    ]
    lines = [
        f"BiT-HyperRule ({hyper.variant}) for {hyper.examples:,} examples, "
        f"image area {hyper.image_area:g} px",
        "",
        f"{'field':<20}{'value':<22}{'source':<10}reason",
    ]
    for name, value in rows:
        src = hyper.sources.get(name, {})
        lines.append(f"{name:<20}{value!s:<22}{src.get('source', ''):<10}{src.get('reason', '')}")
    lines += ["", f"{'phase':<12}{'steps':<18}lr"]
    for start, end, name, lr in hyper.phases():
        lr_text = f"0 -> {hyper.base_lr:g} (linear)" if name == "warm-up" else f"{lr:.6g}"
        lines.append(f"{name:<12}{f'{start}-{end}':<18}{lr_text}")
    return "\n".join(lines)


def _require_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise HyperRuleError(f"{name} must be a whole number, got {value!r}")
    if value < minimum:
        raise HyperRuleError(f"{name} must be >= {minimum}, got {value}")


def _accumulation(batch_size: int, micro: int) -> int:
    """Micro-batches per optimizer step; the micro-batch must divide the batch."""
    if micro > batch_size or batch_size % micro:
        raise HyperRuleError(
            f"micro_batch_size {micro} must divide batch_size {batch_size} "
            f"(try {_divisor_below(batch_size, micro)})"
        )
    return batch_size // micro


def _divisor_below(total: int, wanted: int) -> int:
    return max(d for d in range(1, min(total, wanted) + 1) if total % d == 0)
