"""SLO thresholds as histogram bucket bounds (vLLM's default bounds are in `slotune.metric_names`).

A server-side quantile is interpolated inside one bucket; whether a target is met can only be read
off the buckets when the threshold is a bucket bound. vLLM 0.32's `--custom-histogram-buckets`
(a JSON object: bucket family → strictly increasing positive bounds, replacing that family's
defaults) makes it one. When slotune starts vLLM it adds the SLO's thresholds to the defaults of
the families they need (`with_slo_buckets`); when it only observes, `unbounded_targets` names the
targets that are not bounds and `flag_for` prints the flag that would make them bounds.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from slotune.metric_names import BY_KEY, DEFAULT_BUCKETS
from slotune.slo import LATENCY_METRICS, SloSpec, SloTarget

if TYPE_CHECKING:
    from slotune.vllm_config import VllmConfig

FLAG = "--custom-histogram-buckets"

# SLO metric → the bucket family of the histogram it is read from: TTFT its own; ITL and per-request
# TPOT share inter_token_latency; e2e request_latency.
FAMILY: dict[str, str] = {m: BY_KEY[m].bucket_family or "" for m in LATENCY_METRICS}
assert set(FAMILY) == set(LATENCY_METRICS)


def _latency_targets(slo: SloSpec | None) -> list[SloTarget]:
    # The mean is exact (_sum / _count): only quantile targets need a bound.
    return [t for t in (slo.targets if slo else ()) if t.metric in FAMILY and t.quantile is not None]


def _is_bound(threshold: float, bounds: Sequence[float]) -> bool:
    return any(abs(b - threshold) <= 1e-9 * max(1.0, threshold) for b in bounds)


def slo_buckets(slo: SloSpec | None, current: Mapping[str, Sequence[float]] | None = None) -> dict[str, list[float]]:
    """`--custom-histogram-buckets` for `slo`: per family that needs it, its bounds (the server's
    custom ones in `current`, else vLLM's defaults) with the SLO thresholds added. Families that
    already have every threshold as a bound are left out; `current` families are kept as given."""
    out = {k: list(v) for k, v in (current or {}).items()}
    for t in _latency_targets(slo):
        family = FAMILY[t.metric]
        bounds = out.get(family, list(DEFAULT_BUCKETS[family]))
        if not _is_bound(t.threshold, bounds):
            out[family] = sorted({*bounds, round(t.threshold, 9)})
    return out


def flag_for(slo: SloSpec | None, current: Mapping[str, Sequence[float]] | None = None) -> str | None:
    """The flag (shell-quoted) that makes every SLO threshold a bucket bound, or None when all are."""
    buckets = slo_buckets(slo, current)
    if buckets == {k: list(v) for k, v in (current or {}).items()}:
        return None
    return f"{FLAG} {shlex.quote(json.dumps(buckets, separators=(',', ':')))}"


def unbounded_targets(slo: SloSpec | None, observed: Mapping[str, Sequence[float]] | None = None) -> list[SloTarget]:
    """Quantile targets whose threshold is not a bucket bound: of the histogram a page carries
    (`observed`: SLO metric → its finite bounds), else of vLLM's defaults."""
    out = []
    for t in _latency_targets(slo):
        bounds = (observed or {}).get(t.metric) or DEFAULT_BUCKETS[FAMILY[t.metric]]
        if not _is_bound(t.threshold, bounds):
            out.append(t)
    return out


def warnings(slo: SloSpec | None, observed: Mapping[str, Sequence[float]] | None = None) -> list[str]:
    """One line per target that is not a bucket bound, then the flag that would make them bounds."""
    missing = unbounded_targets(slo, observed)
    if not missing:
        return []
    lines = [f"{t}: {t.threshold:g} s is not a bucket bound of vLLM's {FAMILY[t.metric]} histogram; "
             "attainment read from the buckets is counted against a neighbouring bound" for t in missing]
    return [*lines, f"make the thresholds bucket bounds: start vLLM with {flag_for(SloSpec(tuple(missing)))}"]


def with_slo_buckets(config: VllmConfig, slo: SloSpec | None) -> VllmConfig:
    """`config` with the SLO thresholds added to its histogram buckets (unchanged when they already are)."""
    buckets = slo_buckets(slo, config.custom_histogram_buckets)
    if not buckets or buckets == (config.custom_histogram_buckets or {}):
        return config
    return config.model_copy(update={"custom_histogram_buckets": buckets})
