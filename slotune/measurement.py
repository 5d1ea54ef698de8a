"""The measurement floor: one measured window, and starting a server or saying why it did not start.

Every caller that measures a vLLM server goes through here: the tuner's trials (`tuner.measure`),
`slotune demo`, `slotune diagnose --target/--launch` and the benchmarks (`bench/`).

* `measure_window(target, load, ...)`: scrape the server's `/metrics`, drive the load (slotune's own
  generator from a `LoadPlan`, the caller's own action, or `load` seconds of the server's own
  traffic), scrape again, derive the window's `Snapshot`, judge it with the playbooks. Returns a
  `Measurement` of typed parts: the client's `LoadResult` (None when slotune sent nothing), the
  server's `Snapshot`, the `Diagnosis`.
* `start_or_explain(server, ...)`: a context manager that starts a `ManagedServer`, stops it on exit,
  and when it did not become ready hands back the playbooks' reading of its start-up log.

It sits above the collectors, the load generator and the playbooks and below the tuner: the playbook
package keeps the rules and the engine, no I/O orchestration. Serialising (`to_dict()`) is left to
the edges: the database, HTTP, files, Optuna's trial attributes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

from slotune.collectors import process_cpu, vllm_metrics
from slotune.collectors.gpu import GpuCollector
from slotune.collectors.snapshot import Snapshot
from slotune.errors import TargetError
from slotune.loadgen.runner import LoadResult, Watch, run_load, served_models
from slotune.loadgen.workload import Workload
from slotune.playbooks.engine import Diagnosis, diagnose
from slotune.playbooks.model import Playbook
from slotune.server import ManagedServer, StartResult
from slotune.slo import SloSpec
from slotune.vllm_config import VllmConfig

Progress = Callable[[str], None]
# The caller's own load (another client, a rate sweep): run inside the window; a LoadResult it
# returns becomes the measurement's client part.
Drive = Callable[[], "LoadResult | None"]


@dataclass(frozen=True)
class LoadPlan:
    """A bounded load from slotune's generator (`loadgen.runner.run_load`'s arguments).

    `warmup_requests` are sent before the window opens (concurrency up to 2, seed `seed + 1`), so
    first-request costs (connections, compilation, caches) stay out of the figures."""

    workload: Workload
    concurrency: int | None = 4
    num_requests: int | None = 20
    rate: float | None = None
    duration: float | None = None
    seed: int = 0
    request_timeout: float = 120.0
    warmup_requests: int = 0
    progress: bool = False  # a progress bar on the terminal
    # A look at the window so far that may end it sooner (`loadgen.runner.Watch`), every this many requests.
    watch: Watch | None = None
    watch_every: int = 1


@dataclass(frozen=True)
class Measurement:
    """One measured window: what the client saw, what the server's `/metrics` said, what it means.

    `client` is None when slotune sent no load (a watched window, or someone else's client);
    `diagnosis` is None when the caller asked for figures only (`judge=False`)."""

    server: Snapshot
    client: LoadResult | None = None
    diagnosis: Diagnosis | None = None


def warm_up(target: str, model: str, plan: LoadPlan) -> None:
    """Send the plan's warm-up requests (nothing when it has none); not measured."""
    if plan.warmup_requests:
        run_load(target, model, plan.workload, concurrency=min(2, plan.warmup_requests),
                 num_requests=plan.warmup_requests, seed=plan.seed + 1, request_timeout=plan.request_timeout)


def measure_window(target: str, load: LoadPlan | Drive | float, *, model: str | None = None,
                   slo: SloSpec | None = None, server_config: VllmConfig | None = None,
                   playbooks: Sequence[Playbook] | None = None, gpu: GpuCollector | None = None,
                   judge: bool = True, progress: Progress | None = None,
                   process_group: int | None = None, backend: str | None = None,
                   min_requests: float | None = None) -> Measurement:
    """Measure one window of the vLLM server at `target` (its base URL).

    `load`: a `LoadPlan` (warm-up, then slotune's generator; `model` defaults to the config's served
    name, else the server's first model), a callable (the caller's own load), or a number of seconds
    to watch the server's own traffic. `gpu`: read the GPUs at the window's end (None: not read).
    `judge=False` skips the playbooks. `process_group`: the group of a server slotune started
    (`ManagedServer.process_group`): its processes' CPU time over the window becomes the snapshot's
    `engine_cpu_utilization` (vLLM's own page covers only the API server process). `backend`,
    `min_requests`: as `playbooks.engine.diagnose` takes them. Raises `TargetError` when the server cannot be scraped or
    stops answering under the load."""
    say = progress or (lambda _msg: None)
    client: LoadResult | None = None
    cpu_before = None
    if isinstance(load, LoadPlan):
        name = model or (server_config.served_model_name if server_config else None) or first_model(target)
        if load.warmup_requests:
            say("warming up")
            warm_up(target, name, load)
        before = vllm_metrics.scrape(target)
        cpu_before = _group_cpu(process_group)
        say("running the workload")
        client = run_load(target, name, load.workload, rate=load.rate, concurrency=load.concurrency,
                          num_requests=load.num_requests, duration=load.duration, slo=slo, seed=load.seed,
                          progress=load.progress, request_timeout=load.request_timeout, watch=load.watch,
                          watch_every=load.watch_every)
    elif callable(load):
        before = vllm_metrics.scrape(target)
        cpu_before = _group_cpu(process_group)
        say("running the workload")
        client = load()
    else:
        before = vllm_metrics.scrape(target)
        cpu_before = _group_cpu(process_group)
        time.sleep(float(load))
    after = vllm_metrics.scrape(target)
    cpu = process_cpu.utilization(cpu_before, _group_cpu(process_group))
    window = vllm_metrics.derive(before, after, target=target, gpu=gpu.read() if gpu is not None else None)
    if cpu is not None:
        window = replace(window, engine_cpu_utilization=cpu)
    if not judge:
        return Measurement(window, client)
    say("diagnosing")
    figures = client.figures() if client is not None else None
    return Measurement(window, client, diagnose([window], slo=slo, server_config=server_config, client=figures,
                                                playbooks=playbooks, backend=backend, min_requests=min_requests))


def _group_cpu(pgid: int | None) -> process_cpu.GroupCpu | None:
    return process_cpu.read_group_cpu(pgid) if pgid is not None else None


@dataclass(frozen=True)
class Launch:
    """How a start went: `started` (READY or the failure class with its log lines) and, when it
    failed, the playbooks' `diagnosis` of the failure."""

    server: ManagedServer
    started: StartResult
    diagnosis: Diagnosis | None = None

    @property
    def ok(self) -> bool:
        return self.started.ok


@contextmanager
def start_or_explain(server: ManagedServer, *, slo: SloSpec | None = None,
                     playbooks: Sequence[Playbook] | None = None) -> Iterator[Launch]:
    """Start `server` (a `ManagedServer`, not yet started) and yield how it went; the server is stopped
    when the block exits, whatever happens in it.

    A start that fails (out of memory, bad flags, timeout...) is not an exception: `Launch.ok` is
    False and `Launch.diagnosis` names the cause from the classified log. A config refused before
    launch raises `ConfigError` (the server was never started)."""
    try:
        result = server.start()
        diagnosis = None
        if not result.ok:
            diagnosis = diagnose([], slo=slo, server_config=server.config, startup_failure=result,
                                 playbooks=playbooks)
        yield Launch(server, result, diagnosis)
    finally:
        server.stop()


def first_model(target: str) -> str:
    """The first model the server at `target` serves. Raises `TargetError` when it serves none."""
    names = served_models(target)
    if not names:
        raise TargetError(f"{target} serves no model (empty /v1/models); pass the model name")
    return names[0]
