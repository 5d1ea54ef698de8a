"""One trial's measurement: launch → warm up → load → measure → diagnose → stop.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from slotune.errors import ConfigError, TargetError
from slotune.server import ManagedServer, StartResult
from slotune.slo import SloSpec
from slotune.vllm_config import VllmConfig

Mode = Literal["offered", "capacity"]
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Measurement:
    """What one trial measured. `client` is the load generator's JSON; `server` the collector's window."""

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def remedies(self) -> list[dict[str, Any]]:
        """The findings' remedies, most severe finding first, each with its `config_delta`."""
        order = {"critical": 0, "warning": 1, "info": 2}
        out = []
        for f in sorted(self.findings, key=lambda f: order.get(str(f.get("severity")), 3)):
            for r in f.get("remedies") or []:
                if isinstance(r, dict) and r.get("config_delta"):
                    out.append({**r, "playbook": f.get("playbook")})
        return out


class Measure(Protocol):
    def __call__(self, config: VllmConfig, progress: Progress | None = None) -> Measurement: ...


@dataclass(frozen=True)
class LoadSpec:
    """How each trial loads its server (the same for every trial, so trials compare)."""

    workload: Any  # loadgen.workload.Workload
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

    def __call__(self, config: VllmConfig, progress: Progress | None = None) -> Measurement:
        say = progress or (lambda _msg: None)
        started = time.monotonic()
        server = ManagedServer(config, log_dir=self.log_dir, startup_timeout=self.startup_timeout,
                               cpus=self.server_cpus, slo=self.load.slo)
        try:
            say("starting vLLM")
            try:
                result = server.start()
            except ConfigError as exc:  # refused before launch (platform defaults can add flags)
                return Measurement(ok=False, status="invalid_config", reason=str(exc), seconds=time.monotonic() - started)
            if not result.ok:
                return self._start_failed(config, result, started)
            with client_seat(self.server_cpus):
                return self._measure_running(server, config, say, started)
        finally:
            server.stop()

    def _start_failed(self, config: VllmConfig, result: StartResult, started: float) -> Measurement:
        detail = f": {result.log_lines[-1]}" if result.log_lines else ""
        findings = _diagnose([], slo=self.load.slo, config=config, startup_failure=result, client=None)
        return Measurement(
            ok=False, status=result.status.value, reason=f"{result.status.value}{detail}",
            findings=findings, log_path=str(result.log_path), seconds=time.monotonic() - started,
        )

    def _measure_running(self, server: ManagedServer, config: VllmConfig, say: Progress, started: float) -> Measurement:
        from slotune.loadgen.runner import run_load

        from slotune.collectors import vllm_metrics

        load = self.load
        model = config.served_model_name or config.model
        url = server.base_url
        try:
            if load.warmup_requests:
                say("warming up")
                run_load(url, model, load.workload, concurrency=min(2, load.warmup_requests),
                         num_requests=load.warmup_requests, seed=load.seed + 1)
            before = vllm_metrics.scrape(f"{url}/metrics")
            say("running the workload")
            rate = load.rate
            if load.mode == "capacity":
                client, rate = self._capacity(url, model)
            else:
                client = run_load(url, model, load.workload, rate=load.rate, concurrency=load.concurrency,
                                  num_requests=load.num_requests, duration=load.duration, slo=load.slo,
                                  seed=load.seed).to_dict()
            after = vllm_metrics.scrape(f"{url}/metrics")
        except TargetError as exc:
            # The server died or stopped answering under load: this config does not serve the workload.
            alive = server.is_running()
            return Measurement(
                ok=False, status="load_failed", reason=f"server failed under load: {exc}" + ("" if alive else " (exited)"),
                log_path=str(server.log_path), seconds=time.monotonic() - started,
            )
        window = vllm_metrics.derive(before, after, target=url)
        say("diagnosing")
        findings = _diagnose([window], slo=load.slo, config=config, startup_failure=None, client=client)
        return Measurement(
            ok=True, status="ready", goodput=float(client.get("goodput") or 0.0), rate=rate, client=client,
            server=window.to_dict(), findings=findings, log_path=str(server.log_path),
            seconds=time.monotonic() - started,
        )

    def _capacity(self, url: str, model: str) -> tuple[dict[str, Any], float | None]:
        """The highest rate that still meets every SLO, and the load result measured at it."""
        from slotune.loadgen.sweep import find_max_rate

        load = self.load
        found = find_max_rate(url, model, load.workload, load.slo, num_requests=load.num_requests, seed=load.seed)
        best = getattr(found, "best", None)
        rate = getattr(found, "max_rate", None)
        client = best.to_dict() if best is not None and hasattr(best, "to_dict") else {}
        if not client:
            client = {"goodput": 0.0, "completed": 0, "failed": 0}
        return client, rate


def _diagnose(windows: list[Any], *, slo: SloSpec, config: VllmConfig, startup_failure: StartResult | None,
              client: dict[str, Any] | None) -> list[dict[str, Any]]:
    from slotune.playbooks.engine import diagnose

    diagnosis = diagnose(windows, slo=slo, server_config=config, startup_failure=startup_failure, client=client)
    return list(diagnosis.to_dict().get("findings") or [])
