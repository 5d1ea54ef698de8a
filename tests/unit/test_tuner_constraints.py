"""SLO targets as Optuna constraints (<= 0 feasible)."""

from slotune.slo import SloSpec
from slotune.tuner.constraints import LAUNCH, feasible, infeasible_constraints, slo_constraints
from tests.support.tuner import client


def test_relative_excess_per_target():
    slo = SloSpec.parse("ttft_p95<=500ms,tpot_p95<=50ms,error_rate<=1%")
    c = slo_constraints(slo, client(ttft_p95=0.75, goodput=2, tpot_p95=0.025))
    assert c[LAUNCH] == 0
    assert abs(c["slo:ttft_p95"] - 0.5) < 1e-9  # 50 % over
    assert abs(c["slo:tpot_p95"] + 0.5) < 1e-9  # 50 % under
    assert c["slo:error_rate"] == -1.0
    assert not feasible(c)
    assert feasible(slo_constraints(slo, client(ttft_p95=0.4, goodput=2)))


def test_missing_measurement_and_failed_launch_are_violations():
    slo = SloSpec.parse("ttft_p95<=500ms,itl_p99<=20ms")
    c = slo_constraints(slo, {"ttft_seconds": None})
    assert c["slo:ttft_p95"] > 0 and c["slo:itl_p99"] > 0
    bad = infeasible_constraints(slo)
    assert bad[LAUNCH] > 0 and set(bad) == {LAUNCH, "slo:ttft_p95", "slo:itl_p99"}


def test_zero_threshold_ratio():
    slo = SloSpec.parse("error_rate<=0%")
    assert slo_constraints(slo, {"error_rate": 0.0})["slo:error_rate"] <= 0
    assert slo_constraints(slo, {"error_rate": 0.1})["slo:error_rate"] > 0
