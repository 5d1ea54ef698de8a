"""Real HTTP servers on 127.0.0.1 for tests and benchmarks: a receiver that records every POST (the
sidecar's signed notifications, Alertmanager's webhooks; it can be told to fail) and a server that
serves /metrics pages (real captures) in turn. Both run in a background thread."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from slotune.sidecar import signing


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
    """Records POSTs (`Post`: path, headers, raw body, `.json`); `fail_with` makes it answer an error.
    Serve it with `receiver()`, or from a thread of your own (`serve_forever`)."""

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
    """A `Receiver` served from a background thread for the block; `port` 0 picks a free one."""
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
        if self.path != "/metrics":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with srv.lock:
            i = srv.served % len(srv.texts) if srv.cycle else min(srv.served, len(srv.texts) - 1)
            body = srv.texts[i].encode()
            srv.served += 1
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class PageServer(ThreadingHTTPServer):
    """Serves pages as /metrics on 127.0.0.1: one page, or several in turn (round and round, or with
    `cycle=False` the last one from then on). `served` counts the /metrics answers; any other path
    is a 404."""

    daemon_threads = True

    def __init__(self, *texts: str, cycle: bool = True) -> None:
        self.texts, self.cycle, self.served, self.lock = texts, cycle, 0, threading.Lock()
        super().__init__(("127.0.0.1", 0), _Metrics)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def page_server(*texts: str, cycle: bool = True) -> Iterator[PageServer]:
    """A `PageServer` served from a background thread for the block."""
    srv = PageServer(*texts, cycle=cycle)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
