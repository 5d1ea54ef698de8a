"""The watchdog that takes a managed vLLM down when slotune dies, however it dies.

Run as `python -m slotune.group_watchdog PGID GRACE_S` with its stdin the read end of a pipe whose
write end only slotune holds. It waits on stdin; end-of-file means every holder of the write end is
gone: slotune closed it in `ManagedServer.stop()`, or slotune died (even by SIGKILL, whatever thread
started the server). Then, if any process of group PGID is still alive, it sends the group SIGTERM,
waits up to GRACE_S seconds, and sends SIGKILL to what is left. It also exits, doing nothing, once the
group has no live process left (a server that ended on its own), so a recycled pid never makes an
unrelated group its target. It exits 0 in every case.

Why not rely on PR_SET_PDEATHSIG: it is tied to the *thread* that forked (a server started from a
worker thread would be signalled when that thread ends), it reaches only vLLM's API server, not the
engine core it spawns, and the SIGTERM it sends is lost while vLLM 0.32 starts: its start-up handler
raises KeyboardInterrupt, which `vllm.utils.network_utils.zmq_socket_ctx` swallows while the API server
waits for the engine core's handshake, so start-up goes on and the server serves with no parent.
SIGKILL to the group after a grace cannot be lost.

Standard library only, and nothing of slotune is imported: it must start fast and outlive slotune.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from pathlib import Path

# How often, while slotune lives, the watchdog checks that its group still has a live process.
CHECK_EVERY_S = 2.0


def live_members(pgid: int) -> list[int]:
    """Processes of group `pgid` that are not zombies (a zombie is dead, only not yet reaped)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def _signal(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def take_down(pgid: int, grace: float) -> None:
    """SIGTERM the group, then SIGKILL whatever is still alive after `grace` seconds."""
    if not live_members(pgid):
        return
    _signal(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not live_members(pgid):
            return
        time.sleep(0.1)
    _signal(pgid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    pgid, grace = int(argv[0]), float(argv[1])
    # A terminal's Ctrl-C or hang-up is meant for slotune; this process must outlive it to act.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while True:
        readable, _, _ = select.select([0], [], [], CHECK_EVERY_S)
        if readable and not os.read(0, 4096):
            take_down(pgid, grace)
            return 0
        if not readable and not live_members(pgid):
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
