"""One trial's measurement: launch → warm up → load → measure → diagnose → stop.

Launching and the measured window are the measurement floor's (`slotune.measurement.start_or_explain`,
`measure_window`); this module adds what a trial needs on top (the client's CPU seat, capacity mode,
mapping outcomes to a status) and keeps the result as the trial's record, `Measurement`, whose parts
are JSON because Optuna stores them as trial attributes.

The study only sees the `Measure` protocol (config in, `Measurement` out), so its mechanics (baseline
first, remedies, constraints, storage, resume) are testable without a server; `ServerMeasure` is
the real thing. Expected start-up failures come back as a `Measurement` with `ok=False` and a
reason; errors inside slotune propagate.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from slotune.errors import ConfigError, TargetError
from slotune.loadgen.runner import LoadResult, run_load
from slotune.loadgen.sweep import find_max_rate
from slotune.loadgen.workload import Workload
from slotune.measurement import Launch, LoadPlan, measure_window, start_or_explain, warm_up
from slotune.playbooks.engine import Diagnosis
from slotune.playbooks.model import SEVERITIES
from slotune.server import ManagedServer
from slotune.slo import SloSpec
from slotune.tuner.confidence import RunRequests
from slotune.vllm_config import VllmConfig

Mode = Literal["offered", "capacity"]
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Measurement:
    """What one trial measured, as stored with the trial: `client` is the load generator's JSON
    (`LoadResult.to_dict()`), `server` the window's (`Snapshot.to_dict()`), `findings` the diagnosis';
    `requests` each request's figures (`RunRequests.to_dict()`), what the verdict's intervals are
    bootstrapped from (None when nothing was measured)."""

    ok: bool
    reason: str = ""
    status: str = "ready"  # a StartStatus value, or "load_failed"
    goodput: float = 0.0
    rate: float | None = None  # the offered rate, or the highest rate meeting the SLOs (capacity)
    client: dict[str, Any] = field(default_factory=dict)
    server: dict[str, Any] | None = None
    findings: list[dict[str, Any]] = field(default_factory=list)
    log_path: str | None = None
    seconds: float = 0.0
    requests: dict[str, Any] | None = None
    # capacity mode: every rate the sweep tried, `[{"rate", "met", "goodput", "request_throughput"}]`
    sweep: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def remedies(self) -> list[dict[str, Any]]:
        """The findings' remedies, most severe finding first, each with its `config_delta`."""
        def rank(f: dict[str, Any]) -> int:
            sev = f.get("severity")
            return SEVERITIES.index(sev) if sev in SEVERITIES else len(SEVERITIES)

        out = []
        for f in sorted(self.findings, key=rank):
            for r in f.get("remedies") or []:
                if isinstance(r, dict) and r.get("config_delta"):
                    out.append({**r, "playbook": f.get("playbook")})
        return out


class Measure(Protocol):
    """Config in, `Measurement` out. A measure with `probes = True` also takes `check`: it then sends a
    short probe at the study's load first and hands its figures (`LoadResult.to_dict()`) and request
    count to `check`; a reason back stops the trial there (status `pruned`, the probe's figures)."""

    def __call__(self, config: VllmConfig, progress: Progress | None = None) -> Measurement: ...


ProbeCheck = Callable[[dict[str, Any], int], "str | None"]


def probe_size(num_requests: int | None) -> int:
    """Requests in a probe: a quarter of the trial's, at least 5; 0 (no probe) when that would be
    half the trial or more, where stopping early saves too little to pay for the probe."""
    if not num_requests:
        return 0
    n = max(5, num_requests // 4)
    return n if n * 2 <= num_requests else 0


@dataclass(frozen=True)
class LoadSpec:
    """How each trial loads its server (the same for every trial, so trials compare)."""

    workload: Workload
    slo: SloSpec
    mode: Mode = "offered"
    rate: float | None = None
    concurrency: int | None = None
    num_requests: int | None = 40
    duration: float | None = None
    warmup_requests: int = 4
    seed: int = 0


@contextmanager
def client_seat(server_cpus: tuple[int, ...] | None) -> Iterator[None]:
    """Keep this thread, where the load generator runs, off the server's cores for the measurement."""
    if not server_cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, (before - set(server_cpus)) or before)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@dataclass
class ServerMeasure:
    """Measure a config on a real vLLM started for the trial (own port, stopped afterwards)."""

    load: LoadSpec
    log_dir: Path
    startup_timeout: float = 240.0
    server_cpus: tuple[int, ...] | None = None  # vLLM confined here; the load generator on the other cores
    probes = True

    def __call__(self, config: VllmConfig, progress: Progress | None = None,
                 check: ProbeCheck | None = None) -> Measurement:
        say = progress or (lambda _msg: None)
        started = time.monotonic()
        server = ManagedServer(config, log_dir=self.log_dir, startup_timeout=self.startup_timeout,
                               cpus=self.server_cpus, slo=self.load.slo)
        say("starting vLLM")
        launched = False
        try:
            with start_or_explain(server, slo=self.load.slo) as launch:
                launched = True
                if not launch.ok:
                    return self._start_failed(launch, started)
                with client_seat(self.server_cpus):
                    return self._measure_running(server, config, say, started, check)
        except ConfigError as exc:
            if launched:  # a ConfigError under load is slotune's own error, not the trial's
                raise
            # refused before launch (platform defaults can add flags)
            return Measurement(ok=False, status="invalid_config", reason=str(exc), seconds=time.monotonic() - started)

    def _start_failed(self, launch: Launch, started: float) -> Measurement:
        result = launch.started
        detail = f": {result.log_lines[-1]}" if result.log_lines else ""
        findings = _findings(launch.diagnosis)
        return Measurement(
            ok=False, status=result.status.value, reason=f"{result.status.value}{detail}",
            findings=findings, log_path=str(result.log_path), seconds=time.monotonic() - started,
        )

    def _measure_running(self, server: ManagedServer, config: VllmConfig, say: Progress, started: float,
                         check: ProbeCheck | None = None) -> Measurement:
        load = self.load
        model = config.served_model_name or config.model
        url = server.base_url
        plan = LoadPlan(load.workload, concurrency=load.concurrency, num_requests=load.num_requests,
                        rate=load.rate, duration=load.duration, seed=load.seed,
                        warmup_requests=load.warmup_requests)
        rate = load.rate
        try:
            if load.mode == "capacity":
                if plan.warmup_requests:
                    say("warming up")
                    warm_up(url, model, plan)
                swept: list[float | None] = []
                points: list[dict[str, Any]] = []
                measured = measure_window(url, lambda: self._capacity(url, model, swept, points), model=model,
                                          slo=load.slo, server_config=config, progress=say,
                                          process_group=server.process_group)
                rate = swept[0] if swept else None
            else:
                probe = probe_size(load.num_requests) if check is not None else 0
                if probe:
                    # The probe doubles as the warm-up's successor: same load, another seed, not measured
                    # again in the window that follows.
                    if plan.warmup_requests:
                        say("warming up")
                        warm_up(url, model, plan)
                    say(f"probing ({probe} requests)")
                    figures = run_load(url, model, load.workload, rate=load.rate, concurrency=load.concurrency,
                                       num_requests=probe, slo=load.slo, seed=load.seed + 2,
                                       request_timeout=plan.request_timeout).to_dict()
                    reason = check(figures, probe)  # type: ignore[misc]
                    if reason:
                        return Measurement(ok=True, status="pruned", reason=reason,
                                           goodput=float(figures.get("goodput") or 0.0), rate=rate, client=figures,
                                           log_path=str(server.log_path), seconds=time.monotonic() - started)
                    plan = replace(plan, warmup_requests=0)
                measured = measure_window(url, plan, model=model, slo=load.slo, server_config=config, progress=say,
                                          process_group=server.process_group)
        except TargetError as exc:
            # The server died or stopped answering under load: this config does not serve the workload.
            alive = server.is_running()
            return Measurement(
                ok=False, status="load_failed", reason=f"server failed under load: {exc}" + ("" if alive else " (exited)"),
                log_path=str(server.log_path), seconds=time.monotonic() - started,
            )
        # Optuna keeps a trial's figures as JSON attributes: the typed parts are serialised here.
        client = measured.client.to_dict() if measured.client is not None else {"goodput": 0.0, "completed": 0,
                                                                                  "failed": 0}
        return Measurement(
            ok=True, status="ready", goodput=float(client.get("goodput") or 0.0), rate=rate, client=client,
            server=measured.server.to_dict(), findings=_findings(measured.diagnosis), log_path=str(server.log_path),
            seconds=time.monotonic() - started, requests=run_requests(measured.client, load.slo),
            sweep=points if load.mode == "capacity" else [],
        )

    def _capacity(self, url: str, model: str, swept: list[float | None],
                  points: list[dict[str, Any]]) -> LoadResult | None:
        """The highest rate that still meets every SLO (appended to `swept`, every rate tried to
        `points`, for the report's goodput-against-rate figure) and the load measured at it."""
        load = self.load
        found = find_max_rate(url, model, load.workload, load.slo, num_requests=load.num_requests, seed=load.seed)
        swept.append(found.max_rate)
        points.extend({k: v for k, v in p.to_dict().items() if k in ("rate", "met", "goodput", "request_throughput")}
                      for p in found.points)
        return found.best


def run_requests(result: LoadResult | None, slo: SloSpec) -> dict[str, Any] | None:
    """The measured requests as compact columns (`RunRequests.to_dict()`), good per `slo`'s thresholds."""
    if result is None:
        return None
    run = RunRequests.from_latencies((r.latencies() for r in result.records), slo.request_thresholds(),
                                     result.duration)
    return run.to_dict()


def _findings(diagnosis: Diagnosis | None) -> list[dict[str, Any]]:
    return list(diagnosis.to_dict().get("findings") or []) if diagnosis is not None else []
