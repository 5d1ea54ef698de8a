"""Diagnose a running server: open a window (scrape), wait or drive a short load, close it
(scrape), judge the window. What `slotune diagnose --target` and the integration tests run."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from slotune.collectors import vllm_metrics
from slotune.collectors.gpu import GpuCollector
from slotune.collectors.snapshot import Snapshot
from slotune.playbooks.engine import Diagnosis, diagnose
from slotune.playbooks.model import Playbook
from slotune.errors import TargetError
from slotune.slo import SloSpec
from slotune.vllm_config import VllmConfig


@dataclass(frozen=True)
class LoadPlan:
    """A short, bounded load to drive during the window (so an idle server can be judged)."""

    workload: Any  # loadgen.workload.Workload
    concurrency: int = 4
    num_requests: int = 20
    rate: float | None = None
    duration: float | None = None
    seed: int = 0
    request_timeout: float = 120.0


@dataclass(frozen=True)
class LiveResult:
    diagnosis: Diagnosis
    window: Snapshot
    client: dict[str, Any] | None


def diagnose_live(target: str, *, window: float = 30.0, load: LoadPlan | None = None, model: str | None = None,
                  slo: SloSpec | None = None, server_config: VllmConfig | None = None,
                  playbooks: Sequence[Playbook] | None = None, gpu: GpuCollector | None = None) -> LiveResult:
    """One window on `target`: `window` seconds of its own traffic, or the span of `load`."""
    gpu = gpu if gpu is not None else GpuCollector()
    before = vllm_metrics.scrape(target)
    client: dict[str, Any] | None = None
    if load is None:
        time.sleep(window)
    else:
        from slotune.loadgen.runner import run_load

        name = model or (server_config.served_model_name if server_config else None) or _first_model(target)
        client = run_load(target, name, load.workload, rate=load.rate, concurrency=load.concurrency,
                          num_requests=load.num_requests, duration=load.duration, slo=slo, seed=load.seed,
                          request_timeout=load.request_timeout).to_dict()
    after = vllm_metrics.scrape(target)
    snap = vllm_metrics.derive(before, after, target=target, gpu=gpu.read())
    d = diagnose([snap], slo=slo, server_config=server_config, client=client, playbooks=playbooks)
    return LiveResult(d, snap, client)


def _first_model(target: str) -> str:
    from slotune.loadgen.runner import served_models

    names = served_models(target)
    if not names:
        raise TargetError(f"{target} serves no model (empty /v1/models); pass the model name")
    return names[0]
