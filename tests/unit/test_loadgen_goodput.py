"""Goodput on a hand-checked example, and the same requests through vLLM's own `calculate_metrics`
(`vllm bench serve --goodput`), which must agree."""

from __future__ import annotations

import numpy as np
import pytest

from slotune.loadgen.runner import LoadResult, RequestRecord
from slotune.loadgen.schedule import arrival_times
from slotune.slo import SloSpec

# Per metric the highest percentile's threshold applies per request: ttft 100 ms, tpot 20 ms (p99 wins
# over p50's 10 ms), e2e 1 s.
SLO = SloSpec.parse("ttft_p95<=100ms,tpot_p50<=10ms,tpot_p99<=20ms,e2e_p95<=1s")


def rec(i: int, ttft: float | None, out: int, e2e: float | None, ok: bool = True) -> RequestRecord:
    return RequestRecord(index=i, prompt_len=10, output_len=out, ok=ok, ttft=ttft, e2e=e2e,
                         itl=[] if not ok else [(e2e - ttft) / (out - 1)] * (out - 1) if out > 1 else [],
                         prompt_tokens=10 if ok else None, output_tokens=out if ok else None,
                         error=None if ok else "HTTP 500")


REQUESTS = [
    rec(0, 0.050, 11, 0.240),  # tpot 19 ms: good
    rec(1, 0.150, 11, 0.300),  # ttft 150 ms > 100 ms: not good
    rec(2, 0.050, 11, 0.300),  # tpot 25 ms > 20 ms: not good
    rec(3, 0.090, 1, 0.090),  # one token: tpot counts as 0 (as in vLLM): good
    rec(4, None, 5, None, ok=False),  # failed: never good
    rec(5, 0.080, 101, 1.200),  # e2e 1.2 s > 1 s: not good
    rec(6, 0.070, 51, 0.570),  # tpot 10 ms, e2e 570 ms: good
]


def test_hand_checked_goodput() -> None:
    assert SLO.request_thresholds() == pytest.approx({"ttft": 0.1, "tpot": 0.02, "e2e": 1.0})
    result = LoadResult(records=REQUESTS, duration=2.0, workload="hand", slo=SLO)
    d = result.to_dict()
    assert d["good_requests"] == 3  # requests 0, 3 and 6
    assert d["goodput"] == pytest.approx(1.5)  # 3 good / 2 s
    assert d["completed"] == 6 and d["failed"] == 1
    assert d["request_throughput"] == pytest.approx(3.0)
    assert d["tpot_seconds"]["count"] == 5  # like vLLM, one-token requests have no TPOT sample
    assert result.to_dict()["error_rate"] == pytest.approx(1 / 7)


def test_goodput_matches_vllm_bench_serve() -> None:
    serve = pytest.importorskip("vllm.benchmarks.serve")
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncOutput

    outputs = [RequestFuncOutput(success=r.ok, ttft=r.ttft or 0.0, latency=r.e2e or 0.0, itl=list(r.itl),
                                 output_tokens=r.output_tokens or 0, prompt_len=10) for r in REQUESTS]
    goodput_cfg = serve.parse_goodput(SLO.vllm_goodput_args())
    metrics, _ = serve.calculate_metrics(input_requests=[], outputs=outputs, dur_s=2.0, tokenizer=None,
                                         selected_percentiles=[50, 95, 99], goodput_config_dict=goodput_cfg)
    d = LoadResult(records=REQUESTS, duration=2.0, workload="hand", slo=SLO).to_dict()
    assert d["goodput"] == pytest.approx(metrics.request_goodput)
    assert d["request_throughput"] == pytest.approx(metrics.request_throughput)
    # The same percentile definitions (numpy, linear), in ms there and seconds here.
    vllm_p = dict(metrics.percentiles_tpot_ms)
    assert d["tpot_seconds"]["p99"] * 1000 == pytest.approx(vllm_p[99])
    assert d["ttft_seconds"]["p95"] * 1000 == pytest.approx(dict(metrics.percentiles_ttft_ms)[95])
    assert d["e2e_seconds"]["mean"] * 1000 == pytest.approx(metrics.mean_e2el_ms)


def test_poisson_schedule_mean_rate_and_spread() -> None:
    t = arrival_times(5000, rate=20.0, burstiness=1.0, seed=0)
    gaps = np.diff(np.concatenate([[0.0], t]))
    assert t[-1] == pytest.approx(5000 / 20)  # rescaled like vLLM: exactly n/rate
    assert gaps.mean() == pytest.approx(1 / 20)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential gaps
    assert np.all(gaps >= 0) and np.all(np.diff(t) >= 0)


@pytest.mark.parametrize(("burstiness", "cv"), [(0.25, 2.0), (4.0, 0.5)])
def test_gamma_burstiness(burstiness: float, cv: float) -> None:
    gaps = np.diff(arrival_times(20000, rate=10.0, burstiness=burstiness, seed=1))
    assert gaps.mean() == pytest.approx(0.1, rel=0.01)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.08)  # gamma: CV = 1/sqrt(shape)


def test_schedule_edges() -> None:
    assert arrival_times(10, None) is None  # no rate: as fast as allowed
    assert arrival_times(10, float("inf")) is None
    even = arrival_times(4, 2.0, burstiness=float("inf"))
    assert even == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert arrival_times(50, 5.0, seed=3) == pytest.approx(arrival_times(50, 5.0, seed=3))
