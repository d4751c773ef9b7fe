from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of a normal-approximation 95% confidence interval (used for returns)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, 1.96 * math.sqrt(var / n)


def wilson_ci95(successes: int, n: int) -> tuple[float, float]:
    """Wilson score 95% interval `(low, high)` for a success rate of `successes` out of `n`.

    Unlike the normal approximation it never collapses to a point at 0% or 100% (0 of 50 gives [0, 7.1%]),
    and it stays inside [0, 1].
    """
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    p = successes / n
    z2 = Z95 * Z95
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    # At 0 (or n) successes the low (high) end is exactly 0 (1) in real arithmetic; float error aside.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]
