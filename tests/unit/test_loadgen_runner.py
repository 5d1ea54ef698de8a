"""The load generator against a real streaming HTTP server on 127.0.0.1 (tests.support.echo_server: SSE
shaped like vLLM's; a real socket server, not a fake of vLLM's numbers)."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from slotune.errors import ConfigError, TargetError
from slotune.loadgen.prompts import load_tokenizer
from slotune.loadgen.runner import LoadResult, RequestRecord, normalize_base_url, request_bodies, run_load
from slotune.loadgen.workload import Workload, load_workload
from slotune.slo import SloSpec
from tests.support.echo_server import EchoServer


@pytest.fixture(scope="module")
def echo():
    with EchoServer(ttft=0.005, itl=0.001) as srv:
        yield srv


def test_counts_and_timings(echo: EchoServer) -> None:
    before = echo.stats.requests, echo.stats.prompt_tokens, echo.stats.completion_tokens
    r = run_load(echo.url, "echo", Workload.fixed(40, 8), concurrency=4, num_requests=24, seed=3)
    d = r.to_dict()
    assert d["completed"] == 24 and d["failed"] == 0 and d["error_rate"] == 0.0
    assert echo.stats.requests - before[0] == 24
    # Token totals are the server's own counts (usage), and the prompts have the length asked for.
    assert d["total_input_tokens"] == echo.stats.prompt_tokens - before[1] == 24 * 40
    assert d["total_output_tokens"] == echo.stats.completion_tokens - before[2] == 24 * 8
    ttft, tpot, itl, e2e = (d[f"{k}_seconds"] for k in ("ttft", "tpot", "itl", "e2e"))
    assert ttft["count"] == 24 and itl["count"] == 24 * 7
    assert ttft["p50"] >= 0.005  # the server waits 5 ms before the first token
    assert tpot["p50"] >= 0.001 and e2e["p50"] > ttft["p50"]
    assert ttft["p50"] <= ttft["p95"] <= ttft["p99"]
    assert d["request_throughput"] == pytest.approx(24 / d["duration"])
    assert d["goodput"] is None and d["slo"] == []  # no SLO given
    assert d["warnings"] == []  # tokens 1 ms apart, nothing late: a sound measurement


def test_concurrency_never_exceeds_the_limit() -> None:
    with EchoServer(itl=0.003) as srv:
        r = run_load(srv.url, "echo", Workload.fixed(10, 10), concurrency=3, num_requests=30)
        assert r.completed == 30
        assert srv.stats.max_in_flight == 3  # reached, never exceeded
        assert srv.stats.connections == 3  # keep-alive: each stream read to its end, its connection reused


def test_open_loop_rate_reaches_the_server_on_schedule() -> None:
    with EchoServer(record_arrivals=True) as srv:
        r = run_load(srv.url, "echo", Workload.fixed(5, 2), rate=100, num_requests=200, seed=1)
        arrivals = np.diff(np.asarray(srv.stats.arrivals))
    assert r.completed == 200
    span = sum(arrivals)
    assert span == pytest.approx(199 / 100, rel=0.15)  # ~n/rate seconds
    cv = arrivals.std() / arrivals.mean()
    assert 0.7 < cv < 1.3  # Poisson arrivals: exponential gaps, coefficient of variation ~1
    late = r.to_dict()["send_lateness_seconds"]
    assert late["count"] == 200 and late["p50"] >= 0


def test_streams_read_in_one_burst_are_flagged() -> None:
    # A server that writes every token at once: what a CPU-starved client (or a backed-up server) sees.
    # One write per stream, so the client reads each in one go however loaded the host (with a write per
    # token, a busy host spread some streams over more than BURST_SPAN and the check saw no burst).
    with EchoServer(ttft=0.002, burst=True) as srv:
        d = run_load(srv.url, "echo", Workload.fixed(5, 16), concurrency=2, num_requests=10).to_dict()
    assert d["completed"] == 10
    assert any(re.search(r"\b([1-9]|10) of 10 streams arrived in one burst", w) for w in d["warnings"]), d["warnings"]
    # And the same server streaming at a human pace is not flagged.
    with EchoServer(ttft=0.002, itl=0.005) as srv:
        d = run_load(srv.url, "echo", Workload.fixed(5, 16), concurrency=2, num_requests=10).to_dict()
    assert not any("one burst" in w for w in d["warnings"]), d["warnings"]


def test_late_sends_are_flagged() -> None:
    def rec(i: int, late: float) -> RequestRecord:
        return RequestRecord(index=i, prompt_len=5, output_len=2, due=i * 0.1, sent=i * 0.1 + late, ok=True,
                             ttft=0.01, e2e=0.02, output_tokens=2)

    on_time = LoadResult(records=[rec(i, 0.0005) for i in range(100)], duration=10.0, workload="w", rate=10)
    assert on_time.warnings() == []
    starved = LoadResult(records=[rec(i, 0.0005 if i % 10 else 0.25) for i in range(100)], duration=10.0,
                         workload="w", rate=10)
    [warning] = starved.warnings()
    assert warning.startswith("requests left up to 250 ms late (p99)")
    closed = LoadResult(records=[RequestRecord(index=0, prompt_len=5, output_len=2)], duration=1.0, workload="w")
    assert closed.warnings() == []  # no schedule, nothing to be late for


def test_duration_bounds_a_closed_loop_run() -> None:
    with EchoServer(itl=0.01) as srv:
        t0 = time.monotonic()
        r = run_load(srv.url, "echo", Workload.fixed(5, 10), concurrency=2, duration=0.6)
        took = time.monotonic() - t0
    assert 0.6 <= took < 3 and r.completed >= 2
    assert r.failed == 0


def test_chat_endpoint_and_shared_prefix() -> None:
    with EchoServer() as srv:
        r = run_load(srv.url, "echo", load_workload("chat"), rate=200, num_requests=20, seed=2)
    assert r.completed == 20
    # prompts: own text plus, for about half, the 96-token system prompt
    d = r.to_dict()
    assert d["total_input_tokens"] == sum(rec.prompt_tokens for rec in r.records)
    with_prefix = [rec for rec in r.records if rec.prompt_tokens > rec.prompt_len]
    assert all(rec.prompt_tokens == rec.prompt_len + 96 for rec in with_prefix) and with_prefix


def test_request_bodies_are_the_prompts_a_run_sends(tiny_model: Path) -> None:
    # What bench_loadgen --vs-vllm hands vLLM's generator, so both clients send the very same prompts.
    wl = dataclasses.replace(Workload.fixed(40, 4), tokenizer=str(tiny_model))
    with EchoServer(record_prompts=True) as srv:
        run_load(srv.url, "echo", wl, concurrency=1, num_requests=6, seed=7)
    prompts = [json.loads(b)["prompt"] for b in request_bodies(wl, "echo", seed=7, n=6)]
    assert prompts == srv.stats.prompts and len(set(prompts)) == 6
    tok = load_tokenizer(str(tiny_model))
    assert all(len(tok.encode(p, add_special_tokens=False).ids) == 40 for p in prompts)
    assert prompts != [json.loads(b)["prompt"] for b in request_bodies(wl, "echo", seed=8, n=6)]
    with pytest.raises(ConfigError, match="local tokenizer"):
        request_bodies(Workload.fixed(40, 4), "echo", seed=7, n=6)


def test_request_errors_are_counted_not_raised(echo: EchoServer) -> None:
    r = run_load(echo.url, "no-such-model", Workload.fixed(5, 2), rate=50, num_requests=5,
                 slo=SloSpec.parse("ttft_p95<=1s,error_rate<=1%"))
    d = r.to_dict()
    assert d["completed"] == 0 and d["failed"] == 5 and d["error_rate"] == 1.0
    assert list(d["errors"]) == ["HTTP 404: The model `no-such-model` does not exist."]
    assert d["goodput"] == 0.0 and d["ttft_seconds"] is None
    assert [s["met"] for s in d["slo"]] == [None, False]
    assert not r.meets_slo()


def test_unreachable_target_raises_target_error() -> None:
    with EchoServer() as srv:
        url = srv.url
    with pytest.raises(TargetError, match="cannot reach"):
        run_load(url, "echo", Workload.fixed(5, 2), num_requests=2)


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://x", "http://", "http://h:99999"])
def test_bad_url(url: str) -> None:
    with pytest.raises(ConfigError, match="bad target URL"):
        normalize_base_url(url)


def test_url_normalization() -> None:
    assert normalize_base_url("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000"


@pytest.mark.parametrize("kw", [{"rate": 0}, {"concurrency": 0}, {"num_requests": 0}, {"burstiness": 0},
                                {"duration": 1.0}, {"watch_every": 0}])
def test_bad_arguments(kw: dict) -> None:
    with pytest.raises(ConfigError):
        run_load("http://127.0.0.1:1", "m", Workload.fixed(5, 2), **kw)


def test_an_idle_connection_is_dropped_before_vllm_closes_it() -> None:
    # vLLM's uvicorn closes a connection idle for VLLM_HTTP_TIMEOUT_KEEP_ALIVE seconds; a request sent
    # on one it is closing fails ("Server disconnected"). Read the installed vLLM's default (no import).
    import importlib.util

    from slotune.loadgen import runner

    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.submodule_search_locations
    envs = Path(next(iter(spec.submodule_search_locations))) / "envs.py"
    default = re.search(r'"VLLM_HTTP_TIMEOUT_KEEP_ALIVE",\s*"(\d+)"', envs.read_text())
    assert default is not None, "vLLM's keep-alive default moved: read it again"
    server_keepalive = int(default.group(1))
    assert server_keepalive - 1 > runner.KEEPALIVE_SECONDS  # a margin of more than a second


def test_a_request_whose_connection_drops_before_any_response_is_sent_again() -> None:
    # What a client sees when the server closes a pooled connection as the request goes out: the
    # server never started it, so it is no failure of the server's; it is sent once more.
    with EchoServer(drop_requests=2) as srv:
        r = run_load(srv.url, "echo", Workload.fixed(10, 4), concurrency=2, num_requests=6)
    assert srv.stats.dropped == 2
    assert (r.completed, r.failed, r.resent()) == (6, 0, 2), [(x.error, x.retries) for x in r.records]
    assert all(x.status == 200 and x.error is None for x in r.records)
    assert any("sent again" in w for w in r.warnings())


def test_a_request_dropped_twice_is_a_failure_with_its_reason() -> None:
    with EchoServer(drop_requests=2) as srv:
        r = run_load(srv.url, "echo", Workload.fixed(10, 4), concurrency=1, num_requests=2)
    assert (r.completed, r.failed) == (1, 1)
    bad = next(x for x in r.records if not x.ok)
    assert bad.retries == 1 and bad.status is None and "disconnect" in (bad.error or "").lower(), bad


# -- a watch may end a run sooner (the tuner's early stop) -------------------------------------------


def test_a_watch_that_says_stop_ends_the_run_and_keeps_only_finished_requests() -> None:
    seen: list[int] = []

    def watch(so_far: LoadResult) -> str | None:
        seen.append(len(so_far.records))
        assert all(r.ok for r in so_far.records) and so_far.duration > 0
        return "far too slow" if len(so_far.records) >= 10 else None

    with EchoServer(itl=0.005) as srv:
        r = run_load(srv.url, "echo", Workload.fixed(10, 20), concurrency=4, num_requests=200, watch=watch,
                     watch_every=5)
        sent = srv.stats.requests
    assert r.stopped == "far too slow"
    # After every 5 finished requests (a look due while one runs is skipped, on a loaded host).
    assert seen[0] == 5 and all(n % 5 == 0 for n in seen), seen
    # The run keeps exactly what the look that said stop judged; nothing more is sent after it, and
    # what was in flight then is dropped: nothing like the 200 planned reached the server.
    assert len(r.records) == seen[-1] >= 10 and sent < 100, (seen, sent)
    assert all(r_.ok and r_.e2e is not None for r_ in r.records)
    assert r.figures().completed == len(r.records)


def test_a_watch_runs_off_the_event_loop_one_look_at_a_time() -> None:
    import threading

    caller = threading.get_ident()
    lock = threading.Lock()
    looks: list[tuple[int, int]] = []

    def watch(so_far: LoadResult) -> str | None:
        assert lock.acquire(blocking=False), "two looks at once"
        try:
            time.sleep(0.1)  # slower than requests finish: the looks due meanwhile are skipped
            looks.append((threading.get_ident(), len(so_far.records)))
        finally:
            lock.release()
        return None

    with EchoServer(itl=0.001) as srv:
        r = run_load(srv.url, "echo", Workload.fixed(10, 4), concurrency=4, num_requests=40, watch=watch)
    assert looks and all(ident != caller for ident, _ in looks)
    assert len(looks) < 40  # looks due while one ran were not queued behind it
    assert r.stopped is None and r.completed == 40


def test_a_look_that_says_stop_once_every_request_finished_stops_nothing() -> None:
    looks: list[int] = []

    def watch(so_far: LoadResult) -> str | None:
        looks.append(len(so_far.records))
        time.sleep(0.5)  # the last request finishes meanwhile
        return "too late to matter"

    with EchoServer(itl=0.001) as srv:
        r = run_load(srv.url, "echo", Workload.fixed(10, 4), concurrency=4, num_requests=12, watch=watch,
                     watch_every=11)
    assert looks == [11]  # and none at the 12th: a look there could stop nothing
    assert r.stopped is None and len(r.records) == 12 and r.completed == 12
    # The run's duration ends at its last completion, not when the look that outlived it did.
    assert r.duration < 0.5


def test_a_stopped_run_keeps_exactly_what_the_look_judged() -> None:
    judged: list[tuple[int, float]] = []

    def watch(so_far: LoadResult) -> str | None:
        judged.append((len(so_far.records), so_far.duration))
        time.sleep(0.2)  # more requests finish while the look runs: they were not judged
        return "misses by far"

    with EchoServer(itl=0.002) as srv:
        r = run_load(srv.url, "echo", Workload.fixed(10, 8), concurrency=4, num_requests=400, watch=watch,
                     watch_every=8)
    assert r.stopped == "misses by far" and judged[0][0] == 8
    assert (len(r.records), r.duration) == judged[0]


def test_a_stop_ends_a_wait_for_the_next_arrival_at_once() -> None:
    def watch(so_far: LoadResult) -> str | None:
        return "misses by far"

    from slotune.loadgen.schedule import arrival_times

    due = arrival_times(3, 0.1, 1.0, 21)  # this seed: the first at ~1.4 s, the next ~5.8 s later
    assert due[0] < 2.0 and due[1] - due[0] > 5.0, due
    with EchoServer() as srv:
        started = time.perf_counter()
        r = run_load(srv.url, "echo", Workload.fixed(5, 2), rate=0.1, num_requests=3, seed=21, watch=watch)
        took = time.perf_counter() - started
    assert r.stopped == "misses by far" and len(r.records) == 1
    assert took < due[1] - 2.0, (took, due)  # it did not sleep on to the next arrival


def test_a_watch_that_fails_turns_looking_off_and_the_run_goes_on(caplog) -> None:
    calls: list[int] = []

    def watch(so_far: LoadResult) -> str | None:
        calls.append(len(so_far.records))
        raise RuntimeError("database is locked")

    with EchoServer(itl=0.001) as srv:
        r = run_load(srv.url, "echo", Workload.fixed(10, 4), concurrency=4, num_requests=40, watch=watch,
                     watch_every=5)
    assert calls == [5]  # never again after it failed
    assert r.stopped is None and r.completed == 40
    assert r.watch_error == "after 5 requests: RuntimeError: database is locked"
    assert any("early-stop check failed" in w for w in r.figures().warnings)
    assert "never retrieved" not in caplog.text
