"""Per-request SLO checks and goodput, defined as `vllm bench serve --goodput` defines it.

A request is *good* when it succeeded and each of its latencies is at or under the threshold for that
metric (`SloSpec.request_thresholds()`: per metric, the threshold of its highest-percentile target).
Goodput is good requests per second of the whole run (first send to last completion). As in vLLM,
a request with at most one output token has TPOT 0 for this check. vLLM's goodput knows ttft, tpot
and e2el only; an `itl` target is checked against the request's mean inter-token gap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class RequestLatencies:
    """What goodput needs of one finished request (seconds)."""

    ok: bool
    ttft: float | None
    tpot: float | None
    itl_mean: float | None
    e2e: float | None


def is_good(req: RequestLatencies, thresholds: Mapping[str, float]) -> bool:
    if not req.ok:
        return False
    values = {"ttft": req.ttft, "tpot": req.tpot if req.tpot is not None else 0.0,
              "itl": req.itl_mean if req.itl_mean is not None else 0.0, "e2e": req.e2e}
    for metric, limit in thresholds.items():
        v = values.get(metric)
        if v is None or v > limit:
            return False
    return True


def count_good(requests: Iterable[RequestLatencies], thresholds: Mapping[str, float]) -> int:
    return sum(1 for r in requests if is_good(r, thresholds))


def goodput(requests: Iterable[RequestLatencies], thresholds: Mapping[str, float], duration: float) -> float:
    """Good requests per second over `duration` seconds (0 for an empty run)."""
    if duration <= 0:
        return 0.0
    return count_good(requests, thresholds) / duration
