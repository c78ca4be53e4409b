"""Stratified, seeded hold-outs: the one rule for carving an eval split (download) and a
validation split (preprocessing) out of a class's images."""

from __future__ import annotations

import random
from typing import TypeVar

T = TypeVar("T")


def holdout(items: list[T], fraction: float, seed_key: str) -> tuple[list[T], list[T]]:
    """``(kept, held_out)`` of one class's ``items``: ``round(fraction * n)`` of them, at least
    one and never all, picked by a shuffle seeded with ``seed_key`` (the same items and key give
    the same split on every machine); none when ``fraction`` is 0."""
    shuffled = sorted(items)
    random.Random(seed_key).shuffle(shuffled)
    count = min(len(shuffled) - 1, max(1, round(fraction * len(shuffled)))) if fraction else 0
    return shuffled[count:], shuffled[:count]
