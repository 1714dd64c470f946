import json
import math

import pytest

from components.bit import hyperrule
from components.bit.hyperrule import HyperRuleError, derive


def reference_lr(step, base=0.003, warmup=100, decays=(200, 300, 400)):
    """The rule as bit-reference.md states it, written independently of the library."""
    if step < warmup:
        return base * step / warmup
    return base * 0.1 ** len([s for s in decays if s < step])


@pytest.mark.parametrize(
    ("area", "expected"),
    [(1, (160, 128)), (96 * 96 - 1, (160, 128)), (96 * 96, (512, 480)), (4000 * 3000, (512, 480))],
)
def test_resolution_by_area(area, expected):
    rule = derive(1000, area)
    assert (rule.resize, rule.crop) == expected


@pytest.mark.parametrize(
    ("examples", "warmup", "decays", "end", "alpha"),
    [
        (1, 100, (200, 300, 400), 500, 0.0),
        (19_999, 100, (200, 300, 400), 500, 0.0),
        (20_000, 500, (3000, 6000, 9000), 10_000, 0.1),
        (499_999, 500, (3000, 6000, 9000), 10_000, 0.1),
        (500_000, 500, (6000, 12000, 18000), 20_000, 0.1),
        (10_000_000, 500, (6000, 12000, 18000), 20_000, 0.1),
    ],
)
def test_schedule_and_mixup_boundaries(examples, warmup, decays, end, alpha):
    rule = derive(examples, 224 * 224)
    assert rule.warmup_steps == warmup
    assert rule.decay_steps == decays
    assert rule.total_steps == end
    assert rule.mixup_alpha == alpha
    assert rule.base_lr == 0.003 and rule.momentum == 0.9 and rule.batch_size == 512


@pytest.mark.parametrize("examples", [1000, 50_000, 600_000])
def test_lr_matches_reference_at_every_boundary(examples):
    rule = derive(examples, 224 * 224)
    steps = {0, 1, rule.warmup_steps - 1, rule.warmup_steps, rule.warmup_steps + 1}
    for boundary in rule.decay_steps:
        steps |= {boundary - 1, boundary, boundary + 1}
    steps |= {rule.total_steps - 1, rule.total_steps}
    for step in sorted(steps):
        expected = reference_lr(step, 0.003, rule.warmup_steps, rule.decay_steps)
        assert rule.learning_rate(step) == pytest.approx(expected, rel=1e-12), step


def test_lr_values_small_schedule():
    rule = derive(100, 32 * 32)
    assert rule.learning_rate(0) == 0.0
    assert rule.learning_rate(50) == pytest.approx(0.0015)
    assert rule.learning_rate(100) == pytest.approx(0.003)
    assert rule.learning_rate(200) == pytest.approx(0.003)  # decays are strict
    assert rule.learning_rate(201) == pytest.approx(0.0003)
    assert rule.learning_rate(301) == pytest.approx(0.00003)
    # Every decay is x0.1: the widely copied notebook's skipped lr*0.01 never appears.
    assert rule.learning_rate(401) == pytest.approx(0.000003)
    assert rule.learning_rate(500) == pytest.approx(0.000003)


def test_default_batch_is_kept_by_accumulation():
    rule = derive(1000, 224 * 224)
    assert (rule.batch_size, rule.micro_batch_size, rule.accumulation_steps) == (512, 64, 8)
    rule = derive(1000, 224 * 224, overrides={"micro_batch_size": 16})
    assert (rule.batch_size, rule.accumulation_steps, rule.total_steps) == (512, 32, 500)
    assert rule.base_lr == 0.003


def test_micro_batch_must_divide_batch():
    with pytest.raises(HyperRuleError, match="must divide batch_size 512 \\(try 64\\)"):
        derive(1000, 224 * 224, overrides={"micro_batch_size": 100})


@pytest.mark.parametrize(
    ("batch", "lr", "warmup", "decays", "end"),
    [
        (128, 0.00075, 400, (800, 1200, 1600), 2000),
        (384, 0.00225, 133, (267, 400, 533), 667),
        (4096, 0.024, 13, (25, 38, 50), 63),
    ],
)
def test_linear_rule_for_other_batch_sizes(batch, lr, warmup, decays, end):
    rule = derive(1000, 224 * 224, overrides={"batch_size": batch})
    assert rule.base_lr == pytest.approx(lr)
    # Boundaries and the end are all scaled (the notebook scaled only the end: a mistake).
    assert (rule.warmup_steps, rule.decay_steps, rule.total_steps) == (warmup, decays, end)
    assert rule.micro_batch_size * rule.accumulation_steps == batch
    assert rule.sources["base_lr"]["source"] == "rule"
    assert "linear rule" in rule.sources["base_lr"]["reason"]
    assert rule.sources["batch_size"]["source"] == "override"


def test_paper_variant():
    small = derive(1000, 224 * 224, variant="paper")
    assert small.decay_steps == (150, 300, 450) and small.total_steps == 500
    assert (small.resize, small.crop) == (448, 384)
    assert derive(50_000, 224 * 224, variant="paper").decay_steps == (3000, 6000, 9000)
    big = derive(1000, 224 * 224, variant="paper", model="BiT-M-R152x4")
    assert (big.resize, big.crop) == (512, 480)
    tiny = derive(1000, 32 * 32, variant="paper")
    assert (tiny.resize, tiny.crop) == (160, 128)


def test_overrides_record_source_and_reason():
    rule = derive(1000, 224 * 224, overrides={"crop": 384, "mixup_alpha": 0.2, "resize": None})
    assert rule.crop == 384 and rule.mixup_alpha == 0.2 and rule.resize == 512
    assert rule.sources["crop"] == {"source": "override", "reason": "set by user (rule: 480)"}
    assert rule.sources["resize"]["source"] == "rule"
    for field in hyperrule.OVERRIDABLE:
        assert rule.sources[field]["reason"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"crop": 600}, "crop 600 is larger than resize 512"),
        ({"decay_steps": [300, 200]}, "decay_steps must increase strictly"),
        ({"total_steps": 400}, "last decay step 400 must be below total_steps 400"),
        ({"warmup_steps": 250}, "first decay step 200 comes before the end of warm-up 250"),
        ({"momentum": 1.0}, "momentum must be in"),
        ({"base_lr": 0.0}, "base_lr must be positive"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"batch_size": 12.5}, "batch_size must be a whole number"),
        ({"learning_rate": 1}, "unknown HyperRule field"),
    ],
)
def test_invalid_overrides_are_rejected(overrides, message):
    with pytest.raises(HyperRuleError, match=message):
        derive(1000, 224 * 224, overrides=overrides)


def test_invalid_inputs():
    with pytest.raises(HyperRuleError, match="examples must be >= 1"):
        derive(0, 100)
    with pytest.raises(HyperRuleError, match="image area"):
        derive(10, 0)
    with pytest.raises(HyperRuleError, match="unknown variant"):
        derive(10, 10, variant="fast")


def test_json_round_trip_and_required_fields(tmp_path):
    rule = derive(30_000, 300 * 400, overrides={"batch_size": 256})
    data = json.loads(rule.to_json())
    for field in hyperrule.REQUIRED_FIELDS:
        assert field in data
    assert hyperrule.from_dict(data) == rule
    path = tmp_path / "h.json"
    path.write_text(rule.to_json())
    assert hyperrule.load(str(path)).learning_rate(1234) == rule.learning_rate(1234)
    del data["total_steps"], data["crop"]
    with pytest.raises(HyperRuleError, match="missing field\\(s\\): crop, total_steps"):
        hyperrule.from_dict(data)
    path.write_text("{not json")
    with pytest.raises(HyperRuleError, match="not valid JSON"):
        hyperrule.load(str(path))


def test_phases_cover_the_schedule():
    rule = derive(1000, 224 * 224)
    phases = rule.phases()
    assert [p[:3] for p in phases] == [
        (0, 99, "warm-up"),
        (100, 200, "base"),
        (201, 300, "decay 1"),
        (301, 400, "decay 2"),
        (401, 499, "decay 3"),
    ]
    assert math.isclose(phases[-1][3], 0.003 * 0.001)
    table = hyperrule.format_table(rule)
    assert "decay 2     301-400           3e-05" in table


def test_a_hand_edited_value_is_marked_as_an_override():
    rule = derive(3680, 375 * 500)
    data = rule.to_dict()
    data["total_steps"] = 800  # edited in hyperrule.json; its sources entry still says "rule"
    edited = hyperrule.from_dict(data)
    assert edited.total_steps == 800
    assert edited.sources["total_steps"] == {
        "source": "override",
        "reason": "edited by hand (rule: 500)",
    }
    assert edited.sources["crop"]["source"] == "rule"  # untouched values keep theirs
    assert hyperrule.from_dict(rule.to_dict()) == rule  # nothing edited, nothing marked


def test_more_overrides_on_an_existing_rule():
    rule = derive(3680, 375 * 500, overrides={"crop": 448})
    longer = hyperrule.with_overrides(rule, {"total_steps": 900, "decay_steps": [600, 700, 800]})
    assert (longer.total_steps, longer.crop) == (900, 448)  # the earlier override stays
    assert longer.sources["total_steps"]["source"] == "override"
    smaller = hyperrule.with_overrides(rule, {"batch_size": 128})
    assert smaller.total_steps == 2000 and smaller.base_lr == pytest.approx(0.00075)
    with pytest.raises(HyperRuleError, match="crop 600 is larger than resize 512"):
        hyperrule.with_overrides(rule, {"crop": 600})
