"""Real Prometheus and Alertmanager as plain processes on loopback, run with the project's own
config files (deploy/prometheus, deploy/alertmanager). Reusable by any test.

What a test run changes, and nothing else:
* Prometheus: `global.scrape_interval` / `evaluation_interval` (1 s instead of 15 s) and the
  `targets/*.yml` files (loopback ports instead of compose service names); `prometheus.yml`'s
  jobs, discovery and `rule_files`, and the rule files themselves, are the committed ones. A test
  may add extra rule files (e.g. an SLO rendered with short windows).
* Alertmanager: the sidecar receiver's URL (a loopback port), the file its alert token is read
  from (a file in the work directory instead of compose's secret), and the route's timers (1 s).

A missing binary fails the test that needs it (`require_stack`), as a missing PostgreSQL does in
`postgres.py`: an end-to-end test must not turn into a silent skip.

`TEST_SLO` and `TEST_WINDOWS`: an SLO that any real request breaks (`ttft_p95<=1ms`, counted against
the 0.001 s bucket) with ONE burn tier whose windows are 30 s and 10 s instead of 1 h and 5 m
(`for: 1s`, factor 14.4, severity page): same generator, same expressions, shorter windows.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from slotune import rules
from slotune.server import free_port
from tests.support.paths import REPO
from tests.support.polling import wait_http_ready

PROM_DIR = REPO / "deploy" / "prometheus"
AM_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
DASHBOARDS = REPO / "dashboards"


def alertmanager_binary() -> str | None:
    return shutil.which("alertmanager") or shutil.which("prometheus-alertmanager")


def require_stack() -> None:
    """Fail the calling test when Prometheus or Alertmanager is not installed."""
    missing = [name for name, found in (("prometheus", shutil.which("prometheus")),
                                        ("alertmanager", alertmanager_binary())) if not found]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not installed (run `make system-packages`)")


TEST_SLO = "ttft_p95<=1ms"
TEST_WINDOWS = (rules.BurnWindow("page", "30s", "10s", 14.4, "1s"),)


def render_prometheus(workdir: Path, targets: dict[str, Iterable[str]], interval: str = "1s",
                      extra_rules: dict[str, str] | None = None) -> Path:
    """Copy the committed config and rules into `workdir`, with test intervals and targets."""
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    cfg["global"] = {**cfg["global"], "scrape_interval": interval, "evaluation_interval": interval}
    (workdir / "rules").mkdir(parents=True, exist_ok=True)
    for f in (PROM_DIR / "rules").glob("*.yml"):
        shutil.copy(f, workdir / "rules" / f.name)
    for name, text in (extra_rules or {}).items():
        (workdir / "rules" / name).write_text(text)
    (workdir / "targets").mkdir(exist_ok=True)
    for f in (PROM_DIR / "targets").glob("*.yml"):  # every committed target file, emptied unless given
        job = f.stem
        addrs = list(targets.get(job, []))
        (workdir / "targets" / f.name).write_text(yaml.safe_dump([{"targets": addrs}] if addrs else []))
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


ALERT_TOKEN = "promstack-alert-token"  # what the rendered Alertmanager presents to the sidecar


def render_alertmanager(workdir: Path, sidecar_url: str, extra_url: str | None = None,
                        alert_token: str = ALERT_TOKEN) -> Path:
    cfg = yaml.safe_load(AM_CONFIG.read_text())
    cfg["route"] |= {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1m"}
    token_file = workdir / "slotune_alert_token"
    token_file.write_text(alert_token + "\n")  # as a compose secret from .env would end
    for receiver in cfg["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            if hook["url"].endswith("/api/v1/alerts/alertmanager"):
                hook["url"] = sidecar_url.rstrip("/") + "/api/v1/alerts/alertmanager"
                auth = hook["http_config"]["authorization"]  # the committed config sends the alert token
                assert auth["credentials_file"].startswith("/run/secrets/"), auth
                auth["credentials_file"] = str(token_file)
            elif extra_url:
                hook["url"] = extra_url
    path = workdir / "alertmanager.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@dataclass
class Process:
    argv: list[str]
    url: str
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self, timeout: float = 20.0) -> Process:
        self._fh = self.log.open("wb")
        self.proc = subprocess.Popen(self.argv, stdout=self._fh, stderr=subprocess.STDOUT)
        try:
            wait_http_ready(self.proc, f"{self.url}/-/ready", timeout, self.log.read_text, interval=0.05)
        except AssertionError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_fh", None):
            self._fh.close()

    def __enter__(self) -> Process:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def prometheus(workdir: Path, config: Path) -> Process:
    port = free_port()
    (workdir / "data").mkdir(exist_ok=True)
    return Process(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle", "--log.level=warn"],
                   f"http://127.0.0.1:{port}", workdir / "prometheus.log")


def alertmanager(workdir: Path, config: Path) -> Process:
    port = free_port()
    (workdir / "am-data").mkdir(exist_ok=True)
    return Process([alertmanager_binary() or "alertmanager", f"--config.file={config}",
                    f"--storage.path={workdir / 'am-data'}", f"--web.listen-address=127.0.0.1:{port}",
                    "--cluster.listen-address=", "--log.level=warn"],
                   f"http://127.0.0.1:{port}", workdir / "alertmanager.log")


def query(prom_url: str, expr: str) -> dict[str, Any]:
    """Instant query; returns Prometheus' `data` or raises with its error message."""
    r = httpx.get(f"{prom_url}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    if body.get("status") != "success":
        raise AssertionError(f"{body.get('errorType')}: {body.get('error')} in {expr!r}")
    return body["data"]


# ---- dashboards ----

GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def dashboard_queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every PromQL expression in a dashboard: panel targets, annotation queries
    and query variables."""
    out: list[tuple[str, str]] = []
    for p in dash.get("panels", []):
        for t in p.get("targets", []):
            out.append((f"panel {p.get('id')} {p.get('title')!r} {t.get('refId')}", t["expr"]))
    for a in dash.get("annotations", {}).get("list", []):
        if a.get("expr"):
            out.append((f"annotation {a['name']!r}", a["expr"]))
    return out


def variable_names(dash: dict[str, Any]) -> set[str]:
    return {v["name"] for v in dash.get("templating", {}).get("list", [])}


_VAR = re.compile(r"\$\{?(\w+)\}?")


def used_variables(text: str) -> set[str]:
    return set(_VAR.findall(text))


def substitute(expr: str, values: dict[str, str] | None = None) -> str:
    """Replace Grafana variables with what Grafana would send: `.+` for the model/instance
    regexes ("All"), and fixed durations for the built-in intervals."""
    vals = {**GRAFANA_BUILTINS, **(values or {})}
    return _VAR.sub(lambda m: vals.get(m.group(1), ".+"), expr)
