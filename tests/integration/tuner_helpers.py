"""Helpers for the tuner's integration tests: run `slotune tune` as a subprocess with its own data
directory (the vLLM processes it starts are found by that directory: see `procs`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tune_cmd(model: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "slotune.cli.main", "tune", "--model", str(model), "--input-len", "48",
            "--output-len", "16", "--concurrency", "4", "--num-requests", "20", "--remeasure", "0",
            "--slo", "ttft_p95<=5s,e2e_p95<=20s", *args]


def spawn(cmd: list[str], data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SLOTUNE_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def wait_until(predicate, timeout: float, interval: float = 0.5, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
