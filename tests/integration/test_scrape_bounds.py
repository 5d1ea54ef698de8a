"""A slow or hostile target cannot stall or bloat the sidecar (issue 15, section 3), against real
loopback HTTP servers: one that drips a line at a time and never ends, one that streams an endless
page, one that declares a huge one. No timed assertions: what is checked is that the scrape says it
was cut at its bound, and that the API answered while a scrape was still running."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from slotune.api.app import create_app
from slotune.collectors.vllm_metrics import scrape
from slotune.errors import TargetError
from slotune.sidecar.config import load_settings
from slotune.sidecar.runtime import Sidecar
from slotune.store import open_store
from tests.support.pages import AFTER, page

pytestmark = pytest.mark.integration


@contextmanager
def hostile(mode: str) -> Iterator[str]:
    """A loopback HTTP/1.1 server. `drip`: a real page, one line every 0.2 s, then forever blank lines;
    `flood`: an endless chunk stream of valid-looking lines; `declared`: Content-Length of 300 MB."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            if mode == "declared":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 300000000\r\n\r\n")
                line = b"vllm:num_requests_running 1\n" * 1000
                while not stop.is_set():
                    conn.sendall(line)
            elif mode == "flood":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
                line = b"# filler\n" * 10_000
                while not stop.is_set():
                    conn.sendall(line)
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
                lines = [ln.encode() + b"\n" for ln in page(AFTER).splitlines()]
                i = 0
                while not stop.is_set():
                    conn.sendall(lines[i] if i < len(lines) else b"\n")
                    i += 1
                    stop.wait(0.2)
        except OSError:
            pass  # the client hung up: what a bounded scrape does
        finally:
            conn.close()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        srv.close()


def test_a_dripping_page_is_cut_at_the_scrape_timeout() -> None:
    with hostile("drip") as url, pytest.raises(TargetError, match="did not finish within 1 s"):
        scrape(url, timeout=1.0)


def test_an_endless_page_is_cut_at_the_byte_limit() -> None:
    with hostile("flood") as url, pytest.raises(TargetError, match="over the limit of 1048576 bytes"):
        scrape(url, timeout=60.0, max_bytes=1 << 20)


def test_a_declared_huge_page_is_refused_before_reading() -> None:
    with hostile("declared") as url, pytest.raises(TargetError, match="page of 300000000 bytes is over the limit"):
        scrape(url, timeout=60.0)


def test_the_api_answers_while_a_scrape_drips_and_readiness_follows_scrape_health(tmp_path: Path) -> None:
    with hostile("drip") as url:
        settings = load_settings(None, target=url, data_dir=tmp_path, interval=10, scrape_timeout=2, down_after=1)
        sidecar = Sidecar(settings, store=open_store(f"sqlite:///{tmp_path / 'db.sqlite'}"))
        sidecar.start(threads=False)
        client = TestClient(create_app(sidecar))
        assert client.get("/readyz").status_code == 200
        tick = threading.Thread(target=sidecar.controller.tick)
        tick.start()
        while sidecar.controller.scrape_started is None and tick.is_alive():
            time.sleep(0.01)
        # The tick is mid-scrape: reads answer now, they do not wait for it.
        status = client.get("/api/v1/status")
        diagnosis = client.get("/api/v1/diagnosis")
        still_scraping = sidecar.controller.scrape_started is not None
        tick.join()
        assert still_scraping, "the reads should have answered while the scrape was still running"
        assert status.status_code == 200 and diagnosis.status_code == 200
        assert status.json()["ticks"] == 0  # the tick had not finished when status answered
        # The scrape was cut at its bound, and readiness says the target is not being scraped.
        assert "did not finish within 2 s" in (sidecar.controller.last_error or "")
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "failed 1 scrapes in a row" in ready.json()["reason"], ready.text
        assert client.get("/api/v1/status").json()["target_up"] is False
        sidecar.stop()
