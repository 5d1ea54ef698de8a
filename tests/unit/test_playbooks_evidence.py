"""Evidence with its resolution (issue 18): a figure a playbook cites is exact or printed with its
bounds. Quantiles interpolated in vLLM's wide histogram buckets are printed as the bucket; means,
counts and gauges plain; shares of exact means never rounded onto 100 %; requests in flight and
tokens per step derived from the same window so that they agree; the server's CPU time names the
host's CPU as the limit."""

from __future__ import annotations

import json
import math

import pytest

from slotune.collectors.histogram import Histogram, summarize
from slotune.collectors.snapshot import Quantiles, Snapshot
from slotune.playbooks.engine import RANGE_NOTE, _fmt, diagnose, judge
from slotune.playbooks.facts import FACTS, build_facts, fact_bounds
from slotune.playbooks.model import builtin_playbooks
from slotune.slo import SloSpec
from slotune.vllm_config import VllmConfig

INF = math.inf
# vLLM 0.32's prompt-length buckets (1-2-5 steps up to max_model_len) and TTFT/queue buckets (seconds).
PROMPT_BOUNDS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, INF)
TTFT_BOUNDS = (0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, INF)
QUEUE_BOUNDS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, INF)
BOOKS = {pb.id: pb for pb in builtin_playbooks()}


def hist(bounds: tuple[float, ...], per_bucket: dict[float, int], total: float) -> Quantiles:
    """A window's histogram from its observations per bucket (keyed by upper bound) and their sum."""
    counts, cum = [], 0
    for b in bounds:
        cum += per_bucket.get(b, 0)
        counts.append(float(cum))
    q = summarize(Histogram(bounds, tuple(counts), total, float(cum)))
    assert q is not None
    return q


def long_prompt_window() -> Snapshot:
    # 20 requests, prompts all under ~1,100 tokens: 10 of ~900, 10 of ~1,050. The p95 lands in
    # vLLM's (1000, 2000] bucket, where interpolation makes 1900 of it. Every request queued ~2 ms
    # (the first queue bucket) and spent ~1.2 s in prefill; TTFT in (1, 2.5] s.
    return Snapshot(
        target="http://127.0.0.1:8000", window_start=0.0, window_end=20.0, requests_finished=20.0,
        prompt_tokens=hist(PROMPT_BOUNDS, {1000.0: 10, 2000.0: 10}, 10 * 900 + 10 * 1050),
        ttft=hist(TTFT_BOUNDS, {2.5: 20}, 20 * 1.25),
        queue=hist(QUEUE_BOUNDS, {0.3: 20}, 20 * 0.002),
        prefill=hist(TTFT_BOUNDS, {2.5: 20}, 20 * 1.2),
        e2e=hist(TTFT_BOUNDS, {5.0: 20}, 20 * 3.0),
    )


def test_a_quantile_in_a_wide_bucket_is_printed_as_the_bucket_not_the_interpolated_figure() -> None:
    w = long_prompt_window()
    assert w.prompt_tokens is not None and w.prompt_tokens.p95 == pytest.approx(1900)  # the made-up figure
    d = diagnose([w], slo=SloSpec.parse("ttft_p95<=500ms"), server_config=VllmConfig(model="m"))
    f = next(x for x in d.findings if x.playbook == "high_ttft")
    assert f.cause == "prefill"
    assert "prompts of 1000-2000 tokens (p95" in f.summary, f.summary
    assert "1900" not in f.summary and "1.9e+03" not in f.summary
    assert "TTFT 1-2.5 s is above" in f.summary  # the SLO figure too: its bucket (1, 2.5]
    assert RANGE_NOTE in d.notes
    # The JSON keeps the number, with the bucket beside it.
    out = json.loads(json.dumps(d.to_dict()))
    ev = {e["field"]: e for e in next(x for x in out["findings"] if x["playbook"] == "high_ttft")["evidence"]}
    assert ev["prompt_len_p95"]["value"] == pytest.approx(1900)
    assert ev["prompt_len_p95"]["bounds"] == [1000.0, 2000.0]


def test_an_exact_figure_is_printed_plain() -> None:
    d = diagnose([long_prompt_window()], slo=SloSpec.parse("ttft_p95<=500ms"), server_config=VllmConfig(model="m"))
    f = next(x for x in d.findings if x.playbook == "high_ttft")
    assert "975 on average" in f.summary  # the mean, from _sum/_count: exact, printed as is
    ev = {e.field: e for e in f.evidence}
    assert ev["prompt_len_mean"].bounds is None and ev["ttft_prefill_share"].bounds is None
    assert ev["requests_waiting"].bounds is None if "requests_waiting" in ev else True


def test_the_prefill_share_of_exact_means_is_not_rounded_onto_100_percent() -> None:
    d = diagnose([long_prompt_window()], slo=SloSpec.parse("ttft_p95<=500ms"), server_config=VllmConfig(model="m"))
    f = next(x for x in d.findings if x.playbook == "high_ttft")
    assert "(99.8% of the mean time queued + in prefill)" in f.summary, f.summary
    assert "100%" not in f.summary
    assert _fmt(0.99996, percent=True) == "> 99.9%" and _fmt(0.00004, percent=True) == "< 0.1%"
    assert _fmt(1.0, percent=True) == "100%" and _fmt(0.5, percent=True) == "50%"


def test_fine_buckets_leave_the_figure_plain() -> None:
    # A user's own fine buckets (the SLO-aligned flag): 1850 in (1800, 1900] says what it seems.
    bounds = (1700.0, 1800.0, 1900.0, INF)
    w = Snapshot(target="t", window_start=0.0, window_end=10.0, requests_finished=10.0,
                 prompt_tokens=hist(bounds, {1900.0: 10}, 18500.0))
    f = build_facts(w)
    assert fact_bounds(w, f)["prompt_len_p95"] == (1800.0, 1900.0)
    d = judge([f], bounds=fact_bounds(w, f), playbooks=[BOOKS["high_ttft"]])
    assert d.findings == ()  # nothing to render here; the rendering itself:
    from slotune.playbooks.engine import _render
    assert _render("{prompt_len_p95}", f, {}, fact_bounds(w, f)) == f"{f['prompt_len_p95']:.0f}"


def test_ratios_of_bucket_quantiles_carry_the_bounds_of_their_ratio() -> None:
    w = long_prompt_window()
    f = build_facts(w)
    lo, hi = fact_bounds(w, f)["prompt_len_p99_over_p50"]
    assert lo == pytest.approx(1000 / 1000) and hi == pytest.approx(2000 / 500)  # p99 in (1000,2000], p50 in (500,1000]


# Issue 18's window: 20 requests in flight by Little's law (e2e mean 20 s, 20 finished in 20 s) while
# each engine step carried 2.56 tokens: the requests spent most of their life outside the batch.
def contradiction_window() -> Snapshot:
    return Snapshot(
        target="http://127.0.0.1:8000", window_start=0.0, window_end=20.0, requests_finished=20.0,
        e2e=Quantiles(18.0, 30.0, 35.0, 20.0, 20.0), queue=Quantiles(0.001, 0.002, 0.003, 0.001, 20.0),
        prefill=Quantiles(0.4, 0.6, 0.7, 0.5, 20.0), decode=Quantiles(3.5, 5.0, 6.0, 4.0, 20.0),
        tpot=Quantiles(0.3, 0.4, 0.45, 0.3, 20.0),
        iteration_tokens=Quantiles(2.0, 5.0, 10.0, 2.56, 1000.0), requests_running=20.0, preemptions=0.0,
    )


def test_requests_in_the_batch_never_exceed_the_tokens_of_a_step() -> None:
    f = build_facts(contradiction_window())
    assert f["mean_concurrency"] == pytest.approx(20.0)
    assert f["step_tokens_mean"] == pytest.approx(2.56)
    # Little's law on time scheduled (0.5 + 4 s) says 4.5; a step holds at most 2.56 requests.
    assert f["batch_requests"] == pytest.approx(2.56)
    assert f["batch_requests"] <= f["step_tokens_mean"] and f["batch_requests"] <= f["mean_concurrency"]


def test_the_cited_in_flight_and_tokens_per_step_agree() -> None:
    d = diagnose([contradiction_window()], slo=SloSpec.parse("ttft_p95<=500ms,tpot_p95<=50ms"),
                 server_config=VllmConfig(model="m"))
    f = next(x for x in d.findings if x.playbook == "low_gpu_utilization")
    assert "20 requests in flight on average, 2.56 of them in the engine's batch" in f.summary, f.summary
    assert "2.56 per step" in f.summary


def test_a_window_without_the_engines_times_keeps_in_flight_and_cites_no_batch() -> None:
    w = contradiction_window()
    bare = Snapshot(target=w.target, window_start=0.0, window_end=20.0, requests_finished=20.0, e2e=w.e2e)
    f = build_facts(bare)
    assert f["mean_concurrency"] == pytest.approx(20.0) and f["batch_requests"] == pytest.approx(20.0)
    assert build_facts(Snapshot(target="t", window_start=0.0, window_end=20.0))["batch_requests"] is None


def burning(**kw: float | None) -> dict[str, float | None]:
    f: dict[str, float | None] = dict.fromkeys(FACTS)
    f.update({"window_seconds": 10, "requests_finished": 20, "nvml_available": 0, "mean_concurrency": 20,
              "batch_requests": 2.56, "batch_share_of_inflight": 0.128, "max_num_seqs": 128,
              "max_num_batched_tokens": 2048, "batch_occupancy": 20 / 128, "step_tokens_mean": 2.56,
              "step_tokens_share": 2.56 / 2048, "preemptions": 0, "requests_running": 20, "requests_waiting": 0,
              "latency_slo_ratio": 8.0, "tpot_at_slo": 0.4, "cpu_backend": 0, "latency_targets_unjudged": 0})
    f.update(kw)
    return f


def test_the_servers_cpu_time_names_the_host_cpu_on_any_backend() -> None:
    books = [BOOKS["low_gpu_utilization"]]
    f = judge([burning(engine_cpu_utilization=0.97)], playbooks=books).findings[0]
    assert f.cause == "host_cpu"
    assert "keep 97% of their cores busy" in f.summary, f.summary
    # Not busy, on an accelerator: compute per step (memory bandwidth or host work), not the CPU.
    assert judge([burning(engine_cpu_utilization=0.3)], playbooks=books).findings[0].cause == "compute_per_step"
    # Unmeasured (slotune did not start the server): as before, judged on the backend.
    assert judge([burning()], playbooks=books).findings[0].cause == "compute_per_step"
    assert judge([burning(cpu_backend=1)], playbooks=books).findings[0].cause == "host_cpu"


def test_a_busy_server_meeting_its_targets_is_at_its_knee_not_short_of_load() -> None:
    # The real model's matrix, edit at c=2: every target met while vLLM kept 94 % of its core busy;
    # "offer more concurrency" there would have pushed it past the knee (c=8 missed TTFT by 2.5x).
    books = [BOOKS["low_gpu_utilization"]]
    calm = {"latency_slo_ratio": 0.7, "tpot_at_slo": 0.2, "mean_concurrency": 2, "batch_requests": 2,
            "batch_share_of_inflight": 1.0, "batch_occupancy": 2 / 1024}
    f = judge([burning(**calm, engine_cpu_utilization=0.94)], playbooks=books).findings[0]
    assert f.cause == "host_cpu", f.summary
    assert "keep 94% of their cores busy" in f.summary and "more load would only queue" in f.summary
    assert not any("concurrency" in r.action.lower() or "load" in r.action.lower() for r in f.remedies)
    # The same window with the cores idle is short of load.
    assert judge([burning(**calm, engine_cpu_utilization=0.3)], playbooks=books).findings[0].cause == "low_offered_load"


def test_requests_held_outside_the_batch_are_not_called_low_load() -> None:
    books = [BOOKS["low_gpu_utilization"]]
    calm = burning(latency_slo_ratio=0.5, tpot_at_slo=0.02)
    f = judge([calm], playbooks=books).findings[0]
    assert f.cause == "outside_engine", f.summary
    assert not any("concurrency" in r.action.lower() for r in f.remedies)
    spread = burning(latency_slo_ratio=0.5, tpot_at_slo=0.02, batch_requests=18, batch_share_of_inflight=0.9)
    assert judge([spread], playbooks=books).findings[0].cause == "low_offered_load"


def test_the_cli_table_prints_a_bucket_quantile_as_its_bucket() -> None:
    from rich.console import Console

    from slotune.cli.diagnose import render

    d = diagnose([long_prompt_window()], slo=SloSpec.parse("ttft_p95<=500ms"), server_config=VllmConfig(model="m"))
    console = Console(width=200, record=True)
    console.print(render(d.to_dict()))
    rows = {line.split()[0]: line for line in console.export_text().splitlines() if line.strip()}
    assert rows["prompt_len_p95"].split()[1] == "1000-2000", rows["prompt_len_p95"]
    assert rows["prompt_len_mean"].split()[1] == "975"  # exact: plain
