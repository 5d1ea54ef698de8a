"""End to end: a load that breaks the SLO fires a fast-burn alert in a real Prometheus, a real
Alertmanager delivers it to a real slotune sidecar, and the sidecar's outgoing notification
carries the alert and a diagnosis that found the broken TTFT. Windows are shortened as in
test_stack_prometheus.py (30 s / 10 s, for 1 s).

The sidecar runs with the committed deploy/slotune/sidecar.yaml, pointed at the test's vLLM, port
and receiver (`_sidecar_settings`). A missing binary, sidecar package or settings file fails the
test: an end-to-end test must not turn into a silent skip.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from slotune import rules
from slotune.server import free_port
from tests.support import promstack
from tests.support.http_servers import receiver
from tests.support.paths import REPO
from tests.support.polling import wait_until
from tests.support.promstack import TEST_SLO, TEST_WINDOWS
from tests.support.sidecar_process import Load, SidecarProcess

WEBHOOK_SECRET = "stack-test-hmac-key"
SIDECAR_YAML = REPO / "deploy" / "slotune" / "sidecar.yaml"
pytestmark = pytest.mark.integration


def _require_sidecar() -> None:
    if importlib.util.find_spec("slotune.sidecar") is None:
        pytest.fail("the slotune.sidecar package is missing")
    if not SIDECAR_YAML.is_file():
        pytest.fail(f"the committed sidecar settings are missing: {SIDECAR_YAML}")


def _sidecar_settings(target: str, port: int, receiver_url: str) -> dict[str, Any]:
    """The committed sidecar settings, pointed at the test's vLLM, port and receiver."""
    cfg = yaml.safe_load(SIDECAR_YAML.read_text()) or {}
    cfg |= {"target": target, "host": "127.0.0.1", "port": port, "slo": TEST_SLO, "interval": 1,
            "receivers": [{"name": "test", "url": receiver_url, "format": "json"}],
            "alert_token": promstack.ALERT_TOKEN, "webhook_secret": WEBHOOK_SECRET}
    return cfg


def test_alert_reaches_sidecar_and_its_notification_carries_a_diagnosis(vllm_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    promstack.require_stack()
    _require_sidecar()
    with receiver() as rcv:
        port = free_port()
        sidecar = SidecarProcess(_sidecar_settings(vllm_server.base_url, port, f"{rcv.url}/notify"), tmp_path)
        try:
            sidecar.start(timeout=60)
            _alert_to_notification(vllm_server, rcv, sidecar.url, port, tmp_path)
        finally:
            sidecar.stop()


def _alert_to_notification(vllm_server, rcv, sidecar_url: str, port: int, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    am_cfg = promstack.render_alertmanager(tmp_path, sidecar_url, extra_url=f"{rcv.url}/oncall")
    with promstack.alertmanager(tmp_path, am_cfg) as am:
        prom_cfg = promstack.render_prometheus(
            tmp_path, {"vllm": [vllm_server.base_url.split("://", 1)[1]], "slotune": [f"127.0.0.1:{port}"],
                       "alertmanager": [am.url.split("://", 1)[1]]},
            extra_rules={"slo.yml": rules.render_slo(TEST_SLO, TEST_WINDOWS)})
        with promstack.prometheus(tmp_path, prom_cfg) as prom, \
                Load(vllm_server.base_url, concurrency=3, pause=0.05, max_seconds=900):
            wait_until(lambda: promstack.query(prom.url, 'up{job="slotune"} == 1')["result"], 30,
                       what="Prometheus to scrape the sidecar")

            def notified() -> list[dict[str, Any]]:
                return [p.json for p in rcv.posts if p.path == "/notify" and "VllmSloErrorBudgetBurn" in str(p.json)]

            notes = wait_until(notified, 90, what="the sidecar to notify about the burn alert")
            note = notes[0]
            assert note["kind"] == "alert" and note["source"] == "slotune", note
            event = note["event"]
            # One notification for Alertmanager's group, its alerts inside.
            assert event["status"] == "firing" and event["alerts"], event
            assert {a["labels"]["alertname"] for a in event["alerts"]} == {"VllmSloErrorBudgetBurn"}, event
            # The diagnosis judged the windows under load: TTFT misses its 1 ms target.
            diagnosis = event["diagnosis"]
            assert diagnosis is not None, event
            assert diagnosis["status"] == "findings", diagnosis
            assert diagnosis["target"] == vllm_server.base_url, diagnosis
            high_ttft = [f for f in diagnosis["findings"] if f["playbook"] == "high_ttft"]
            assert high_ttft, diagnosis["findings"]
            ttft = next(e for e in high_ttft[0]["evidence"] if e["field"] == "ttft_at_slo")
            assert ttft["value"] > ttft["threshold"] == 0.001, ttft
            # Alertmanager got in with the alert token of its http_config; without it, nobody does.
            anon = httpx.post(f"{sidecar_url}/api/v1/alerts/alertmanager", json={}, timeout=10)
            assert anon.status_code == 401, anon.text
