"""Helpers for the tuner's integration tests: run `slotune tune` as a subprocess with its own data
directory, and find the vLLM processes it started (by that directory in their environment)."""

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


def processes_with_data_dir(data_dir: Path, exclude: set[int] = frozenset()) -> list[int]:
    """PIDs whose environment names this data directory (the tune process and the vLLMs it started)."""
    needle = f"SLOTUNE_DATA_DIR={data_dir}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude or int(entry) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in env and b"vllm" in cmdline:
            found.append(int(entry))
    return found


def wait_until(predicate, timeout: float, interval: float = 0.5, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
