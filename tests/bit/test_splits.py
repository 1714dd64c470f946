"""bittune's own splits: stratified by class in a stable hash order, groups whole."""

import collections
import random

from components.bit import splits

FRACTIONS = (0.8, 0.1, 0.1)


def _units(names, label="a", size=1):
    return [splits.Unit(tuple(range(n * size, (n + 1) * size)), label, name)
            for n, name in enumerate(names)]  # fmt: skip


def _shares(units, fractions=FRACTIONS):
    chosen = splits.assign(units, fractions)
    return collections.Counter(chosen.values()), chosen


def test_each_class_gets_its_fractions_within_half_an_image():
    rng = random.Random(1)
    for total in (1, 2, 7, 10, 33, 350, 1001):
        names = [f"img-{rng.random()}" for _ in range(total)]
        shares, _ = _shares(_units(names))
        for split, fraction in zip(splits.SPLITS, FRACTIONS, strict=True):
            # the cuts are rounded, so each cumulative share is within half an image
            assert abs(shares[split] - fraction * total) <= 1, (total, shares)
        assert shares["train"] >= 1


def test_classes_are_cut_on_their_own_and_groups_stay_whole():
    units = _units([f"a{i}" for i in range(50)], "a")
    units += [splits.Unit((1000 + 3 * n, 1001 + 3 * n, 1002 + 3 * n), "b", f"b{n}")
              for n in range(20)]  # fmt: skip
    chosen = splits.assign(units, FRACTIONS)
    a = collections.Counter(chosen[i] for i in range(50))
    assert a == {"train": 40, "validation": 5, "test": 5}
    for n in range(20):
        assert len({chosen[1000 + 3 * n + k] for k in range(3)}) == 1
    b = collections.Counter(chosen[i] for i in chosen if i >= 1000)
    assert abs(b["train"] - 48) <= 1.5 and b["validation"] + b["test"] == 60 - b["train"]


def test_order_of_listing_does_not_matter():
    names = [f"x{i}.png" for i in range(300)]
    _, first = _shares(_units(names))
    shuffled = names[:]
    random.Random(0).shuffle(shuffled)
    by_name = dict(zip(names, range(300), strict=True))
    _, second = _shares(_units(shuffled))
    assert all(first[by_name[name]] == second[n] for n, name in enumerate(shuffled))


def test_adding_images_moves_at_most_about_as_many_across_each_cut():
    rng = random.Random(7)
    names = [f"p{rng.random()}" for _ in range(500)]
    _, before = _shares(_units(names))
    for added in (1, 5, 40):
        grown = names + [f"q{rng.random()}" for _ in range(added)]
        _, after = _shares(_units(grown))
        moved = sum(before[i] != after[i] for i in range(len(names)))
        assert moved <= 2 * (added + 1), (added, moved)
    # a per-image independent re-split would move about a third of them
    other = _units([n + "!" for n in names])
    _, reshuffled = _shares(other)
    assert sum(before[i] != reshuffled[i] for i in range(500)) > 100


def test_balance_reports_the_worst_class_and_what_one_image_weighs():
    counts = {"big": {"train": 80, "validation": 10, "test": 10},
              "tiny": {"train": 4, "validation": 0, "test": 1}}  # fmt: skip
    balance = splits.balance(counts, FRACTIONS)
    assert balance["max_deviation_points"] == 10.0
    assert balance["worst"]["class"] == "tiny" and balance["worst"]["image_points"] == 20.0
    line = splits.balance_line(balance)
    assert "within 10.0 points" in line and "'tiny'" in line and "one image 20.0 points" in line
