"""The sidecar's loop without a server or sleeping: a scripted scrape over real vLLM 0.32 captures
with a settable clock, a real SQLite store, and the real playbooks engine; and an Alertmanager v4
webhook payload."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from slotune.collectors.exposition import Scrape, parse
from slotune.errors import TargetError
from slotune.sidecar.config import load_settings
from slotune.sidecar.runtime import Sidecar
from slotune.store import open_store

TARGET = "http://127.0.0.1:9"  # a port nothing listens on: every scrape goes through `Script`


class Clock:
    """Settable time, starting now (signatures carry it and receivers check it against real time)."""

    def __init__(self, t: float | None = None) -> None:
        # A whole second: the store keeps datetimes to the microsecond, and a start with a finer
        # fraction could round a stored instant up, so "exactly the cool-down later" would fall short.
        self.t = float(int(time.time())) if t is None else t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class Script:
    """Each scrape returns the next page in `pages` (None: the target is down), stamped with the clock;
    after the last one, the last page again."""

    clock: Clock
    pages: list[str | None]
    calls: int = 0

    def __call__(self, url: str) -> Scrape:
        text = self.pages[min(self.calls, len(self.pages) - 1)]
        self.calls += 1
        if text is None:
            raise TargetError(f"cannot scrape {url}: ConnectError: connection refused")
        return parse(text, url=url, timestamp=self.clock())


def make(tmp_path: Path, pages: list[str | None], **overrides: object) -> tuple[Sidecar, Clock, Script]:
    """A started sidecar (no threads) whose scrapes replay `pages`, with settings `overrides`."""
    clock = Clock()
    script = Script(clock, pages)
    settings = load_settings(None, **{"target": TARGET, "data_dir": tmp_path, "interval": 10, **overrides})
    sidecar = Sidecar(settings, store=open_store(f"sqlite:///{tmp_path / 'db.sqlite'}"), clock=clock, scrape=script)
    sidecar.start(threads=False)
    return sidecar, clock, script


def ticks(sidecar: Sidecar, clock: Clock, n: int) -> list:  # type: ignore[type-arg]
    """Run `n` control-loop ticks, the clock 10 s on after each; their results."""
    out = []
    for _ in range(n):
        out.append(sidecar.controller.tick())
        clock.advance(10)
    return out


def alert_payload(n: int = 1, status: str = "firing") -> dict[str, object]:
    """Alertmanager's v4 webhook body with `n` burn alerts in one group."""
    alert = {"status": status, "labels": {"alertname": "VllmSloErrorBudgetBurn", "slo": "e2e_p95",
                                           "severity": "page", "instance": "vllm:8000"},
             "annotations": {"summary": "burning", "description": "d", "runbook_url": "http://x"},
             "startsAt": "2026-01-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
             "generatorURL": "http://prom/graph", "fingerprint": "abc"}
    return {"version": "4", "groupKey": "{}:{alertname=\"VllmSloErrorBudgetBurn\"}", "truncatedAlerts": 0,
            "status": status, "receiver": "slotune", "groupLabels": {}, "commonLabels": {},
            "commonAnnotations": {}, "externalURL": "http://am:9093",
            "alerts": [alert | {"fingerprint": f"abc{i}", "labels": alert["labels"] | {"n": str(i)}}
                       for i in range(n)]}
