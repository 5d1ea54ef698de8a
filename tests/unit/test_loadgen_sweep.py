"""find_max_rate against a real HTTP server with a capacity (tests.support.echo_server, serial: one request
generates at a time, so latency climbs once arrivals outpace it)."""

from __future__ import annotations

import pytest

from slotune.errors import ConfigError
from slotune.loadgen.sweep import find_max_rate, requests_for
from slotune.loadgen.workload import Workload
from slotune.slo import SloSpec
from tests.support.echo_server import EchoServer


def test_finds_a_rate_between_passing_and_failing() -> None:
    slo = SloSpec.parse("e2e_p95<=30ms")
    seen = []
    with EchoServer(ttft=0.004, serial=True) as srv:  # ~4-5 ms a request: at most ~200-250 req/s
        found = find_max_rate(srv.url, "echo", Workload.fixed(5, 2), slo, num_requests=60, start_rate=25,
                              max_steps=7, on_point=seen.append)
    assert found.points == seen and 2 <= len(found.points) <= 7
    assert found.max_rate is not None and found.best is not None
    assert found.max_rate <= 300  # above ~250 req/s the server cannot keep up at all
    assert found.best.meets_slo() and found.best.rate == found.max_rate
    failing = [p.rate for p in found.points if not p.met]
    assert failing and min(failing) > found.max_rate
    d = found.to_dict()
    assert d["max_rate"] == found.max_rate and len(d["points"]) == len(found.points)


def test_unmeetable_slo_gives_none_in_bounded_steps() -> None:
    with EchoServer(ttft=0.002) as srv:
        found = find_max_rate(srv.url, "echo", Workload.fixed(5, 2), SloSpec.parse("ttft_p50<=1us"),
                              num_requests=5, start_rate=50, max_steps=3)
    assert found.max_rate is None and found.best is None
    assert [p.rate for p in found.points] == [50, 25, 12.5]  # halving down, three steps


def test_arguments() -> None:
    assert requests_for(1, 10) == 20 and requests_for(30, 10) == 300 and requests_for(1000, 10) == 400
    with pytest.raises(ConfigError):
        find_max_rate("http://127.0.0.1:1", "m", Workload.fixed(5, 2), SloSpec.parse("ttft_p95<=1s"), max_steps=0)
