"""SLO thresholds as histogram bucket bounds (vLLM's default bounds are in `slotune.metric_names`).

A server-side quantile is interpolated inside one bucket; whether a target is met can only be read
off the buckets when the threshold is a bucket bound. vLLM 0.32's `--custom-histogram-buckets`
(a JSON object: bucket family → strictly increasing positive bounds, replacing that family's
defaults) makes it one. When slotune starts vLLM it adds the SLO's thresholds to the defaults of
the families they need (`with_slo_buckets`); when it only observes, `unbounded_targets` names the
targets that are not bounds and `bound_advice` says what would make them bounds (the flag on the
server's own bounds, or why no flag is printed: never "None").
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


def bound_advice(slo: SloSpec | None, observed: Mapping[str, Sequence[float]] | None = None) -> str:
    """What makes `slo`'s quantile thresholds bucket bounds, as a clause that never reads "None"
    (docs/collectors.md). `observed`: SLO metric → the finite bounds this server's page carries
    (else vLLM 0.32's defaults are assumed). With them, the flag keeps the server's own bounds and
    adds the thresholds; where those bounds are not vLLM 0.32's defaults the server may be an older
    vLLM without the flag, and that is said. Where the defaults have the thresholds already (a
    caller that saw the server's bucket straddle one), no flag is printed: the server is older or
    runs custom buckets, and the clause says so."""
    targets = _latency_targets(slo)
    current: dict[str, list[float]] = {}
    for t in targets:
        bounds = (observed or {}).get(t.metric)
        if bounds:
            current.setdefault(FAMILY[t.metric], [float(b) for b in bounds])
    flag = flag_for(slo, current)
    thresholds = ", ".join(f"{t.threshold:g} s" for t in targets)
    if flag is None:
        return (f"vLLM 0.32's default buckets have a bound at {thresholds}, this server's do not: it is an "
                f"older vLLM (no flag adds bounds there) or runs custom buckets (add {thresholds} to its {FLAG})")
    foreign = [f for f, b in current.items() if not _same_bounds(b, DEFAULT_BUCKETS[f])]
    if not foreign:
        return f"start vLLM with {flag}"
    return (f"start vLLM with {flag} (vLLM 0.32's flag, on this server's own {', '.join(foreign)} bounds: they are "
            "not vLLM 0.32's defaults, so this may be an older vLLM, which has no such flag; there attainment can "
            "only be read against the bounds it has)")


def _same_bounds(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(_is_bound(x, [y]) for x, y in zip(a, b, strict=True))


def _neighbours(threshold: float, bounds: Sequence[float]) -> str:
    below = max((b for b in bounds if b < threshold), default=None)
    above = min((b for b in bounds if b > threshold), default=None)
    if above is None:
        return f"past the last bound, {below:g} s" if below is not None else "no finite bound"
    return f"between the bounds {0 if below is None else below:g} s and {above:g} s"


def warnings(slo: SloSpec | None, observed: Mapping[str, Sequence[float]] | None = None) -> list[str]:
    """One line per target that is not a bucket bound (where it falls between the bounds), then what
    would make them bounds (`bound_advice`). `observed` as in `unbounded_targets`."""
    missing = unbounded_targets(slo, observed)
    if not missing:
        return []
    whose = "this server's" if observed else "vLLM's"
    lines = []
    for t in missing:
        bounds = (observed or {}).get(t.metric) or DEFAULT_BUCKETS[FAMILY[t.metric]]
        lines.append(f"{t}: {t.threshold:g} s is not a bucket bound of {whose} {FAMILY[t.metric]} histogram "
                     f"({_neighbours(t.threshold, bounds)}); attainment read from the buckets is counted against "
                     "a neighbouring bound")
    return [*lines, f"make the thresholds bucket bounds: {bound_advice(SloSpec(tuple(missing)), observed)}"]


def with_slo_buckets(config: VllmConfig, slo: SloSpec | None) -> VllmConfig:
    """`config` with the SLO thresholds added to its histogram buckets (unchanged when they already are)."""
    buckets = slo_buckets(slo, config.custom_histogram_buckets)
    if not buckets or buckets == (config.custom_histogram_buckets or {}):
        return config
    return config.model_copy(update={"custom_histogram_buckets": buckets})
