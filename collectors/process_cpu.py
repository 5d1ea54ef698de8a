"""CPU time of a process group: the server slotune started, all of it.

vLLM's `process_cpu_seconds_total` covers only the API server process; vLLM 0.32 runs its engine in
another process (`VLLM::EngineCore`), where a CPU backend's model runs. Where slotune started vLLM
(in its own process group, `ManagedServer.process_group`), it reads every process of the group:

    before = read_group_cpu(pgid); ...; after = read_group_cpu(pgid)
    utilization(before, after) -> CPU seconds / wall seconds / cores allowed (0..1), or None

CPU time of a process that exited inside the window is lost (the figure is then a lower bound;
a reading that went down is refused: None).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class GroupCpu:
    """One reading: `seconds` of user + system CPU time of the group's live processes (children
    reaped by them included), `cores` the group leader may run on, at `timestamp` (monotonic s)."""

    pgid: int
    seconds: float
    cores: int
    processes: int
    timestamp: float


def read_group_cpu(pgid: int) -> GroupCpu | None:
    """Read process group `pgid`; None when no process of it is left (or none can be read)."""
    now = time.monotonic()
    total, count, cores = 0.0, 0, None
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) != pgid:
                continue
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
            count += 1
            if proc.pid == pgid or cores is None:
                cores = len(proc.cpu_affinity() or ()) or None
        except (ProcessLookupError, psutil.Error, OSError):
            continue  # gone between the listing and the read, or not ours to read
    if count == 0:
        return None
    return GroupCpu(pgid, total, cores or (os.cpu_count() or 1), count, now)


def utilization(before: GroupCpu | None, after: GroupCpu | None) -> float | None:
    """CPU seconds the group spent between two readings / wall seconds / cores allowed (0..1; a
    group busy on all its cores reads 1). None when a reading is missing or not of one group."""
    if before is None or after is None or before.pgid != after.pgid:
        return None
    wall = after.timestamp - before.timestamp
    used = after.seconds - before.seconds
    if wall <= 0 or used < 0:
        return None
    return min(used / wall / max(after.cores, 1), 1.0)
