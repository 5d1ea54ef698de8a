"""`slotune bench` end to end against a real streaming HTTP server on 127.0.0.1 (tests.support.echo_server)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.echo_server import EchoServer


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slotune.cli.main", "bench", *args], check=False,
                          capture_output=True,
                          text=True, timeout=timeout)


def one_error_line(out: subprocess.CompletedProcess[str]) -> str:
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "Traceback" not in out.stderr
    return lines[0]


@pytest.fixture(scope="module")
def echo():
    with EchoServer(itl=0.0005) as srv:
        yield srv


def test_json_has_collect_keys_and_load_figures(echo: EchoServer, tmp_path: Path) -> None:
    out_file = tmp_path / "r.json"
    out = run("--target", echo.url, "--input-len", "30", "--output-len", "6", "--concurrency", "3",
              "--num-requests", "12", "--slo", "ttft_p95<=2s,e2e_p95<=5s", "--json", str(out_file))
    assert out.returncode == 0, out.stderr
    assert "end-to-end" in out.stdout  # the human table
    d = json.loads(out_file.read_text())
    for key in ("ttft_seconds", "tpot_seconds", "itl_seconds", "e2e_seconds"):
        assert set(d[key]) >= {"p50", "p95", "p99", "mean", "count"}
    assert d["completed"] == 12 and d["failed"] == 0
    assert d["request_throughput"] > 0 and d["goodput"] == pytest.approx(d["request_throughput"])
    assert [s["met"] for s in d["slo"]] == [True, True]
    assert d["total_input_tokens"] == 12 * 30 and d["total_output_tokens"] == 12 * 6


def test_json_to_stdout_is_only_json(echo: EchoServer) -> None:
    out = run("--target", echo.url + "/v1", "--workload", "chat", "--rate", "100", "--num-requests", "5",
              "--json", "-")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["workload"] == "chat" and d["completed"] == 5 and d["rate"] == 100


@pytest.mark.parametrize(("args", "needle"), [
    (["--input-len", "5", "--output-len", "2", "--rate", "1", "--concurrency", "2"], "not both"),
    (["--input-len", "5"], "go together"),
    (["--rate", "1"], "--workload"),
    (["--workload", "chat", "--input-len", "5", "--output-len", "2"], "not both"),
    (["--input-len", "5", "--output-len", "2", "--slo", "ttft<=5"], "bad SLO target"),
    (["--input-len", "5", "--output-len", "2", "--slo", "latency_p95<=5ms"], "unknown metric"),
    (["--workload", "no-such-workload"], "unknown workload"),
])
def test_bad_input_is_one_error_line(echo: EchoServer, args: list[str], needle: str) -> None:
    out = run("--target", echo.url, *args)
    assert out.returncode != 0
    assert needle in one_error_line(out)


def test_bad_and_unreachable_target() -> None:
    out = run("--target", "localhost:8000", "--input-len", "5", "--output-len", "2")
    assert out.returncode == 1 and "bad target URL" in one_error_line(out)
    with EchoServer() as srv:
        url = srv.url  # a port nothing listens on once it is closed
    out = run("--target", url, "--input-len", "5", "--output-len", "2")
    assert out.returncode == 1 and "cannot reach" in one_error_line(out)


def test_every_request_failing_is_an_error_after_the_json(echo: EchoServer, tmp_path: Path) -> None:
    out_file = tmp_path / "r.json"
    out = run("--target", echo.url, "--model", "wrong", "--input-len", "5", "--output-len", "2",
              "--num-requests", "3", "--json", str(out_file))
    assert out.returncode == 1 and "does not exist" in one_error_line(out)
    assert json.loads(out_file.read_text())["failed"] == 3  # the data is kept


def test_find_max_rate(tmp_path: Path) -> None:
    with EchoServer(ttft=0.004, serial=True) as srv:  # one request at a time: ~4-5 ms each, queueing beyond
        out = run("--target", srv.url, "--input-len", "5", "--output-len", "2", "--find-max-rate",
                  "--num-requests", "60", "--start-rate", "50", "--slo", "e2e_p95<=30ms", "--json", "-", timeout=120)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["max_rate"] is not None and d["best"]["goodput"] > 0
    assert any(not p["met"] and p["rate"] > d["max_rate"] for p in d["points"])
    assert 1 <= len(d["points"]) <= 8


def test_ctrl_c_cancels_cleanly() -> None:
    with EchoServer(itl=0.05) as srv:  # 1000 tokens at 50 ms: a run that would take a minute
        proc = subprocess.Popen([sys.executable, "-m", "slotune.cli.main", "bench", "--target", srv.url,
                                 "--input-len", "5", "--output-len", "1000", "--concurrency", "2",
                                 "--num-requests", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while srv.stats.in_flight < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.stats.in_flight == 2
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        assert time.monotonic() - t0 < 5
        assert proc.returncode == 130
        assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
        deadline = time.monotonic() + 5
        while srv.stats.in_flight and time.monotonic() < deadline:  # the client closed its streams
            time.sleep(0.05)
        assert srv.stats.in_flight == 0
