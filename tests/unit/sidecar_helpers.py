"""Helpers for the sidecar's tests: a scripted scrape over the real vLLM 0.32 captures with a
settable clock, a real HTTP receiver on 127.0.0.1 that records signed notifications (and can be
told to fail), and a real HTTP server that serves a capture as /metrics."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from slotune.collectors.exposition import Scrape, parse
from slotune.errors import TargetError
from slotune.sidecar import signing

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "vllm-0.32.0-cpu"
UNDER = "vllm-0.32-cpu-under-load.prom"
AFTER = "vllm-0.32-cpu-after-load.prom"
SPEC_UNDER = "vllm-0.32-cpu-specdecode-under-load.prom"
SPEC_AFTER = "vllm-0.32-cpu-specdecode-after-load.prom"


def page(name: str) -> str:
    return (FIXTURES / name).read_text()


class Clock:
    """Settable time, starting now (signatures carry it and receivers check it against real time)."""

    def __init__(self, t: float | None = None) -> None:
        # A whole second: the store keeps datetimes to the microsecond, and a start with a finer
        # fraction could round a stored instant up, so "exactly the cool-down later" would fall short.
        self.t = float(int(time.time())) if t is None else t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class Script:
    """Each scrape returns the next page in `pages` (None: the target is down), stamped with the clock;
    after the last one, the last page again."""

    clock: Clock
    pages: list[str | None]
    calls: int = 0

    def __call__(self, url: str) -> Scrape:
        text = self.pages[min(self.calls, len(self.pages) - 1)]
        self.calls += 1
        if text is None:
            raise TargetError(f"cannot scrape {url}: ConnectError: connection refused")
        return parse(text, url=url, timestamp=self.clock())


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ReceiverState:
    posts: list[Post] = field(default_factory=list)
    fail_with: int | None = None  # answer this status instead of 200


class Receiver(ThreadingHTTPServer):
    """Records POSTs with their headers and raw body; `fail_with` makes it answer an error."""

    def __init__(self, port: int = 0) -> None:
        self.state = ReceiverState()
        self.allow_reuse_address = True
        super().__init__(("127.0.0.1", port), _Recorder)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def posts(self) -> list[Post]:
        return self.state.posts

    def verified(self, secret: str) -> list[Post]:
        return [p for p in self.posts if signing.verify(secret, p.body, p.headers.get(signing.TIMESTAMP_HEADER),
                                                        p.headers.get(signing.SIGNATURE_HEADER))]


class _Recorder(BaseHTTPRequestHandler):
    server: Receiver

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        code = self.server.state.fail_with or 200
        if code == 200:
            self.server.state.posts.append(Post(self.path, dict(self.headers.items()), body))
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


@contextmanager
def receiver(port: int = 0) -> Iterator[Receiver]:
    srv = Receiver(port)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


class _Metrics(BaseHTTPRequestHandler):
    server: PageServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        with srv.lock:
            body = srv.texts[srv.served % len(srv.texts)].encode()
            srv.served += 1
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class PageServer(ThreadingHTTPServer):
    """Serves real captures as /metrics on 127.0.0.1: one page, or several in turn."""

    daemon_threads = True

    def __init__(self, *texts: str) -> None:
        self.texts, self.served, self.lock = texts, 0, threading.Lock()
        super().__init__(("127.0.0.1", 0), _Metrics)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def page_server(*texts: str) -> Iterator[PageServer]:
    srv = PageServer(*texts)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `predicate` until truthy (returns its value) or fail after `timeout` seconds naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
