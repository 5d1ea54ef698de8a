"""The scenario matrix (`make bench-matrix`): what the playbooks say about the real model
(SmolLM2-135M-Instruct, `slotune model smollm2`) on the CPU vLLM, for the four real workloads at three
loads each. A benchmark, not a CI test: prints a Markdown table, asserts nothing.

Every cell goes through the one measurement pipeline (`slotune.measurement.start_or_explain`, then
`measure_window` with the server's process group, so the engine's CPU time is read too): the
client's TTFT p50/p95 and TPOT p95 (exact, per request), the offered load, the throughput reached,
and the findings that fire (playbook id, severity, cause).

The three loads, found per workload with three closed-loop runs (no sweep):

1. light: one request at a time (concurrency 1, after one warm-up request). Its mean e2e latency is
   R1, the time of one request alone.
2. beyond the knee: `--high` concurrent requests (default 8; 4 for `long-prompt`, whose prefills are
   long), far more than one CPU core batches without every step slowing down. Its throughput is X,
   what the server sustains.
3. at the knee: concurrency N* = round(X * R1) (Kleinrock's knee of a closed system: the fewest
   requests in flight that keep the server busy; below it latency stays near R1, above it every
   further request only queues). Run third, from the first two.

Each load sends prompts of its own (seeds 100, 200, 300), so no cell replays another's prompts into
vLLM's prefix cache.

Each workload has an SLO this host meets with margin one request at a time (`SLOS`; `--slo` replaces
it for every workload), so light load must be quiet and beyond the knee the SLO burns. Outputs are
capped (`--max-output`, default 32 tokens) and prompts kept as the workload draws them, so a
workload's cells take minutes, not hours. vLLM runs on the last core, this process on the others;
dtype float32 by default (on an AVX2-only host bf16 prefill is ~5x slower than fp32).

    .venv/bin/python bench/bench_matrix.py [--workload sharegpt edit long-prompt shared-prefix]
        [--max-output 32] [--high N] [--dtype float32] [--slo SPEC]

One server per invocation; several `--workload` runs can be pasted into one table (the header repeats).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from slotune.loadgen.workload import Workload, load_workload
from slotune.measurement import LoadPlan, Measurement, measure_window, start_or_explain
from slotune.quantiles import Quantiles
from slotune.server import ManagedServer
from slotune.slo import SloSpec
from slotune.vllm_config import VllmConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the testing package (tests.support) is not installed: read it from the checkout
from tests.support.paths import CACHE  # noqa: E402  (the built models, $SLOTUNE_TEST_CACHE as in the tests)

NAME = "smollm2"
WORKLOADS = ("sharegpt", "edit", "long-prompt", "shared-prefix")
# Met with margin one request at a time on a 2-core AVX2 host in fp32 (TPOT ~0.13 s; prefill
# ~4-8 ms per prompt token, longer prompts costing more per token).
SLOS = {
    "sharegpt": "ttft_p95<=10s,tpot_p95<=300ms",
    "edit": "ttft_p95<=5s,tpot_p95<=300ms",
    "long-prompt": "ttft_p95<=40s,tpot_p95<=300ms",
    "shared-prefix": "ttft_p95<=5s,tpot_p95<=300ms",
}
HIGH = {"long-prompt": 4}
LIGHT_REQUESTS = 3


def capped(wl: Workload, max_output: int) -> Workload:
    out = wl.output_len
    if out.dist == "fixed":
        new = dataclasses.replace(out, value=min(out.value, max_output))
    else:
        new = dataclasses.replace(out, min=min(out.min, max_output), max=min(out.upper, max_output))
    return dataclasses.replace(wl, output_len=new)


def findings(m: Measurement) -> str:
    assert m.diagnosis is not None
    fs = m.diagnosis.findings
    if not fs:
        return "none"
    return ", ".join(f"`{f.playbook}` {f.severity}" + (f" ({f.cause})" if f.cause else "") for f in fs)


def ms(q: Quantiles | None, key: str) -> str:
    v = getattr(q, key) if q is not None else None
    return "-" if v is None else (f"{v:.2f} s" if v >= 1 else f"{v * 1000:.0f} ms")


def cell(url: str, wl: Workload, slo: SloSpec, cfg: VllmConfig, pgid: int | None, concurrency: int,
         n: int, seed: int, warmup: int = 0) -> Measurement:
    # Each load gets prompts of its own (`seed`): with one seed the knee would replay the prompts the
    # beyond-the-knee run had just sent, and vLLM's prefix cache would serve their prefills (a 1,900-
    # token prompt's TTFT fell from ~40 s to ~1 s).
    plan = LoadPlan(wl, concurrency=concurrency, num_requests=n, warmup_requests=warmup, request_timeout=900,
                    seed=seed)
    return measure_window(url, plan, model=NAME, slo=slo, server_config=cfg, process_group=pgid)


def row(workload: str, slo: str, label: str, m: Measurement) -> str:
    assert m.client is not None
    d = m.client.figures()
    cpu = m.server.engine_cpu_utilization
    return (f"| {workload} | `{slo}` | {label} | {d.completed}/{(d.completed or 0) + (d.failed or 0)} | "
            f"{d.request_throughput:.3f} | {ms(d.ttft, 'p50')} / {ms(d.ttft, 'p95')} | "
            f"{ms(d.tpot, 'p95')} | {'-' if cpu is None else f'{cpu:.0%}'} | {findings(m)} |")


def host_facts(dtype: str, server_cpus: tuple[int, ...] | None) -> str:
    import vllm

    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    return (f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu}, {os.cpu_count()} cores "
            f"(vLLM on {list(server_cpus) if server_cpus else 'all'}); vLLM {vllm.__version__}; {NAME} {dtype}; "
            f"load average {os.getloadavg()[0]:.1f}")


def run_workload(name: str, model: Path, a: argparse.Namespace, cpus: tuple[int, ...] | None, logs: Path) -> None:
    slo_text = a.slo or SLOS[name]
    slo = SloSpec.parse(slo_text)
    wl = capped(load_workload(name).with_tokenizer(model), a.max_output)
    high = a.high or HIGH.get(name, 8)
    cfg = VllmConfig(model=str(model), served_model_name=NAME, dtype=a.dtype, max_model_len=4096)
    started = time.monotonic()
    with start_or_explain(ManagedServer(cfg, log_dir=logs, cpus=cpus, slo=slo, startup_timeout=900), slo=slo) as up:
        if not up.ok:
            sys.exit(f"error: vLLM did not start: {up.started.status.value}: {up.started.message}")
        url, pgid = up.server.base_url, up.server.process_group
        light = cell(url, wl, slo, cfg, pgid, 1, LIGHT_REQUESTS, seed=100, warmup=1)
        print(row(name, slo_text, "light: c=1", light), flush=True)
        beyond = cell(url, wl, slo, cfg, pgid, high, 2 * high, seed=200)
        assert light.client is not None and beyond.client is not None
        e2e = light.client.figures().e2e
        assert e2e is not None and e2e.mean is not None
        r1 = e2e.mean
        x = beyond.client.figures().request_throughput or 0.0
        knee = max(2, round(x * r1))
        note = "" if knee < high else " (N* not below the high load: raise --high)"
        at_knee = cell(url, wl, slo, cfg, pgid, knee, 3 * knee, seed=300)
        print(row(name, slo_text, f"knee: c={knee} (N* = {x:.3f} req/s x {r1:.1f} s){note}", at_knee), flush=True)
        print(row(name, slo_text, f"beyond: c={high}", beyond), flush=True)
    print(f"<!-- {name}: {time.monotonic() - started:.0f} s with the server's start -->", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    p.add_argument("--max-output", type=int, default=32)
    p.add_argument("--high", type=int, default=None, help="concurrency beyond the knee (default 8; long-prompt 4)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--slo", default=None, help="one SLO for every workload (default: per workload, SLOS)")
    a = p.parse_args()
    from slotune.smollm2 import build_smollm2

    model = build_smollm2(CACHE / "models" / "smollm2")
    cores = sorted(os.sched_getaffinity(0))  # the cores allowed here (a cpuset may not start at 0)
    cpus = (cores[-1],) if len(cores) >= 2 else None
    if cpus:
        os.sched_setaffinity(0, set(cores[:-1]))  # the client off the server's core
    print(f"Host: {host_facts(a.dtype, cpus)}\n")
    print("| workload | SLO | load | ok | req/s | TTFT p50 / p95 | TPOT p95 | engine CPU | findings |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    with tempfile.TemporaryDirectory(prefix="slotune-matrix-") as tmp:
        for name in a.workload:
            run_workload(name, model, a, cpus, Path(tmp))


if __name__ == "__main__":
    main()
