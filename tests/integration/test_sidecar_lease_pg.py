"""One writer per database on PostgreSQL: a second `slotune sidecar` on the same database stops with
one line while the first runs, and the lease goes with the first even when it is killed -9 (the
server drops a dead session's advisory lock). Real PostgreSQL, real sidecar processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slotune.server import free_port
from tests.support.http_servers import page_server
from tests.support.pages import UNDER, page
from tests.support.polling import wait_until
from tests.support.sidecar_process import RESTARTING, SidecarProcess

pytestmark = pytest.mark.integration


def _second(settings: dict[str, object], workdir: Path) -> subprocess.CompletedProcess[str]:
    cfg = workdir / "second.yaml"
    cfg.write_text(yaml.safe_dump({**settings, "port": free_port()}))
    return subprocess.run([sys.executable, "-m", "slotune.cli.main", "sidecar", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_a_second_sidecar_is_refused_and_kill_9_frees_the_lease(postgres_url: str, tmp_path: Path) -> None:
    with page_server(page(UNDER)) as target:
        settings = {"target": target.url, "host": "127.0.0.1", "port": free_port(), "interval": 1,
                    "database_url": postgres_url}
        first = SidecarProcess(settings, tmp_path).start()
        try:
            out = _second(settings, tmp_path)
            lines = out.stderr.strip().splitlines()
            assert out.returncode == 1 and len(lines) == 1, out.stderr
            assert lines[0].startswith("error: another slotune sidecar is already writing to postgresql")
            assert first.proc is not None and first.proc.poll() is None  # the first one runs on
        finally:
            assert first.proc is not None
            first.proc.kill()  # kill -9: no clean release
            first.proc.wait(10)
        third = SidecarProcess({**settings, "port": free_port()}, tmp_path)
        wait_until(lambda: _try_start(third), 60, "a new sidecar to take the dead one's lease", tolerate=RESTARTING)
        third.stop()


def _try_start(proc: SidecarProcess) -> bool:
    try:
        proc.start()
    except AssertionError:
        return False
    return True
