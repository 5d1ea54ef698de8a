"""`slotune demo` (what `make demo` runs), shortened: a real vLLM on the tiny model, a short load,
the measured figures, a diagnosis, a one-trial study on SQLite; it must end by itself, exit 0, and
leave no vLLM behind."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import pytest
from tuner_helpers import REPO

from tests.integration.procs import left_behind, live_members, server_groups

pytestmark = pytest.mark.integration


def test_demo_runs_end_to_end_and_stops_everything(tmp_path):
    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "slotune.cli.main", "demo", "--num-requests", "12", "--concurrency", "2",
               "--trials", "1"]
    env = {**os.environ, "SLOTUNE_DATA_DIR": str(data), "COLUMNS": "160"}
    log = tmp_path / "demo.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    # Learn the process group of every vLLM the demo starts while it runs (checked after it ends),
    # and that one of them held an engine core besides its API server.
    groups: set[int] = set()
    with_engine = False
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        seen = server_groups(data)
        groups |= seen
        with_engine = with_engine or any(len(live_members(g)) >= 2 for g in seen)
        time.sleep(0.5)
    if proc.poll() is None:
        proc.kill()
    text = log.read_text()
    assert proc.wait() == 0, text[-4000:]
    for expected in ("vLLM ready at", "client side", "server side", "TTFT p50 / p95 / p99 (mean)", "diagnosis:",
                     "trial 0:", "demo done"):
        assert expected in text, f"{expected!r} missing from:\n{text[-4000:]}"
    assert "Traceback" not in text
    assert groups and with_engine, "no vLLM (with its engine core) seen under the demo's data directory"
    assert left_behind(data, groups) == []
    with sqlite3.connect(data / "slotune.db") as db:
        snapshots = db.execute("SELECT count(*) FROM slotune_snapshots").fetchone()[0]
        trials = db.execute("SELECT count(*) FROM slotune_trials").fetchone()[0]
    assert snapshots >= 1 and trials == 1


def test_demo_refuses_a_bad_slo_before_starting_anything(tmp_path):
    env = {**os.environ, "SLOTUNE_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "slotune.cli.main", "demo", "--slo", "ttft<=1"],
                         check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith("error: bad SLO target") and len(out.stderr.strip().splitlines()) == 1
