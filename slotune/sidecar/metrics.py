"""slotune's own Prometheus metrics, in a registry per sidecar (tests run several in one process).

Names follow Prometheus conventions: `slotune_` prefix, base units in the name (`_seconds`,
`_ratio`), `_total` on counters, `_info` for a constant-1 series that carries labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from slotune.sidecar.windows import SloFigure

BURN_HELP = ("Error-budget burn rate of the last window: (share of requests that missed the SLO's per-request "
             "threshold) / (allowed share: 1 - quantile, or the error_rate threshold). 1 = on budget.")


class SidecarMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.attainment = Gauge("slotune_slo_attainment_ratio",
                                "Share of the last window's requests that met the SLO target's threshold.",
                                ["target", "slo"], registry=r)
        self.burn = Gauge("slotune_slo_error_budget_burn_ratio", BURN_HELP, ["target", "slo"], registry=r)
        self.slo_value = Gauge("slotune_slo_observed_value",
                               "The SLO statistic in the last window (seconds for latency, ratio for error_rate).",
                               ["target", "slo"], registry=r)
        self.findings = Gauge("slotune_findings_active", "Active findings (not acknowledged, silenced or resolved).",
                              ["target", "playbook", "severity"], registry=r)
        self.scrapes = Counter("slotune_scrapes_total", "Scrapes of the target, successful or not.", ["target"],
                               registry=r)
        self.scrape_errors = Counter("slotune_scrape_errors_total",
                                     "Scrapes that failed (target down, slow or answering garbage).",
                                     ["target"], registry=r)
        self.scrape_seconds = Histogram("slotune_scrape_duration_seconds", "Time to read and parse /metrics.",
                                        ["target"], registry=r,
                                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.target_up = Gauge("slotune_target_up", "1 when the last scrape of the target succeeded.", ["target"],
                               registry=r)
        self.last_tick = Gauge("slotune_last_tick_timestamp_seconds", "When the control loop last ran.",
                               registry=r)
        self.tick_errors = Counter("slotune_loop_errors_total", "Loop ticks that failed unexpectedly (logged).",
                                   registry=r)
        self.trials_done = Gauge("slotune_tuning_trials_finished", "Finished trials of a tuning study.",
                                 ["study"], registry=r)
        self.trials_planned = Gauge("slotune_tuning_trials_planned", "Trial budget of a tuning study.",
                                    ["study"], registry=r)
        self.studies_running = Gauge("slotune_tuning_studies_running", "Tuning studies running now.", registry=r)
        self.applied_info = Gauge("slotune_applied_config_info",
                                  "The config slotune last applied to a managed server (value 1; flags as labels).",
                                  ["target", "change_id", "config"], registry=r)
        self.applied_at = Gauge("slotune_applied_config_timestamp_seconds",
                                "When slotune last changed the managed server's config.", ["target"], registry=r)
        self.changes = Counter("slotune_config_changes_total", "Config changes by outcome.",
                               ["target", "outcome"], registry=r)
        self.recommendations = Counter("slotune_recommendations_total", "Recommended configs published.",
                                       ["target", "source"], registry=r)
        self.notifications = Counter("slotune_notifications_total", "Notification delivery attempts by outcome.",
                                     ["receiver", "outcome"], registry=r)
        self.outbox_pending = Gauge("slotune_outbox_pending_messages", "Notifications not delivered yet.",
                                    registry=r)
        self.outbox_dead = Gauge("slotune_outbox_dead_letters",
                                 "Notifications given up after outbox.max_attempts, kept for a retry.",
                                 ["receiver"], registry=r)

    def observe_window(self, target: str, figures: Iterable[SloFigure]) -> None:
        for f in figures:
            labels = (target, f.key)
            for gauge, value in ((self.attainment, f.attainment), (self.burn, f.burn), (self.slo_value, f.value)):
                if value is None:
                    gauge.remove(*labels) if labels in _keys(gauge) else None
                else:
                    gauge.labels(*labels).set(value)

    def set_findings(self, target: str, counts: Mapping[tuple[str, str], int]) -> None:
        for labels in list(_keys(self.findings)):
            if labels[0] == target and (labels[1], labels[2]) not in counts:
                self.findings.remove(*labels)
        for (playbook, severity), n in counts.items():
            self.findings.labels(target, playbook, severity).set(n)

    def set_applied(self, target: str, change_id: int, config: Mapping[str, Any], when: float) -> None:
        self.applied_info.clear()
        flags = ",".join(f"{k}={v}" for k, v in sorted(config.items()) if k not in ("model", "env") and v is not None)
        self.applied_info.labels(target, str(change_id), flags).set(1)
        self.applied_at.labels(target).set(when)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _keys(metric: Any) -> set[tuple[str, ...]]:
    return set(metric._metrics.keys())  # prometheus_client keeps children by label values
