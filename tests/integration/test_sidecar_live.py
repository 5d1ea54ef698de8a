"""The sidecar against a real vLLM: a load that breaks the TTFT target shows up in `/metrics` as
error-budget burn and as a finding, and a local receiver gets a notification whose signature
verifies. The sidecar is a real `slotune sidecar` process; the vLLM is the session's shared one."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.support.http_servers import receiver
from tests.support.polling import wait_until
from tests.support.sidecar_process import RESTARTING, Load, sidecar

pytestmark = pytest.mark.integration
SECRET = "live-secret"
TOKEN = "live-token"
SLO = "ttft_p95<=1ms"  # below vLLM's smallest TTFT bucket bound but one: any real request misses it


def _burn(metrics: str, target: str) -> float | None:
    m = re.search(rf'^slotune_slo_error_budget_burn_ratio\{{slo="ttft_p95",target="{re.escape(target)}"\}} (\S+)$',
                  metrics, re.MULTILINE)
    return float(m.group(1)) if m else None


def test_ttft_burn_shows_in_metrics_and_findings_and_is_notified_signed(vllm_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = vllm_server.base_url
    with receiver() as rcv:
        settings = {"target": target, "interval": 1, "slo": SLO, "data_dir": str(tmp_path / "data"),
                    "receivers": [{"name": "hook", "url": f"{rcv.url}/hook"},
                                  {"name": "chat", "url": f"{rcv.url}/slack", "format": "slack",
                                   "events": ["finding"]}]}
        env = {"SLOTUNE_WEBHOOK_SECRET": SECRET, "SLOTUNE_API_TOKEN": TOKEN}
        with sidecar(settings, tmp_path, env) as sc, Load(target, concurrency=3, max_seconds=120) as load:
            burn = wait_until(lambda: _burn(httpx.get(f"{sc.url}/metrics").text, target), 60, "a TTFT burn figure", tolerate=RESTARTING)
            assert burn > 1.0  # every request misses 1 ms: burn = 1 / 0.05 = 20
            assert burn == pytest.approx(20.0)
            findings = wait_until(lambda: httpx.get(f"{sc.url}/api/v1/findings",
                                                  params={"playbook": "slo_burn"}).json()["items"], 30,
                                "an slo_burn finding", tolerate=RESTARTING)
            assert findings[0]["status"] == "active" and "ttft_p95" in findings[0]["summary"]
            metrics = httpx.get(f"{sc.url}/metrics").text
            assert re.search(r'^slotune_findings_active\{playbook="slo_burn",severity="critical",target=".+"\} 1\.0$',
                             metrics, re.MULTILINE), metrics

            def signed_burn_notes() -> list:  # type: ignore[type-arg]
                return [p for p in rcv.verified(SECRET) if "slo_burn" in p.body.decode()]

            notes = wait_until(lambda: {p.path for p in signed_burn_notes()} >= {"/hook", "/slack"} and
                             signed_burn_notes(), 30, "signed slo_burn notifications in both formats", tolerate=RESTARTING)
            generic = next(p for p in notes if p.path == "/hook")
            assert generic.json["kind"] == "finding" and generic.json["event"]["playbook"] == "slo_burn"
            assert generic.json["id"] == generic.headers["X-Slotune-Id"]
            assert "blocks" in next(p for p in notes if p.path == "/slack").json
            # A forged body does not verify with the same headers.
            forged = generic.body.replace(b"slo_burn", b"slo_xxxx")
            from slotune.sidecar import signing

            assert not signing.verify(SECRET, forged, generic.headers["X-Slotune-Timestamp"],
                                      generic.headers["X-Slotune-Signature"])
            assert load.ok > 0
            snaps = httpx.get(f"{sc.url}/api/v1/snapshots", params={"limit": 5}).json()
            assert snaps["total"] >= 1 and snaps["items"][0]["data"]["ttft_seconds"] is not None
