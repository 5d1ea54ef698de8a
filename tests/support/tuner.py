"""The tuner under test: a synthetic `Measure` for the study's mechanics (ordering, constraints,
storage, resume, verdict) without a server (the real measurement is exercised in tests/integration),
and `slotune tune` as a subprocess with its own data directory (the vLLM processes it starts are
found by that directory: see `procs`)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from slotune.collectors.snapshot import Snapshot
from slotune.loadgen.figures import LoadFigures
from slotune.loadgen.goodput import RequestLatencies
from slotune.playbooks.engine import Finding, RemedyOut
from slotune.quantiles import Quantiles
from slotune.tuner.confidence import RunRequests
from slotune.tuner.measure import Measurement
from slotune.vllm_config import VllmConfig
from tests.support.paths import REPO

N_REQUESTS = 100
GOOD_SHARE = 0.8


def requests(goodput: float, ttft_p95: float, n: int = N_REQUESTS, good_share: float = GOOD_SHARE) -> RunRequests:
    """A run's requests whose goodput is `goodput` req/s and whose TTFT p95
    is about `ttft_p95`: `good_share` of the `n` requests good (the rest finished but slow, or
    failed when every request is good), TTFTs spread evenly up to `ttft_p95 / 0.95`."""
    good = round(n * good_share)
    duration = good / goodput if goodput > 0 else 10.0
    top = ttft_p95 / 0.95
    lat = [RequestLatencies(ok=True, ttft=top * (i + 1) / n, tpot=0.02, itl_mean=0.02, e2e=top * (i + 1) / n + 1)
           for i in range(n)]
    run = RunRequests.from_latencies(lat, {}, duration)
    flags = tuple(i < good for i in range(n))
    return RunRequests(run.duration, run.ok, flags, run.ttft, run.tpot, run.itl, run.e2e)


def client(ttft_p95: float, goodput: float, tpot_p95: float = 0.02) -> LoadFigures:
    """A run of 20 requests, all completed, at `goodput` req/s; each latency's quantiles around its p95."""
    def block(p95: float) -> Quantiles:
        return Quantiles(p50=p95 / 2, p95=p95, p99=p95 * 1.2, mean=p95 / 2, count=20)

    return LoadFigures(ttft=block(ttft_p95), tpot=block(tpot_p95), itl=block(tpot_p95), e2e=block(ttft_p95 + 1),
                       completed=20, failed=0, error_rate=0.0, request_throughput=goodput, goodput=goodput)


def finding(playbook: str, severity: str, summary: str, *remedies: tuple[dict, str]) -> Finding:
    """A playbook's finding with these remedies (config delta, why), as the engine would report it."""
    return Finding(playbook=playbook, title=playbook, severity=severity, summary=summary, cause=None, evidence=(),
                   window={}, remedies=tuple(RemedyOut("", why, delta) for delta, why in remedies))


def window(**figures: object) -> Snapshot:
    """A one-second server window with these figures (`Snapshot` fields)."""
    return Snapshot(target="http://fake", window_start=0.0, window_end=1.0, **figures)  # type: ignore[arg-type]


@dataclass
class FakeMeasure:
    """Goodput rises with max_num_seqs; TTFT p95 falls with chunked prefill; the default misses a
    500 ms TTFT target. max_num_seqs=256 "fails to start" (KV cache too small)."""

    calls: list[VllmConfig] = field(default_factory=list)
    noise: list[float] = field(default_factory=list)
    # TTFT p95 (s) of configs with these max_num_seqs, overriding the rule above (a far miss, say).
    ttft_by_seqs: dict[int, float] = field(default_factory=dict)
    good_share: float = GOOD_SHARE  # of each run's requests (`requests`)
    n_requests: int = N_REQUESTS
    watches = True  # takes `check`, like ServerMeasure: the window so far reads as this config's figures
    watched: list[VllmConfig] = field(default_factory=list)

    def __call__(self, config: VllmConfig, progress=None, check=None) -> Measurement:
        self.calls.append(config)
        if progress:
            progress("measuring")
        if config.max_num_seqs == 256:
            return Measurement(ok=False, status="kv_cache_too_small", reason="kv_cache_too_small: fake",
                               log_path="/tmp/fake.log")
        seqs = config.max_num_seqs or 256
        goodput = 1.0 + min(seqs, 64) / 32 + (self.noise.pop(0) if self.noise else 0.0)
        ttft = 0.3 if config.enable_chunked_prefill else 0.8
        ttft = self.ttft_by_seqs.get(config.max_num_seqs or 0, ttft)
        if check is not None:
            self.watched.append(config)
            reason = check(client(ttft, goodput), 8)
            if reason:
                return Measurement(ok=True, status="pruned", reason=reason, goodput=goodput,
                                   client=client(ttft, goodput), log_path="/tmp/fake.log", seconds=0.5)
        findings: tuple[Finding, ...] = ()
        if config.enable_chunked_prefill is None:
            findings = (finding("high_ttft", "warning", "TTFT high",
                                ({"enable_chunked_prefill": True}, "split prefills"),
                                ({"max_num_seqs": 60}, "bigger batches")),)
        return Measurement(ok=True, goodput=goodput, rate=None, client=client(ttft, goodput),
                           server=window(kv_cache_usage=0.5), findings=findings, log_path="/tmp/fake.log",
                           requests=requests(goodput, ttft, self.n_requests, self.good_share))


SPACE_DIMENSIONS = ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "enable_chunked_prefill",
                    "enable_prefix_caching", "quantization", "kv_cache_dtype", "speculative_method")


def space_yaml(**searched: str) -> str:
    """A search-space file that fixes every dimension at vLLM's default but those given, e.g.
    `space_yaml(max_num_seqs="[default, 32]")`: a small space whose every config the test knows."""
    return "".join(f"{name}: {searched.get(name, 'default')}\n" for name in SPACE_DIMENSIONS)


def tune_cmd(model: Path, *args: str) -> list[str]:
    """`slotune tune` on `model` with a short workload and loose SLO; `args` add or override flags."""
    return [sys.executable, "-m", "slotune.cli.main", "tune", "--model", str(model), "--input-len", "48",
            "--output-len", "16", "--concurrency", "4", "--num-requests", "20", "--remeasure", "0",
            "--slo", "ttft_p95<=5s,e2e_p95<=20s", *args]


def spawn(cmd: list[str], data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start `cmd` with its own data directory, its output to `log`."""
    env = {**os.environ, "SLOTUNE_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def run_workers(specs: list, measure: object) -> None:
    """`run_study` for each spec at once, one thread each (workers sharing a study; processes in
    tests/integration/test_tuner_workers.py), on the first spec's storage; a worker's exception is
    raised here, in the test's thread."""
    import threading

    from slotune.tuner.storage import open_storage
    from slotune.tuner.study import run_study

    errors: list[BaseException] = []

    def worker(spec: object) -> None:
        try:
            run_study(spec, measure=measure)  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001  (raised below, in the test's thread)
            errors.append(exc)

    # The schemas first: two SQLite clients creating tables at once race (PostgreSQL takes a lock).
    open_storage(specs[0].storage).engine.dispose()
    threads = [threading.Thread(target=worker, args=(s,)) for s in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
