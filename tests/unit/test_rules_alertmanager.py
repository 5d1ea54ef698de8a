"""The Alertmanager config: valid for amtool, and routes alerts where the docs say."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.support.paths import REPO

CONFIG = REPO / "deploy/alertmanager/alertmanager.yml"
pytestmark = pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool not installed (make system-packages)")


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["amtool", *args], check=False, capture_output=True, text=True)


def test_amtool_check_config() -> None:
    proc = _amtool("check-config", str(CONFIG))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(("labels", "receivers"), [
    (["alertname=VllmSloErrorBudgetBurn", "severity=page"], "slotune,oncall-example"),
    (["alertname=VllmKvCachePressure", "severity=ticket"], "slotune"),
])
def test_routes(labels: list[str], receivers: str) -> None:
    proc = _amtool("config", "routes", "test", f"--config.file={CONFIG}", *labels)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == receivers


def test_sidecar_receiver_uses_the_webhook_path() -> None:
    cfg = yaml.safe_load(CONFIG.read_text())
    (receiver,) = [r for r in cfg["receivers"] if r["name"] == "slotune"]
    hook = receiver["webhook_configs"][0]
    assert hook["url"].endswith("/api/v1/alerts/alertmanager")
    # The sidecar's alert intake needs credentials: Alertmanager sends the alert token compose mounts.
    assert hook["http_config"]["authorization"] == {"type": "Bearer",
                                                    "credentials_file": "/run/secrets/slotune_alert_token"}
