"""`slotune sidecar` as a real process for the integration tests, and a load that keeps a few
completions in flight and rides out a server restart (bounded in time and count)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from slotune.server import free_port
from tests.support.polling import wait_http_ready

# What a predicate polling a sidecar (or the vLLM behind it) may raise while it restarts: "not yet".
RESTARTING = (httpx.HTTPError, KeyError, ValueError)


class SidecarProcess:
    def __init__(self, settings: dict[str, Any], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.workdir = workdir
        self.port = int(settings["port"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "sidecar.log"

    def start(self, timeout: float = 60) -> SidecarProcess:
        path = self.workdir / "sidecar.yaml"
        path.write_text(yaml.safe_dump(self.settings))
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "slotune.cli.main", "sidecar", "--config", str(path)],
                                     stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        log.close()
        wait_http_ready(self.proc, f"{self.url}/readyz", timeout, self.log, interval=0.2)
        return self

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextmanager
def sidecar(settings: dict[str, Any], workdir: Path, env: dict[str, str] | None = None) -> Iterator[SidecarProcess]:
    """A started sidecar on a free port; a port another process took between `free_port()` and the
    sidecar's bind is retried with a new one (twice), since that race is the machine's, not the code's."""
    for attempt in range(3):
        proc = SidecarProcess({"host": "127.0.0.1", "port": free_port(), **settings}, workdir, env)
        try:
            proc.start()
            break
        except AssertionError:
            proc.stop()
            if attempt == 2 or "cannot listen" not in proc.log() or "port" in settings:
                raise
    try:
        yield proc
    finally:
        proc.stop()


class Load:
    """`concurrency` workers each sending completions (`pause` seconds apart) until stopped or
    `max_seconds` have passed, so short-window rates stay defined; connection errors (a restarting
    server) are counted and retried after half a second."""

    def __init__(self, base_url: str, *, concurrency: int = 4, max_tokens: int = 16, prompt_words: int = 20,
                 pause: float = 0.0, max_seconds: float = 600) -> None:
        self.base_url, self.max_tokens, self.prompt_words, self.pause = base_url, max_tokens, prompt_words, pause
        self.stop_flag = threading.Event()
        self.deadline = time.monotonic() + max_seconds
        self.ok = self.rejected = self.errors = 0  # rejected: an HTTP status other than 200
        self.threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(concurrency)]

    def _worker(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=60) as client:
            while not self.stop_flag.is_set() and time.monotonic() < self.deadline:
                try:
                    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "hello " * self.prompt_words,
                                                             "max_tokens": self.max_tokens, "ignore_eos": True})
                    self.ok += r.status_code == 200
                    self.rejected += r.status_code != 200
                except httpx.HTTPError:
                    self.errors += 1
                    self.stop_flag.wait(0.5)
                    continue
                self.stop_flag.wait(self.pause)

    def __enter__(self) -> Load:  # noqa: PYI034
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(70)
