"""Waiting for something a test started: poll a predicate, or start-and-poll a child process until
its HTTP readiness URL answers 200 (Prometheus, Alertmanager, `slotune sidecar`)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

import httpx
import psutil

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str = "condition", interval: float = 0.5,
               tolerate: tuple[type[BaseException], ...] = ()) -> T:
    """Poll `predicate` every `interval` seconds until it returns something truthy, and return that.

    Exceptions of the `tolerate` types count as "not yet" (a server that is restarting). After
    `timeout` seconds raises AssertionError naming `what` and the last value or exception seen."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except tolerate as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` or one of its children holds a listening socket on TCP `port`."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                   for p in procs for c in p.net_connections(kind="inet"))
    except psutil.Error:
        return False


def wait_http_ready(proc: subprocess.Popen[bytes], url: str, timeout: float, log: Callable[[], str],
                    interval: float = 0.1) -> None:
    """Wait until `proc` listens on `url`'s port and GET `url` answers 200. Raises AssertionError with
    the tail of `log()` when the process exits first or `timeout` seconds pass (the caller stops the
    process).

    The port check is there because a port from `free_port()` may be taken by another test's server
    before `proc` binds it: that server's 200 must not pass for `proc`'s (a sidecar test once read
    another sidecar's findings this way)."""
    name = proc.args[0] if isinstance(proc.args, list) else proc.args
    port = httpx.URL(url).port

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with {proc.returncode}: {log()[-3000:]}")
        if port is not None and not listens_on(proc.pid, port):
            return False
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, timeout, f"{url} to answer 200", interval=interval)
    except AssertionError as exc:
        if proc.poll() is not None:
            raise
        raise AssertionError(f"{name} not ready in {timeout:.0f} s: {log()[-3000:]}") from exc
