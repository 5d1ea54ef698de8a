"""SLO targets as Optuna constraints: one value per target, `<= 0` feasible (Optuna's convention).

A value is the relative excess over the threshold, `measured / threshold - 1`, so targets in seconds
and in ratios weigh alike and the sampler can tell "just over" from "far over". A target with no
measurement (no request finished) counts as violated. `launch` is 1 when the server did not start.
"""

from __future__ import annotations

from collections.abc import Mapping

from slotune.loadgen.figures import LoadFigures
from slotune.slo import SloSpec

LAUNCH = "launch"
# Measured zero against a zero threshold (error_rate<=0%) is met; anything above it violated by 1.
_VIOLATED = 1.0


def constraint_name(key: str) -> str:
    return f"slo:{key}"


def slo_constraints(slo: SloSpec, figures: LoadFigures | None) -> dict[str, float]:
    """One constraint per SLO target from the client's figures (None: nothing measured, every
    target violated)."""
    out: dict[str, float] = {LAUNCH: 0.0}
    for result in slo.evaluate(figures):
        t = result.target
        if result.value is None:
            out[constraint_name(t.key)] = _VIOLATED
        elif t.threshold > 0:
            out[constraint_name(t.key)] = result.value / t.threshold - 1.0
        else:
            out[constraint_name(t.key)] = 0.0 if result.value <= 0 else _VIOLATED
    return out


def infeasible_constraints(slo: SloSpec) -> dict[str, float]:
    """A trial whose server never ran: launch violated, every target unknown (violated)."""
    return {LAUNCH: _VIOLATED, **{constraint_name(t.key): _VIOLATED for t in slo.targets}}


def feasible(constraints: Mapping[str, float]) -> bool:
    return bool(constraints) and all(v <= 0 for v in constraints.values())
