"""`slotune collect` against a real HTTP server on loopback that serves the real captures in turn
(a vLLM start costs ~30 s; the live check is tests/integration/test_collect_live.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from slotune.cli.main import main
from slotune.server import free_port
from slotune.store import Snapshot, open_store
from tests.support.http_servers import PageServer, page_server
from tests.support.pages import AFTER, UNDER, page

CONTRACT = ("ttft_seconds", "tpot_seconds", "itl_seconds", "e2e_seconds", "queue_seconds", "kv_cache_usage",
            "requests_running", "requests_waiting", "preemptions_per_second", "prefix_cache_hit_rate",
            "spec_decode_acceptance_rate", "gpu")


@pytest.fixture()
def pages_server() -> Iterator[tuple[str, PageServer]]:
    """Serves UNDER on the first /metrics request, AFTER on every later one."""
    with page_server(page(UNDER), page(AFTER), cycle=False) as srv:
        yield srv.url, srv


def test_once_json_is_cumulative(pages_server, capsys):
    url, served = pages_server
    assert main(["collect", "--target", url, "--once", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and served.served == 1
    d = json.loads(lines[0])
    assert all(k in d for k in CONTRACT)
    assert d["cumulative"] is True and d["gpu"] is None and d["requests_finished"] == 8
    assert set(d["e2e_seconds"]) >= {"p50", "p95", "p99", "mean"}


def test_interval_json_lines_are_window_deltas_and_stored(pages_server, capsys, tmp_path):
    url, served = pages_server
    db = f"sqlite:///{tmp_path / 'c.db'}"
    assert main(["collect", "--target", url, "--interval", "0.1", "--count", "2", "--json",
                 "--store", "--db", db]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 2 and served.served == 3
    assert lines[0]["requests_finished"] == 40 and not lines[0]["cumulative"]  # under → after
    assert lines[1]["requests_finished"] == 0 and lines[1]["e2e_seconds"] is None  # after → after: no data
    store = open_store(db)
    with store.session() as s:
        assert s.query(Snapshot).count() == 2
    store.dispose()


def test_table_by_default(pages_server, capsys):
    url, _ = pages_server
    assert main(["collect", "--target", url, "--once"]) == 0
    out = capsys.readouterr().out
    for word in ("TTFT", "TPOT", "end-to-end", "p95", "KV-cache usage", "since server start", "GPU"):
        assert word in out


@pytest.mark.parametrize("target, fragment", [
    (f"http://127.0.0.1:{free_port()}", "cannot scrape"),
    ("not-a-url", "bad target URL"),
    # an address no resolver takes (idna fails inside the scrape thread): one line, not a thread traceback
    ("http://256.256.256.256:80", "cannot scrape"),
    # credentials in the URL never reach the error line
    (f"http://user:hunter2@127.0.0.1:{free_port()}/", "cannot scrape http://***@127.0.0.1"),
])
def test_unreachable_or_bad_target_is_one_line_exit_1(target, fragment):
    out = subprocess.run([sys.executable, "-m", "slotune.cli.main", "collect", "--target", target, "--once"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], out.stderr
    assert "hunter2" not in out.stderr


def test_metrics_path_goes_before_a_query_string():
    from slotune.collectors.vllm_metrics import metrics_url

    assert metrics_url("http://h:8000?x=1") == "http://h:8000/metrics?x=1"
    assert metrics_url("http://h:8000/") == "http://h:8000/metrics"
    assert metrics_url("http://h:8000/custom/metrics") == "http://h:8000/custom/metrics"


def test_not_a_vllm_page(pages_server, capsys):
    url, _ = pages_server
    assert main(["collect", "--target", url + "/nothing", "--once"]) == 1
    assert "HTTP 404" in capsys.readouterr().err


def test_ctrl_c_stops_cleanly(pages_server):
    import signal
    import time

    url, _ = pages_server
    proc = subprocess.Popen([sys.executable, "-m", "slotune.cli.main", "collect", "--target", url,
                             "--interval", "0.2", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # a window was reported: the loop is running
    assert json.loads(first)["requests_finished"] == 40
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err, err


def test_an_infinite_gauge_is_one_error_line_never_infinity_in_json(capsys):
    """A +Inf KV gauge once printed `Infinity` (not JSON) from `collect --json`."""

    kv = 'vllm:kv_cache_usage_perc{engine="0",model_name="tiny-llama"} 0.0'
    assert kv in page(AFTER)
    with page_server(page(AFTER).replace(kv, kv.replace("0.0", "+Inf"))) as srv:
        assert main(["collect", "--target", srv.url, "--once", "--json"]) == 1
    out = capsys.readouterr()
    assert "Infinity" not in out.out and out.out == ""
    assert out.err.strip().startswith("error: ") and "infinite value in gauge 'vllm:kv_cache_usage_perc'" in out.err
