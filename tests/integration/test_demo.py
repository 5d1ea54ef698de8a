"""`slotune demo` (what `make demo` runs), shortened: a real vLLM on the tiny model, a short load,
the measured figures, a diagnosis, a one-trial study on SQLite; it must end by itself, exit 0, and
leave no vLLM behind."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest
from tuner_helpers import REPO, processes_with_data_dir

pytestmark = pytest.mark.integration


def test_demo_runs_end_to_end_and_stops_everything(tmp_path):
    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "slotune.cli.main", "demo", "--num-requests", "12", "--concurrency", "2",
               "--trials", "1"]
    env = {**os.environ, "SLOTUNE_DATA_DIR": str(data), "COLUMNS": "160"}
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    for expected in ("vLLM ready at", "client side", "server side", "TTFT p50 / p95 / p99 (mean)", "diagnosis:",
                     "trial 0:", "demo done"):
        assert expected in text, f"{expected!r} missing from:\n{text[-4000:]}"
    assert "Traceback" not in text
    assert processes_with_data_dir(data) == []
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
