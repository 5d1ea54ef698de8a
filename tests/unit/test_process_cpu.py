"""CPU time of a process group, read from real processes: a group leader that only waits and a busy
child in its group (as vLLM's API server and its `VLLM::EngineCore`). No fakes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from slotune.collectors.process_cpu import GroupCpu, read_group_cpu, utilization

# The leader starts one busy child and sleeps: only the child (not the leader) burns CPU.
LEADER = ("import subprocess, sys, time\n"
          "subprocess.Popen([sys.executable, '-c', 'while True: pass'])\n"
          "time.sleep(600)\n")


@pytest.fixture
def leader() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", LEADER], start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def group(leader: subprocess.Popen[bytes]) -> int:
    return leader.pid  # its own session: the group id is the leader's pid


def _members(pgid: int, n: int) -> GroupCpu:
    deadline = time.monotonic() + 30  # waiting for the child to start, not a timed assertion
    while time.monotonic() < deadline:
        r = read_group_cpu(pgid)
        if r is not None and r.processes >= n:
            return r
        time.sleep(0.05)
    raise AssertionError(f"group {pgid} never had {n} processes")


def _busy_for(pgid: int, seconds: float) -> GroupCpu:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = read_group_cpu(pgid)
        assert r is not None
        if r.seconds >= seconds:
            return r
        time.sleep(0.05)
    raise AssertionError(f"group {pgid} never used {seconds} s of CPU")


def test_reads_every_process_of_the_group_not_only_its_leader(group: int) -> None:
    before = _members(group, 2)
    assert before.processes == 2 and before.pgid == group
    assert before.cores == len(os.sched_getaffinity(group))
    after = _busy_for(group, before.seconds + 0.5)
    # The leader sleeps: the CPU time that grew is the child's, read through the group.
    import psutil
    leader = psutil.Process(group).cpu_times()
    assert after.seconds - before.seconds >= 0.45 > leader.user + leader.system
    u = utilization(before, after)
    assert u is not None and 0 < u <= 1


def test_a_group_that_is_gone_reads_none(leader: subprocess.Popen[bytes]) -> None:
    _members(leader.pid, 2)
    os.killpg(leader.pid, signal.SIGKILL)
    leader.wait()  # reaped; the orphaned child is reaped by init
    deadline = time.monotonic() + 30
    while read_group_cpu(leader.pid) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert read_group_cpu(leader.pid) is None


def test_utilization_refuses_readings_it_cannot_compare() -> None:
    a = GroupCpu(pgid=7, seconds=10.0, cores=2, processes=2, timestamp=100.0)
    assert utilization(a, GroupCpu(7, 12.0, 2, 2, 102.0)) == pytest.approx(0.5)  # 2 CPU s over 2 s on 2 cores
    assert utilization(a, GroupCpu(7, 9.0, 2, 1, 102.0)) is None  # a process exited: its time is gone
    assert utilization(a, GroupCpu(8, 12.0, 2, 2, 102.0)) is None  # another group
    assert utilization(None, a) is None and utilization(a, None) is None


def test_a_measured_window_carries_the_groups_cpu_into_the_engine_cpu_fact(group: int, fixtures_dir: Path) -> None:
    # Real captures served over real HTTP stand in for vLLM's page; the CPU is the busy group's.
    from slotune.measurement import measure_window
    from slotune.playbooks.facts import build_facts
    from tests.support.http_servers import page_server

    _busy_for(group, 0.1)
    pages = [(fixtures_dir / n).read_text() for n in ("vllm-0.32-cpu-under-load.prom", "vllm-0.32-cpu-after-load.prom")]
    with page_server(*pages) as srv:
        watched = measure_window(srv.url, 0.5, judge=False, process_group=group).server
        unmanaged = measure_window(srv.url, 0.2, judge=False).server
    assert watched.engine_cpu_utilization is not None and 0 < watched.engine_cpu_utilization <= 1
    assert build_facts(watched)["engine_cpu_utilization"] == watched.engine_cpu_utilization
    assert unmanaged.engine_cpu_utilization is None  # a server slotune did not start: not measured
