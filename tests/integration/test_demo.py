"""`slotune demo` (what `make demo` runs), shortened: a real vLLM, a short load, the measured figures,
a diagnosis, a one-trial study on SQLite with the default measured again; it must end by itself, exit
0, and leave no vLLM behind. On the real model and real ShareGPT prompts (the default), which must
answer its question right."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slotune import platforms
from tests.support.paths import CACHE, REPO
from tests.support.procs import left_behind, live_members, server_groups

pytestmark = pytest.mark.integration


def run_demo(cmd: list[str], data: Path, log: Path, deadline_s: float) -> tuple[int, str, set[int], bool]:
    """Run the demo to its end (killed past `deadline_s`), learning while it runs the process group of
    every vLLM it starts (checked after it ends) and whether one of them held an engine core besides
    its API server: `(exit code, output, groups, with_engine)`."""
    env = {**os.environ, "SLOTUNE_DATA_DIR": str(data), "COLUMNS": "160"}
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    groups: set[int] = set()
    with_engine = False
    deadline = time.monotonic() + deadline_s
    while proc.poll() is None and time.monotonic() < deadline:
        seen = server_groups(data)
        groups |= seen
        with_engine = with_engine or any(len(live_members(g)) >= 2 for g in seen)
        time.sleep(0.5)
    if proc.poll() is None:
        proc.kill()
    return proc.wait(), log.read_text(), groups, with_engine


# Three vLLM starts (the demo's, one trial, the default re-measured), vLLM confined to one core: about
# 6 minutes on an idle 2-core host, far more on a busy one. One test, on the real model (the default):
# the tiny model's run of the same pipeline (`--model tiny`) checked nothing this one does not, and
# took 4 minutes of CI.
@pytest.mark.timeout(2700)
def test_demo_on_the_real_model_answers_measures_and_stops_everything(tmp_path):
    from slotune.smollm2 import build_smollm2

    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    # The demo builds the model into its data directory; the session's cached build is the same files.
    (data / "models" / "smollm2").symlink_to(build_smollm2(CACHE / "models" / "smollm2"))
    # Small explicit sizes (they win over the demo's sizing): the sizing then picks the longest replies
    # that 8 requests can have in one of its windows on this host.
    cmd = [sys.executable, "-m", "slotune.cli.main", "demo", "--num-requests", "8", "--concurrency", "2",
           "--trials", "1"]
    rc, text, groups, with_engine = run_demo(cmd, data, tmp_path / "demo.log", deadline_s=2400)
    assert rc == 0, text[-4000:]
    answer = next((line for line in text.splitlines() if "smollm2 answers:" in line), "")
    assert "paris" in answer.lower(), text[-4000:]
    for expected in ("SmolLM2-135M-Instruct", "vLLM ready at", "sizing: vLLM start", "workload 'sharegpt-demo'",
                     "8 requests at concurrency 2", "client side", "server side", "TTFT p50 / p95 / p99 (mean)",
                     "diagnosis:", "trial 0:", "re-measuring", "verdict:", "demo done"):
        assert expected in text, f"{expected!r} missing from:\n{text[-4000:]}"
    # The caps the sizing line names are the ones the workload file (and the load line) carries.
    sizing = next(line for line in text.splitlines() if line.startswith("sizing:"))
    caps = re.search(r"prompts <= (\d+) tokens, replies <= (\d+)", sizing)
    assert caps, sizing
    assert f"ShareGPT prompts up to {caps[1]} tokens, replies capped at {caps[2]}" in text
    # On a CPU without native bf16 the platform serves in float32, and the demo says so.
    if platforms.cpu_dtype(platforms.cpu_flags()) == "float32":
        assert "--dtype float32" in text and "no native bf16" in text
    assert "Traceback" not in text
    assert groups and with_engine, "no vLLM (with its engine core) seen under the demo's data directory"
    assert left_behind(data, groups) == []
    with sqlite3.connect(data / "slotune.db") as db:
        snapshots = db.execute("SELECT count(*) FROM slotune_snapshots").fetchone()[0]
        states = [row[0] for row in db.execute("SELECT state FROM slotune_trials")]
    # One trial, then the default measured a second time: no verdict from a single sample.
    assert snapshots >= 1 and sorted(states) == ["complete", "remeasure"], states


def test_demo_refuses_a_bad_slo_before_starting_anything(tmp_path):
    env = {**os.environ, "SLOTUNE_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "slotune.cli.main", "demo", "--slo", "ttft<=1"],
                         check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith("error: --slo: bad SLO target") and len(out.stderr.strip().splitlines()) == 1
