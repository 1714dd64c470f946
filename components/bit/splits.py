"""bittune's own splits: stratified by class, ordered by a stable hash, groups kept whole.

Where the source gives no split, each class's images are ordered by a stable hash of their
identity (:func:`hash_point`) and cut at the target fractions: each cut falls within half
an image of its target, so each split holds its share of every class to within one image (a
group of near-duplicates, placed whole, moves a cut by up to half the group). The order is a
function of the names alone: the same files always get the same splits, whatever order they
are listed in. Adding ``m`` images to a class shifts the ranks of
its other images by at most ``m``, so at most about ``m + 1`` of them cross each cut; images of
other classes never move. (A split that never moved any image would have to be a function of
each image alone, which is binomial: a 350-image class sits about ±2.1 points from an 80%
target, one s.d., and the largest of 30 class shares is commonly 2-3 s.d. off.)
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

SPLITS = ("train", "validation", "test")


def hash_point(identity: str) -> float:
    """A stable point in [0, 1) for an identity (the first 8 bytes of its SHA-256)."""
    digest = hashlib.sha256(identity.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclasses.dataclass(frozen=True)
class Unit:
    """Items that go to one split together: one image, or a near-duplicate group."""

    members: tuple[int, ...]  # the caller's indices
    label: str  # the class the unit is counted in (a group's most common label)
    identity: str  # what orders it: the identity of the image, or of the group's first

    @property
    def point(self) -> float:
        return hash_point(self.identity)


def assign(units: Sequence[Unit], fractions: Sequence[float]) -> dict[int, str]:
    """The split of every member of ``units``: per class, units in hash order fill train,
    then validation, then test; a unit goes where the middle of its images falls."""
    by_class: dict[str, list[Unit]] = collections.defaultdict(list)
    for unit in units:
        by_class[unit.label].append(unit)
    out: dict[int, str] = {}
    for members in by_class.values():
        total = sum(len(u.members) for u in members)
        bounds, running = [], 0.0
        for fraction in fractions:
            running += fraction
            bounds.append(running * total)
        done = 0
        for unit in sorted(members, key=lambda u: (u.point, u.identity)):
            middle = done + len(unit.members) / 2
            split = next((s for s, b in zip(SPLITS, bounds, strict=True) if middle < b), SPLITS[-1])
            out.update(dict.fromkeys(unit.members, split))
            done += len(unit.members)
    return out


def balance(
    counts: Mapping[str, Mapping[str, int]], fractions: Sequence[float], unplaced: int = 0
) -> dict[str, Any]:
    """How far each class's split shares (``counts[label][split]``) are from the target
    fractions, in points; the worst class and split also carry ``image_points``, what one
    image of that class weighs (the rounding a class of few images cannot avoid)."""
    target = dict(zip(SPLITS, fractions, strict=True))
    per_class, worst = {}, {"points": 0.0}
    for label in sorted(counts):
        total = sum(counts[label].values())
        if not total:
            continue
        shares = {s: counts[label].get(s, 0) / total for s in SPLITS}
        per_class[label] = {s: round(v, 4) for s, v in shares.items()}
        for s in SPLITS:
            points = 100 * abs(shares[s] - target[s])
            if points > worst["points"] + 1e-9:
                worst = {"points": round(points, 2), "class": label, "split": s,
                         "share": round(shares[s], 4), "target": target[s], "images": total,
                         "image_points": round(100 / total, 2)}  # fmt: skip
    return {"target": target, "max_deviation_points": worst["points"], "worst": worst,
            "per_class": per_class, "unplaced_groups": unplaced}  # fmt: skip


def balance_line(balance: Mapping[str, Any]) -> str:
    """One line: the largest distance of a class's split share from its target."""
    worst = balance["worst"]
    line = f"split balance: every class within {balance['max_deviation_points']:.1f} points"
    line += " of the target fractions"
    if "class" in worst:
        line += (
            f" (largest: {worst['class']!r} {worst['split']} {100 * worst['share']:.1f}% "
            f"against {100 * worst['target']:.0f}%, {worst['images']:,} images"
        )
        if "image_points" in worst:
            line += f", one image {worst['image_points']:.1f} points"
        line += ")"
    if balance["unplaced_groups"]:
        line += f"; {balance['unplaced_groups']} near-duplicate groups too large to place"
    return line
