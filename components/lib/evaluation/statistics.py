"""How sure an accuracy measured on a few photos is, and whether two models really differ.

With 97 eval photos one photo is a whole percent of accuracy: the interval says how far the true
accuracy may be from the measured one, and the paired test says whether two models scored on the
same photos differ by more than chance.
"""

from __future__ import annotations

import math

Z_95 = 1.959963984540054
"""The standard normal quantile of a two-sided 95% interval."""
SIGNIFICANCE = 0.05


def wilson_interval(correct: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default): unlike ``p +- z*se`` it stays
    within [0, 1] and keeps its coverage at accuracies near 1 and on small samples."""
    if total == 0:
        return 0.0, 1.0
    share = correct / total
    denominator = 1 + z * z / total
    centre = (share + z * z / (2 * total)) / denominator
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: the photos only the first
    model gets right and those only the second gets right. Under "no difference" each
    discordant photo is a fair coin, so the p-value is a binomial tail at 1/2 (1 when there are
    no discordant photos)."""
    discordant = only_first + only_second
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(min(only_first, only_second) + 1))
    return min(1.0, 2 * tail / 2**discordant)
