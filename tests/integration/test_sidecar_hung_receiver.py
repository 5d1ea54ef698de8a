"""A hung receiver, for real: a `slotune sidecar` process whose first receiver accepts connections and
never answers (timeout 60 s). The other receiver still gets its notification, SIGTERM ends the
process cleanly without waiting out the hung post, and the hung message is still queued for the
next start (at least once). Real processes, real SQLite, real HTTP."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from slotune.server import free_port
from slotune.store import OutboxMessage, open_store
from tests.support.http_servers import page_server, receiver
from tests.support.pages import UNDER, page
from tests.support.polling import wait_until
from tests.support.sidecar import alert_payload
from tests.support.sidecar_process import RESTARTING, SidecarProcess

pytestmark = pytest.mark.integration
SECRET = "hung-test-hmac-key"
ALERT_TOKEN = "hung-test-alert-token"


def test_hung_receiver_delays_no_other_and_sigterm_does_not_wait_for_it(tmp_path: Path) -> None:
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)
    try:
        with page_server(page(UNDER)) as target, receiver() as rcv:
            db = tmp_path / "slotune.db"
            settings = {"target": target.url, "host": "127.0.0.1", "port": free_port(), "interval": 5,
                        "database_url": f"sqlite:///{db}",
                        "receivers": [{"name": "hung", "url": f"http://127.0.0.1:{hung.getsockname()[1]}/x",
                                       "timeout": 60, "events": ["alert"]},
                                      {"name": "ok", "url": f"{rcv.url}/ok", "events": ["alert"]}]}
            sc = SidecarProcess(settings, tmp_path, {"SLOTUNE_WEBHOOK_SECRET": SECRET,
                                                     "SLOTUNE_ALERT_TOKEN": ALERT_TOKEN}).start()
            try:
                r = httpx.post(f"{sc.url}/api/v1/alerts/alertmanager", json=alert_payload(2), timeout=30,
                               headers={"Authorization": f"Bearer {ALERT_TOKEN}"})
                assert r.status_code == 202, r.text
                wait_until(lambda: len(rcv.verified(SECRET)) == 1, 30, "the healthy receiver's notification", tolerate=RESTARTING)
            finally:
                assert sc.proc is not None
                sc.proc.terminate()
                try:
                    code = sc.proc.wait(30)  # the hung post alone would hold a joining shutdown for 60 s
                except subprocess.TimeoutExpired:
                    sc.proc.kill()
                    raise
            assert code == 0, sc.log()[-2000:]
            assert "stopping without waiting for slotune-outbox-hung" in sc.log()
            store = open_store(f"sqlite:///{db}")
            with store.session() as s:
                left = s.scalars(select(OutboxMessage).where(OutboxMessage.delivered_at.is_(None))).all()
                assert [m.receiver for m in left] == ["hung"]
            store.dispose()
    finally:
        hung.close()
