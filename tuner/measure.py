"""One trial's measurement: launch → warm up → load → measure → diagnose → stop.

Launching and the measured window are the measurement floor's (`slotune.measurement.start_or_explain`,
`measure_window`); this module adds what a trial needs on top (the client's CPU seat, capacity mode,
mapping outcomes to a status) and keeps the result as the trial's record, `Measurement`, of typed parts;
they become JSON only where Optuna stores them as trial attributes, or the database a trial's row.

The study only sees the `Measure` protocol (config in, `Measurement` out), so its mechanics (baseline
first, remedies, constraints, storage, resume) are testable without a server; `ServerMeasure` is
the real thing. Expected start-up failures come back as a `Measurement` with `ok=False` and a
reason; errors inside slotune propagate.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from slotune.collectors.snapshot import Snapshot
from slotune.errors import ConfigError, TargetError
from slotune.loadgen.figures import LoadFigures
from slotune.loadgen.runner import LoadResult
from slotune.loadgen.sweep import SweepPoint, find_max_rate
from slotune.loadgen.workload import Workload
from slotune.measurement import Launch, LoadPlan, measure_window, start_or_explain, warm_up
from slotune.playbooks.engine import Finding, RemedyOut
from slotune.playbooks.model import SEVERITIES
from slotune.server import ManagedServer
from slotune.slo import SloSpec
from slotune.tuner.confidence import RunRequests
from slotune.vllm_config import VllmConfig

Mode = Literal["offered", "capacity"]
Progress = Callable[[str], None]


# The client-side figures a trial's Optuna attributes keep (the full JSON is in slotune_trials).
TRIAL_CLIENT_KEYS = ("ttft_seconds", "tpot_seconds", "itl_seconds", "e2e_seconds", "completed", "failed",
                     "error_rate", "duration_seconds", "request_throughput", "output_throughput", "goodput",
                     "warnings", "rate", "concurrency")
# A measured trial with no run to show (capacity mode, no rate met the SLOs): its client figures.
_NO_RUN = {"goodput": 0.0, "completed": 0, "failed": 0}
# Attributes only a trial that reached an outcome has (a queued or running one has none of them).
_MEASURED_ATTRS = ("status", "goodput", "client", "requests")
# The least finished requests a trial's window needs for its findings to propose flag changes: lower
# than the playbooks' own floor (`playbooks/sample.yaml`), because a trial's window is all the tuner
# has and a remedy it queues is a candidate it measures in a trial of its own, never a change applied
# to a serving server. Trials of 4 requests (the real-model tests' and benches') still get theirs.
TUNER_MIN_REQUESTS = 4
_SPEC_FIELDS = ("spec_decode_drafts", "spec_decode_draft_tokens", "spec_decode_accepted_tokens",
                "spec_decode_acceptance_rate", "spec_decode_mean_acceptance_length")


@dataclass(frozen=True)
class RatePoint:
    """One rate a capacity sweep tried (req/s), whether it met every SLO, and what it achieved."""

    rate: float
    met: bool
    goodput: float | None = None  # good requests/s
    request_throughput: float | None = None  # completed requests/s

    @classmethod
    def of(cls, point: SweepPoint) -> RatePoint:
        figures = point.result.figures()
        return cls(point.rate, point.met, figures.goodput, figures.request_throughput)

    def to_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "met": self.met, "goodput": self.goodput,
                "request_throughput": self.request_throughput}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RatePoint:
        return cls(d["rate"], bool(d.get("met")), d.get("goodput"), d.get("request_throughput"))


@dataclass(frozen=True)
class ProposedRemedy:
    """A finding's remedy with the playbook that proposed it (what the study queues as a trial)."""

    playbook: str
    remedy: RemedyOut

    def to_dict(self) -> dict[str, Any]:
        """`{action, why, config_delta, playbook}`."""
        return {**self.remedy.to_dict(), "playbook": self.playbook}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProposedRemedy:
        return cls(str(d.get("playbook") or ""), RemedyOut.from_dict(d))


@dataclass(frozen=True)
class Measurement:
    """What one trial measured, typed: `client` the load generator's figures (None when no load
    ran: a server that never started or died, or a capacity sweep where no rate met the SLOs),
    `server` the window's snapshot (None when no window was measured), `findings` the diagnosis'
    (of the window, or of a failed start), `requests` each request's figures (what the verdict's
    intervals are bootstrapped from; None when nothing was measured), `sweep` every rate a capacity
    sweep tried.

    They become JSON only at the edges, each one way and back: `to_attrs()` / `from_attrs()` for
    the trial's Optuna user attributes (what a resumed or reported study reads), `to_dict()` /
    `from_dict()` for the full record (`slotune_trials`, the benchmarks' files)."""

    ok: bool
    reason: str = ""
    status: str = "ready"  # a StartStatus value, or "load_failed", or "pruned"
    goodput: float = 0.0  # good requests/s
    rate: float | None = None  # the offered rate, or the highest rate meeting the SLOs (capacity)
    client: LoadFigures | None = None
    server: Snapshot | None = None
    findings: tuple[Finding, ...] = ()
    log_path: str | None = None
    seconds: float = 0.0
    requests: RunRequests | None = None
    sweep: tuple[RatePoint, ...] = ()

    def remedies(self) -> list[ProposedRemedy]:
        """The findings' remedies that change the config, most severe finding first."""
        def rank(f: Finding) -> int:
            return SEVERITIES.index(f.severity) if f.severity in SEVERITIES else len(SEVERITIES)

        return [ProposedRemedy(f.playbook, r) for f in sorted(self.findings, key=rank) for r in f.remedies
                if r.config_delta]

    def spec_decode(self) -> dict[str, float | None] | None:
        """Drafting's own record over the window, from the server's counters (`{drafts, draft_tokens,
        accepted_tokens, acceptance_rate, mean_acceptance_length}`); None without drafting."""
        if self.server is None or self.server.spec_decode_drafts is None:
            return None
        return {k.removeprefix("spec_decode_"): getattr(self.server, k) for k in _SPEC_FIELDS}

    # -- the edges ---------------------------------------------------------------------------------

    def client_json(self) -> dict[str, Any]:
        """The client figures' JSON (`LoadFigures.to_dict()`); `{}` when nothing ran."""
        if self.client is not None:
            return self.client.to_dict()
        return dict(_NO_RUN) if self.ok else {}

    def to_dict(self) -> dict[str, Any]:
        """The full record as JSON: `{ok, reason, status, goodput, rate, client, server, findings,
        log_path, seconds, requests, sweep}`."""
        return {
            "ok": self.ok, "reason": self.reason, "status": self.status, "goodput": self.goodput, "rate": self.rate,
            "client": self.client_json(), "server": self.server.to_dict() if self.server is not None else None,
            "findings": [f.to_dict() for f in self.findings], "log_path": self.log_path, "seconds": self.seconds,
            "requests": self.requests.to_dict() if self.requests is not None else None,
            "sweep": [p.to_dict() for p in self.sweep],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Measurement:
        """The inverse of `to_dict()`. Raises `ValueError` or `KeyError` on a record of another shape."""
        return cls(
            ok=bool(d["ok"]), reason=d.get("reason") or "", status=d.get("status") or "ready",
            goodput=float(d.get("goodput") or 0.0), rate=d.get("rate"),
            client=LoadFigures.from_dict(d["client"]) if d.get("client") else None,
            server=Snapshot.from_dict(d["server"]) if d.get("server") is not None else None,
            findings=tuple(Finding.from_dict(f) for f in d.get("findings") or ()), log_path=d.get("log_path"),
            seconds=float(d.get("seconds") or 0.0), requests=RunRequests.from_dict(d.get("requests")),
            sweep=tuple(RatePoint.from_dict(p) for p in d.get("sweep") or ()),
        )

    def to_attrs(self, slo: SloSpec) -> dict[str, Any]:
        """The trial's Optuna user attributes this measurement sets, in the order they are set:
        `reason`, `status`, `goodput`, `rate`, `sweep` (capacity mode only), `slo` (each target of
        `slo` checked against the client figures; `[]` when nothing was measured), `client` (the
        figures in `TRIAL_CLIENT_KEYS`), `log_path`, `findings` (playbook names), `remedies`
        (`ProposedRemedy.to_dict()`, most severe first), `requests`, `spec_decode`."""
        client = self.client_json()
        attrs: dict[str, Any] = {"reason": self.reason, "status": self.status, "goodput": self.goodput,
                                 "rate": self.rate}
        if self.sweep:  # capacity mode: the rates tried, drawn by the report as goodput against rate
            attrs["sweep"] = [p.to_dict() for p in self.sweep]
        attrs["slo"] = [r.to_dict() for r in slo.evaluate(self.client)] if self.ok else []
        attrs["client"] = {k: client.get(k) for k in TRIAL_CLIENT_KEYS if k in client}
        attrs["log_path"] = self.log_path
        attrs["findings"] = [f.playbook for f in self.findings]
        attrs["remedies"] = [r.to_dict() for r in self.remedies()]
        # Each request's figures: the verdict bootstraps its intervals from them (tuner.confidence).
        attrs["requests"] = self.requests.to_dict() if self.requests is not None else None
        attrs["spec_decode"] = self.spec_decode()
        return attrs

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Measurement | None:
        """A stored trial's measurement, from its user attributes (`to_attrs()`, every format
        stored so far); None when the trial has none (it never got to an outcome).

        The attributes keep less than the trial measured: the client figures of `TRIAL_CLIENT_KEYS`,
        no server window (`spec_decode` stays an attribute of its own), each finding as its playbook
        and its remedies (severity unknown, in the stored order, which is the diagnosis' own: most
        severe first), no `seconds`."""
        if not any(k in attrs for k in _MEASURED_ATTRS):
            return None
        by_playbook: dict[str, list[RemedyOut]] = {}
        for r in attrs.get("remedies") or ():
            if isinstance(r, Mapping):
                by_playbook.setdefault(str(r.get("playbook") or ""), []).append(RemedyOut.from_dict(r))
        findings = tuple(Finding(playbook=name, title="", severity="", summary="", cause=None, evidence=(),
                                 window={}, remedies=tuple(by_playbook.get(name, ())))
                         for name in attrs.get("findings") or () if isinstance(name, str))
        client = attrs.get("client")
        return cls(
            ok=attrs.get("state") != "infeasible", reason=attrs.get("reason") or "", status=attrs.get("status") or "ready",
            goodput=float(attrs.get("goodput") or 0.0), rate=attrs.get("rate"),
            client=LoadFigures.from_dict(client) if client else None, findings=findings,
            log_path=attrs.get("log_path"), requests=RunRequests.from_dict(attrs.get("requests")),
            sweep=tuple(RatePoint.from_dict(p) for p in attrs.get("sweep") or ()),
        )


class Measure(Protocol):
    """Config in, `Measurement` out. A measure with `watches = True` also takes `check`: it then shows
    `check` the window's figures so far (`LoadFigures` of the requests finished, and their count) as
    the requests come in; a reason back stops the trial there (status `pruned`, those figures)."""

    def __call__(self, config: VllmConfig, progress: Progress | None = None) -> Measurement: ...


PartialCheck = Callable[[LoadFigures, int], "str | None"]

# A trial's window is first judged after this share of its requests (and at least FIRST_LOOK_MIN):
# a p95 over a handful of requests is their maximum, and one slow request is not a far miss.
FIRST_LOOK_SHARE = 0.1
FIRST_LOOK_MIN = 5
LOOKS = 20  # then every 1/LOOKS of the trial's requests
UNBOUNDED_LOOK_EVERY = 20  # a window bounded by time only: a look every this many requests


def look_points(num_requests: int | None) -> tuple[int, int]:
    """When a window of `num_requests` is judged: (the first look, after that many finished requests;
    then after every this many). A window bounded by time only is looked at from FIRST_LOOK_MIN, every
    UNBOUNDED_LOOK_EVERY (each look reads every request so far: spaced, they cost the run little)."""
    if not num_requests:
        return FIRST_LOOK_MIN, UNBOUNDED_LOOK_EVERY
    return max(FIRST_LOOK_MIN, round(num_requests * FIRST_LOOK_SHARE)), max(1, num_requests // LOOKS)


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
    watches = True

    def __call__(self, config: VllmConfig, progress: Progress | None = None,
                 check: PartialCheck | None = None) -> Measurement:
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
        findings = launch.diagnosis.findings if launch.diagnosis is not None else ()
        return Measurement(
            ok=False, status=result.status.value, reason=f"{result.status.value}{detail}",
            findings=findings, log_path=str(result.log_path), seconds=time.monotonic() - started,
        )

    def _measure_running(self, server: ManagedServer, config: VllmConfig, say: Progress, started: float,
                         check: PartialCheck | None = None) -> Measurement:
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
                points: list[RatePoint] = []
                measured = measure_window(url, lambda: self._capacity(url, model, swept, points), model=model,
                                          slo=load.slo, server_config=config, progress=say,
                                          process_group=server.process_group, min_requests=TUNER_MIN_REQUESTS)
                rate = swept[0] if swept else None
            else:
                if check is not None:
                    first, every = look_points(load.num_requests)

                    def watch(so_far: LoadResult) -> str | None:
                        n = len(so_far.records)
                        return check(so_far.figures(), n) if n >= first else None

                    plan = replace(plan, watch=watch, watch_every=every)
                measured = measure_window(url, plan, model=model, slo=load.slo, server_config=config, progress=say,
                                          process_group=server.process_group, min_requests=TUNER_MIN_REQUESTS)
        except TargetError as exc:
            # The server died or stopped answering under load: this config does not serve the workload.
            alive = server.is_running()
            return Measurement(
                ok=False, status="load_failed", reason=f"server failed under load: {exc}" + ("" if alive else " (exited)"),
                log_path=str(server.log_path), seconds=time.monotonic() - started,
            )
        client = measured.client.figures() if measured.client is not None else None
        stopped = measured.client.stopped if measured.client is not None else None
        return Measurement(
            ok=True, status="pruned" if stopped else "ready", reason=stopped or "",
            goodput=float(client.goodput or 0.0) if client is not None else 0.0, rate=rate,
            client=client, server=measured.server,
            findings=measured.diagnosis.findings if measured.diagnosis is not None else (),
            log_path=str(server.log_path), seconds=time.monotonic() - started,
            requests=run_requests(measured.client, load.slo), sweep=tuple(points) if load.mode == "capacity" else (),
        )

    def _capacity(self, url: str, model: str, swept: list[float | None],
                  points: list[RatePoint]) -> LoadResult | None:
        """The highest rate that still meets every SLO (appended to `swept`, every rate tried to
        `points`, for the report's goodput-against-rate figure) and the load measured at it."""
        load = self.load
        found = find_max_rate(url, model, load.workload, load.slo, num_requests=load.num_requests, seed=load.seed)
        swept.append(found.max_rate)
        points.extend(RatePoint.of(p) for p in found.points)
        return found.best


def run_requests(result: LoadResult | None, slo: SloSpec) -> RunRequests | None:
    """The measured requests as compact columns, good per `slo`'s thresholds."""
    if result is None:
        return None
    return RunRequests.from_latencies((r.latencies() for r in result.records), slo.request_thresholds(),
                                      result.duration)
