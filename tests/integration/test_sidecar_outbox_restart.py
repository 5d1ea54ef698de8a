"""The outbox survives: receiver down → sidecar restarted → receiver up → every notification arrives,
signed, and none twice with the same id. Real sidecar processes (the `slotune sidecar` CLI), a real
SQLite file, real HTTP; the target is a real vLLM capture served on 127.0.0.1 (no vLLM needed)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import httpx
import pytest

from slotune.server import free_port
from tests.support.http_servers import page_server, receiver
from tests.support.pages import UNDER, page
from tests.support.polling import wait_until
from tests.support.sidecar import alert_payload
from tests.support.sidecar_process import RESTARTING, SidecarProcess

pytestmark = pytest.mark.integration
SECRET = "outbox-secret"
ALERT_TOKEN = "outbox-alert-token"


def test_notifications_survive_receiver_outage_and_sidecar_restart(tmp_path: Path) -> None:
    rport = free_port()  # nothing listens here until the receiver comes up
    with page_server(page(UNDER)) as target:
        settings = {"target": target.url, "host": "127.0.0.1", "port": free_port(), "interval": 1,
                    "data_dir": str(tmp_path / "data"),
                    "receivers": [{"name": "hook", "url": f"http://127.0.0.1:{rport}/hook", "events": ["alert"]}],
                    "outbox": {"backoff_initial_seconds": 0.5, "backoff_max_seconds": 2, "poll_seconds": 0.2}}
        env = {"SLOTUNE_WEBHOOK_SECRET": SECRET, "SLOTUNE_ALERT_TOKEN": ALERT_TOKEN}
        first = SidecarProcess(settings, tmp_path, env).start()
        ids: list[str] = []
        try:
            for n in (1, 2, 3):
                r = httpx.post(f"{first.url}/api/v1/alerts/alertmanager", json=alert_payload(n), timeout=30,
                               headers={"Authorization": f"Bearer {ALERT_TOKEN}"})
                assert r.status_code == 202, r.text
                ids += r.json()["notifications"]
            assert len(ids) == 3  # one notification per request (its alerts grouped), one receiver
            wait_until(lambda: "failed (attempt 2)" in first.log(), 30, "a second failed delivery attempt", tolerate=RESTARTING)
        finally:
            assert first.stop() == 0, first.log()[-2000:]

        second = SidecarProcess(settings, tmp_path, env).start()
        try:
            with receiver(rport) as rcv:
                wait_until(lambda: len(rcv.posts) >= len(ids), 60, "every notification", tolerate=RESTARTING)
                wait_until(lambda: "slotune_outbox_pending_messages 0.0" in httpx.get(f"{second.url}/metrics").text,
                         10, "the outbox to drain", tolerate=RESTARTING)
                got = [p.headers["X-Slotune-Id"] for p in rcv.verified(SECRET)]
                assert len(got) == len(rcv.posts)  # every one signed
                assert sorted(got) == sorted(ids)
                assert max(Counter(got).values()) == 1
                assert [p.json["id"] for p in rcv.posts] == got  # the id is in the body too
        finally:
            second.stop()
