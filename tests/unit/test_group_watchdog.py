"""The watchdog that takes a server's process group down when slotune dies (`slotune.group_watchdog`).

Real processes, no vLLM: the "server" is a shell group that ignores SIGTERM, as vLLM 0.32 does in
effect while it starts (its start-up handler's KeyboardInterrupt is swallowed), so only the SIGKILL
after the grace can end it. The watchdog is started by `ManagedServer`'s own code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from slotune.server import ManagedServer
from slotune.vllm_config import VllmConfig
from tests.support.paths import REPO
from tests.support.procs import live_members, wait_gone

# Both processes ignore SIGTERM (an ignored disposition survives exec).
DEAF_GROUP = ["sh", "-c", "trap '' TERM; sleep 300 & sleep 300"]


def _server(tmp_path: Path) -> ManagedServer:
    return ManagedServer(VllmConfig(model="unused"), log_dir=tmp_path, orphan_grace=0.5)


def test_a_group_is_taken_down_when_the_process_that_started_it_is_sigkilled(tmp_path):
    parent_code = textwrap.dedent(f"""
        import subprocess, sys, time
        from pathlib import Path
        from slotune.server import ManagedServer
        from slotune.vllm_config import VllmConfig
        group = subprocess.Popen({DEAF_GROUP!r}, start_new_session=True)
        server = ManagedServer(VllmConfig(model="unused"), log_dir=Path({str(tmp_path)!r}), orphan_grace=0.5)
        server._start_watchdog(group.pid)
        print(group.pid, server.watchdog.pid, flush=True)
        time.sleep(300)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, env=env, text=True)
    try:
        pgid, watchdog = (int(x) for x in parent.stdout.readline().split())
        wait_gone(lambda: [] if len(live_members(pgid)) >= 2 else [0], 20, what="the shell's sleep")
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        wait_gone(lambda: live_members(pgid), 20, what="the dead parent's process group")
        wait_gone(lambda: live_members(watchdog), 20, what="the watchdog")
    finally:
        parent.kill()
        parent.wait()
        if live_members(pgid):
            os.killpg(pgid, signal.SIGKILL)


def test_the_watchdog_leaves_once_its_group_ends_while_slotune_lives(tmp_path):
    group = subprocess.Popen(["sleep", "300"], start_new_session=True)
    server = _server(tmp_path)
    server._start_watchdog(group.pid)
    try:
        group.kill()
        group.wait()
        # The lifeline is still open: the watchdog leaves because nothing of its group is alive, so a
        # recycled pid can never become its target.
        assert server.watchdog.wait(timeout=20) == 0
    finally:
        server._stop_watchdog()
        group.kill()


def test_stopping_the_watchdog_with_its_group_gone_ends_it_at_once(tmp_path):
    group = subprocess.Popen(DEAF_GROUP, start_new_session=True)
    server = _server(tmp_path)
    server._start_watchdog(group.pid)
    watchdog = server.watchdog
    os.killpg(group.pid, signal.SIGKILL)
    group.wait()
    wait_gone(lambda: live_members(group.pid), 10, what="the killed group")
    server._stop_watchdog()
    assert watchdog.returncode == 0 and server.watchdog is None and server._lifeline is None
