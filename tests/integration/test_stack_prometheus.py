"""The stack for real: Prometheus and Alertmanager (Debian packages, plain processes on loopback)
with the project's own config and rule files, scraping a real vLLM under load.

How the test shortens things (see promstack's docstring for what else it changes): scrape and rule
evaluation every 1 s; Alertmanager's group timers 1 s; and the SLO rule file `slo.yml` is replaced
by one `slotune.rules.render_slo` makes for `promstack.TEST_SLO` (any real request breaks it) with
the short burn windows of `promstack.TEST_WINDOWS`. Same generator, same expressions, shorter
windows. The committed SLO rules' expressions are still each run as queries. A missing Prometheus
or Alertmanager fails the tests, it does not skip them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from slotune import rules
from tests.support import promstack
from tests.support.http_servers import Receiver, receiver
from tests.support.polling import wait_until
from tests.support.sidecar_process import Load

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(vllm_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    promstack.require_stack()
    work: Path = tmp_path_factory.mktemp("promstack")
    with receiver() as rcv:
        yield from _stack(vllm_server, work, rcv)


def _stack(vllm_server, work: Path, receiver: Receiver) -> Iterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    vllm_addr = vllm_server.base_url.split("://", 1)[1]
    # The sidecar's webhook path on the recording receiver: stands in for the sidecar in this module
    # (test_stack_sidecar.py points Alertmanager at a real sidecar).
    am_cfg = promstack.render_alertmanager(work, receiver.url, extra_url=f"{receiver.url}/oncall")
    with promstack.alertmanager(work, am_cfg) as am:
        prom_cfg = promstack.render_prometheus(
            work, {"vllm": [vllm_addr], "alertmanager": [am.url.split("://", 1)[1]]},
            extra_rules={"slo.yml": rules.render_slo(promstack.TEST_SLO, promstack.TEST_WINDOWS)})
        with promstack.prometheus(work, prom_cfg) as prom, \
                Load(vllm_server.base_url, concurrency=3, pause=0.05, max_seconds=900) as load:
            yield {"prom": prom.url, "am": am.url, "receiver": receiver, "load": load, "work": work}


def _rule_exprs() -> list[tuple[str, str]]:
    out = []
    for f in sorted((promstack.PROM_DIR / "rules").glob("*.yml")):
        for g in yaml.safe_load(f.read_text())["groups"]:
            for r in g["rules"]:
                out.append((f"{f.name} {r.get('record') or r.get('alert')}", r["expr"]))
    return out


CORE = [
    rules.latency_quantile("ttft", 0.95), rules.latency_quantile("tpot", 0.95), rules.latency_quantile("e2e", 0.5),
    rules.SERIES["requests_rate"], rules.SERIES["generation_tokens_rate"], rules.SERIES["prompt_tokens_rate"],
    rules.SERIES["kv_cache_usage"], rules.SERIES["requests_running"], rules.SERIES["iteration_tokens_mean"],
]


def test_every_rule_and_panel_query_runs_and_core_panels_have_data(stack: dict[str, Any]) -> None:
    prom = stack["prom"]
    # Core recording rules (evaluated by Prometheus from the committed rule files) return data.
    for name in CORE:
        wait_until(lambda n=name: promstack.query(prom, n)["result"], 45, what=f"{name} to have data")
    queries = _rule_exprs() + [(f"{d} {where}", promstack.substitute(e))
                               for d, dash in promstack.load_dashboards().items()
                               for where, e in promstack.dashboard_queries(dash)]
    failures = []
    for where, expr in queries:
        try:
            promstack.query(prom, expr)
        except AssertionError as exc:
            failures.append(f"{where}: {exc}")
    assert not failures, failures
    # The core panels of the SLO overview and engine dashboards draw something.
    dashes = promstack.load_dashboards()
    for dname, titles in {"slo-overview.json": ["Time to first token", "End-to-end latency", "Request rate"],
                          "engine.json": ["Running and waiting requests", "KV-cache usage", "Token throughput"]}.items():
        for p in dashes[dname]["panels"]:
            if p["title"] in titles:
                results = [promstack.query(prom, promstack.substitute(t["expr"]))["result"] for t in p["targets"]]
                assert any(results), f"{dname} panel {p['title']!r} returned no data"
    load = stack["load"]
    assert load.errors == load.rejected == 0 and load.ok > 0


def test_fast_burn_alert_fires_and_alertmanager_delivers_it(stack: dict[str, Any]) -> None:
    prom, receiver = stack["prom"], stack["receiver"]
    firing = wait_until(
        lambda: promstack.query(prom, 'ALERTS{alertname="VllmSloErrorBudgetBurn", alertstate="firing"}')["result"],
        60, what="the fast-burn alert to fire")
    assert firing[0]["metric"]["slo"] == "ttft_p95" and firing[0]["metric"]["severity"] == "page"

    def delivered(path: str) -> list[dict[str, Any]]:
        return [a for p in receiver.posts if p.path == path for a in p.json["alerts"]
                if a["labels"].get("alertname") == "VllmSloErrorBudgetBurn" and a["status"] == "firing"]

    to_sidecar = wait_until(lambda: delivered("/api/v1/alerts/alertmanager"), 60,
                                      what="Alertmanager to deliver to the sidecar's webhook path")
    alert = to_sidecar[0]
    assert alert["labels"]["long_window"] == "30s" and alert["labels"]["model_name"] == "tiny"
    assert {"summary", "description", "runbook_url"} <= set(alert["annotations"])
    # Pages also reach the example external receiver (second route).
    wait_until(lambda: delivered("/oncall"), 30, what="the page to reach the external receiver")
