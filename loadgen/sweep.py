"""The highest request rate that still meets every SLO target: a short, bounded search.

From `start_rate`, double while the SLOs hold (halve while they do not, to find a first passing
rate), then bisect between the highest passing and the lowest failing rate until they are within
`tolerance` of each other or `max_steps` runs are spent. Each point is an open-loop run of
`num_requests` (default: about `point_seconds` of arrivals, 20 to 400 requests).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slotune.errors import ConfigError
from slotune.loadgen.runner import LoadResult, run_load
from slotune.loadgen.workload import Workload
from slotune.slo import SloSpec


@dataclass(frozen=True)
class SweepPoint:
    rate: float
    met: bool
    result: LoadResult

    def to_dict(self) -> dict[str, Any]:
        f = self.result.figures()
        return {"rate": self.rate, "met": self.met, "goodput": f.goodput, "request_throughput": f.request_throughput,
                "completed": f.completed, "failed": f.failed, "slo": [r.to_dict() for r in f.slo]}


@dataclass
class SweepResult:
    max_rate: float | None  # None: no rate tried met the SLOs
    best: LoadResult | None  # the run at max_rate
    points: list[SweepPoint] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"max_rate": self.max_rate, "best": self.best.to_dict() if self.best else None,
                "points": [p.to_dict() for p in self.points]}


def requests_for(rate: float, point_seconds: float, lo: int = 20, hi: int = 400) -> int:
    return int(min(max(math.ceil(rate * point_seconds), lo), hi))


def find_max_rate(base_url: str, model: str, workload: Workload, slo: SloSpec, *, num_requests: int | None = None,
                  seed: int = 0, start_rate: float = 1.0, max_rate: float = 1024.0, max_steps: int = 8,
                  tolerance: float = 0.1, point_seconds: float = 10.0, burstiness: float = 1.0,
                  concurrency: int | None = None, request_timeout: float = 120.0, progress: bool = False,
                  on_point: Callable[[SweepPoint], None] | None = None) -> SweepResult:
    """Search the highest rate meeting every target of `slo` (see the module docstring)."""
    if not start_rate > 0 or not max_rate >= start_rate:
        raise ConfigError("the sweep needs 0 < start_rate <= max_rate")
    if max_steps < 1:
        raise ConfigError("the sweep needs max_steps >= 1")
    points: list[SweepPoint] = []

    def probe(rate: float) -> SweepPoint:
        n = num_requests if num_requests is not None else requests_for(rate, point_seconds)
        result = run_load(base_url, model, workload, rate=rate, num_requests=n, slo=slo, seed=seed,
                          burstiness=burstiness, concurrency=concurrency, request_timeout=request_timeout,
                          progress=progress)
        point = SweepPoint(rate=rate, met=result.meets_slo(), result=result)
        points.append(point)
        if on_point is not None:
            on_point(point)
        return point

    good: SweepPoint | None = None
    bad: SweepPoint | None = None
    rate = start_rate
    while len(points) < max_steps:  # bracket: double up from a pass, halve down from a fail
        p = probe(rate)
        if p.met:
            good = p
            if bad is not None or rate >= max_rate:
                break
            rate = min(rate * 2, max_rate)
        else:
            bad = p
            if good is not None:
                break
            rate /= 2
    while good is not None and bad is not None and len(points) < max_steps \
            and bad.rate / good.rate > 1 + tolerance:
        p = probe((good.rate + bad.rate) / 2)
        if p.met:
            good = p
        else:
            bad = p
    return SweepResult(max_rate=good.rate if good else None, best=good.result if good else None, points=points)
