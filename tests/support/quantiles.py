"""Prometheus' histogram_quantile as its documentation states it: the reference the collectors' own
quantiles are checked against."""

from __future__ import annotations

import math


def reference_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile, written as the docs state it: walk the buckets up to the one
    whose cumulative count reaches rank = q * total; a rank in +Inf gives the last finite bound;
    otherwise interpolate linearly from the previous bound (0 for the first bucket)."""
    buckets = sorted(buckets)
    total = buckets[-1][1]
    if total == 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for i, (upper, cumulative) in enumerate(buckets):
        if cumulative >= rank:
            if math.isinf(upper):
                return buckets[i - 1][0]
            if i == 0 and upper <= 0:
                return upper
            return lower + (upper - lower) * (rank - below) / (cumulative - below)
        lower, below = upper, cumulative
    raise AssertionError("unreachable: the +Inf bucket holds every observation")
