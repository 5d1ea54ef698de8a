"""Is anything a test started still running? Answered from /proc, never from process names: vLLM
0.32 renames its engine core `VLLM::EngineCore` (setproctitle), so a command line says nothing.

slotune starts every vLLM in a process group of its own (`start_new_session`): the API server, its
engine core and any worker all carry the API server's pid as their group id. A server is gone when
its group has no live member left. Processes started under a test's own data directory
(`SLOTUNE_DATA_DIR`, inherited by every child) are found by that environment entry, so a group can be
learnt while its server runs and checked after, and a process whose group was never seen is still
found.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def _stat(pid: str) -> tuple[str, int] | None:
    """(state, process group) of a pid; None when it is gone or unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[2])


def live_members(pgid: int) -> list[int]:
    """Processes of a group that are not zombies (a zombie is gone, just not yet reaped)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(entry)
            if st is not None and st[1] == pgid and st[0] != "Z":
                pids.append(int(entry))
    return pids


def naming_data_dir(data_dir: Path) -> list[int]:
    """Live processes whose environment names this data directory (whatever their name)."""
    needle = f"SLOTUNE_DATA_DIR={data_dir}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        st = _stat(entry)
        if needle in env and st is not None and st[0] != "Z":
            found.append(int(entry))
    return found


def server_groups(data_dir: Path) -> set[int]:
    """The process groups of the servers started under this data directory: those of the processes
    naming it, less the caller's own group (where `slotune tune` or `demo` itself runs)."""
    own = os.getpgrp()
    groups = set()
    for pid in naming_data_dir(data_dir):
        st = _stat(str(pid))
        if st is not None and st[1] != own:
            groups.add(st[1])
    return groups


def left_behind(data_dir: Path, groups: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """Live processes still naming this data directory, or still in one of these groups."""
    found = set(naming_data_dir(data_dir))
    for g in groups:
        found.update(live_members(g))
    return sorted(found)


def wait_gone(pids_left, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    """Wait until `pids_left()` is empty; fail naming what is left, with its command lines."""
    deadline = time.monotonic() + timeout
    while True:
        left = pids_left()
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} still running after {timeout:.0f} s: {describe(left)}")
        time.sleep(0.5)


def describe(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = "?"
        out.append(f"{pid} {cmd[:80]}")
    return out
