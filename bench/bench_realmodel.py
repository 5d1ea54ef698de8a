"""Figures of the real model (SmolLM2-135M-Instruct, `slotune model smollm2`) on the CPU vLLM: not a CI
test (`make bench-real`); prints figures with their spread over repeats, asserts nothing.

vLLM runs on the last core, the clients on the others (as `slotune tune --server-cpus`), at vLLM's
default flags unless said. Parts (`--parts`, default all):

1. `tpot`: per-output-token time, one stream (concurrency 1), 128-token prompts, exactly 128 tokens out.
2. `prefill`: TTFT of one 1,024- and one 2,048-token prompt at a time (2 tokens out): the prefill cost.
3. `capacity`: closed-loop throughput (req/s, output tokens/s) and latency at concurrency 4 and 8 on
   the `sharegpt` and `long-prompt` workloads (real prompts, sampled by seed), by slotune's load
   generator and by `vllm.benchmarks.serve` on the same prompts, in alternating order; replies capped
   at `--capacity-max-output` tokens (default 256: sharegpt's reach 1,024, minutes each on 2 cores).
   vLLM's prefix cache is reset before every run (the server runs with `VLLM_SERVER_DEV_MODE=1` for
   `/reset_prefix_cache`), so the second client on the same prompts gets no cached prefills.
4. `ngram`: n-gram speculative decoding (`{"method": "ngram", "num_speculative_tokens": 4,
   "prompt_lookup_max": 4, "prompt_lookup_min": 2}`) against the default on `edit` (greedy) and on
   `sharegpt` (at `--sharegpt-temperature`, default 0, where little speedup is expected): TPOT at
   concurrency 1 and the share of drafted tokens accepted (the server's own counters over each run),
   measured by slotune's load generator and by `vllm.benchmarks.serve` on the same prompts (one JSONL
   file in vLLM's `custom` format, `runner.prompt_lines`), in alternating rounds.

Each figure is given per repeat and as median [min-max] over the repeats, with the time measured and
the load average (other work on the host makes figures noisy).

    .venv/bin/python bench/bench_realmodel.py [--repeats 3] [--parts tpot prefill capacity ngram]
        [--requests 8] [--capacity-requests 24]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import httpx

from slotune.collectors.snapshot import Snapshot
from slotune.loadgen.runner import prompt_lines, run_load
from slotune.loadgen.vllm_bench import VllmBenchError, VllmBenchResult, custom_dataset_args, run_vllm_bench
from slotune.loadgen.workload import Workload, load_workload
from slotune.measurement import LoadPlan, measure_window, start_or_explain
from slotune.server import ManagedServer
from slotune.vllm_config import VllmConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the testing package (tests.support) is not installed: read it from the checkout
from tests.support.paths import CACHE  # noqa: E402  (the built models, $SLOTUNE_TEST_CACHE as in the tests)

NAME = "smollm2"
NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 2}


def spread(xs: list[float], scale: float = 1000.0, unit: str = "ms") -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return (f"{statistics.median(xs) * scale:.2f} {unit} [{min(xs) * scale:.2f}-{max(xs) * scale:.2f}] "
            f"(n={len(xs)}: {', '.join(f'{x * scale:.2f}' for x in xs)})")


def p50(d: dict, key: str) -> float | None:
    block = d.get(key)
    return None if not block else block.get("p50")


def stamp() -> str:
    return f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, load average {os.getloadavg()[0]:.1f}"


@contextmanager
def serve(model: Path, cpus: tuple[int, ...] | None, log_dir: Path, **flags: object) -> Iterator[ManagedServer]:
    """The real model on vLLM for the block (stopped after it); a failed start exits with its cause."""
    cfg = VllmConfig(model=str(model), served_model_name=NAME, **flags)
    with start_or_explain(ManagedServer(cfg, log_dir=log_dir, cpus=cpus, startup_timeout=900)) as launch:
        if not launch.ok:
            found = launch.diagnosis.findings if launch.diagnosis else []
            cause = "; ".join(f.summary for f in found) or launch.started.message
            sys.exit(f"vLLM did not start ({launch.started.status.value}): {cause} (log: {launch.started.log_path})")
        yield launch.server


def part_tpot(url: str, model: Path, a: argparse.Namespace) -> None:
    wl = dataclasses.replace(Workload.fixed(128, 128), tokenizer=str(model), endpoint="completions")
    tpots = []
    for rep in range(a.repeats):
        d = run_load(url, NAME, wl, concurrency=1, num_requests=a.requests, seed=10 + rep).to_dict()
        tpots.append(p50(d, "tpot_seconds"))
        print(f"   repeat {rep + 1}: TPOT p50 {tpots[-1] * 1000:.2f} ms ({d['completed']} ok)", flush=True)
    print(f"FIGURE real tpot c=1 128/128: {spread(tpots)} ({stamp()})", flush=True)


def part_prefill(url: str, model: Path, a: argparse.Namespace, work: Path) -> None:
    """TTFT of 1,024- and 2,048-token prompts one at a time, by both clients on the same prompts
    (alternating which goes first; vLLM's prefix cache reset before each run, or the second client's
    prefills would be cache hits)."""
    for n in (1024, 2048):
        wl = dataclasses.replace(Workload.fixed(n, 2), tokenizer=str(model))
        k = max(3, a.requests // 2)
        ttfts: dict[str, list[float | None]] = {"ours": [], "vllm": []}
        for rep in range(a.repeats):
            for client in (("ours", "vllm") if rep % 2 == 0 else ("vllm", "ours")):
                httpx.post(f"{url}/reset_prefix_cache", timeout=60).raise_for_status()
                if client == "ours":
                    d = run_load(url, NAME, wl, concurrency=1, num_requests=k, seed=20 + rep).to_dict()
                    ttfts["ours"].append(p50(d, "ttft_seconds"))
                else:
                    v = vllm_client(url, model, wl, k, 20 + rep, work)
                    ttfts["vllm"].append(statistics.median(v.ttfts) if v.ttfts else None)
        for client, xs in ttfts.items():
            print(f"FIGURE real prefill {n} tokens (TTFT p50, c=1, {client}): {spread(xs, 1.0, 's')} ({stamp()})",
                  flush=True)


def part_capacity(url: str, model: Path, a: argparse.Namespace, work: Path) -> None:
    for name in ("sharegpt", "long-prompt"):
        wl = load_workload(name).with_tokenizer(model)
        if wl.output_len.max > a.capacity_max_output:  # sharegpt's replies reach 1,024 tokens: minutes per request here
            wl = dataclasses.replace(wl, output_len=dataclasses.replace(wl.output_len, max=a.capacity_max_output))
        for conc in (4, 8):
            figs: dict[str, dict[str, list[float]]] = {}
            for rep in range(a.repeats):
                seed = 30 + rep
                # Alternate which client goes first so drift on a shared host falls on both alike.
                order = a.capacity_clients if rep % 2 == 0 else a.capacity_clients[::-1]
                for client in order:
                    # Both clients send the same prompts: without a reset the second would find every
                    # prefill in vLLM's prefix cache (the server runs in dev mode for this endpoint).
                    httpx.post(f"{url}/reset_prefix_cache", timeout=60).raise_for_status()
                    if client == "ours":
                        d = run_load(url, NAME, wl, concurrency=conc, num_requests=a.capacity_requests, seed=seed,
                                     request_timeout=600).to_dict()
                        row = (d["request_throughput"], d["output_throughput"], p50(d, "ttft_seconds"),
                               p50(d, "tpot_seconds"), d["completed"], d["failed"])
                    else:
                        v = vllm_client(url, model, wl, a.capacity_requests, seed, work, concurrency=conc)
                        tp = [x for x in v.tpots() if x is not None]
                        row = (float(v.summary.get("request_throughput") or 0.0),
                               float(v.summary.get("output_throughput") or 0.0),
                               statistics.median(v.ttfts) if v.ttfts else None,
                               statistics.median(tp) if tp else None, v.completed,
                               a.capacity_requests - v.completed)
                    f = figs.setdefault(client, {"thr": [], "out": [], "ttft": [], "tpot": []})
                    for key, x in zip(("thr", "out", "ttft", "tpot"), row[:4], strict=True):
                        f[key].append(x)  # type: ignore[arg-type]
                    print(f"   {name} c={conc} {client} repeat {rep + 1}: {row[0]:.3f} req/s, "
                          f"{row[1]:.1f} output tok/s, {row[4]} ok, {row[5]} failed", flush=True)
            for client, f in figs.items():
                print(f"FIGURE real capacity {name} c={conc} ({client}): {spread(f['thr'], 1.0, 'req/s')}; output "
                      f"{spread(f['out'], 1.0, 'tok/s')}; TTFT p50 {spread(f['ttft'])}; TPOT p50 {spread(f['tpot'])} "
                      f"({stamp()})", flush=True)


def ours(url: str, wl: Workload, n: int, seed: int) -> tuple[float | None, int, Snapshot]:
    """slotune's client at concurrency 1: TPOT p50, requests completed, the server's window."""
    m = measure_window(url, LoadPlan(wl, concurrency=1, num_requests=n, seed=seed, request_timeout=600),
                       model=NAME, judge=False)
    assert m.client is not None  # a LoadPlan's window has the client's figures
    tpot = m.client.figures().tpot
    return (tpot.p50 if tpot is not None else None), m.client.completed, m.server


def vllm_client(url: str, model: Path, wl: Workload, n: int, seed: int, work: Path, *,
                concurrency: int = 1) -> VllmBenchResult:
    """`vllm.benchmarks.serve` on exactly the prompts `run_load` sends with this seed (one JSONL file in
    vLLM's `custom` format), closed loop at `concurrency`."""
    prompts = work / f"{wl.name}-{seed}-{n}.jsonl"
    prompts.write_text("".join(prompt_lines(wl, seed, n)))
    endpoint = (["--backend", "openai-chat", "--endpoint", "/v1/chat/completions"] if wl.endpoint == "chat"
                else ["--backend", "vllm", "--endpoint", "/v1/completions"])
    argv = [*endpoint, "--base-url", url, "--model", NAME,
            "--tokenizer", str(model), *custom_dataset_args(prompts), "--num-prompts", str(n),
            "--max-concurrency", str(concurrency), "--request-rate", "inf", "--disable-tqdm", "--seed", str(seed)]
    if wl.temperature is not None:
        argv += ["--temperature", str(wl.temperature)]
    if wl.ignore_eos:
        argv.append("--ignore-eos")
    try:
        return run_vllm_bench(argv)
    except VllmBenchError as exc:
        sys.exit(str(exc))


def theirs(url: str, model: Path, wl: Workload, n: int, seed: int, work: Path) -> tuple[float | None, int, Snapshot]:
    """vLLM's client on the same prompts at concurrency 1: TPOT p50, requests completed, the server's window."""
    runs: list[VllmBenchResult] = []
    window = measure_window(url, lambda: runs.append(vllm_client(url, model, wl, n, seed, work)), judge=False).server
    (v,) = runs
    tpots = [x for x in v.tpots() if x is not None]
    return (statistics.median(tpots) if tpots else None), v.completed, window


def part_ngram(model: Path, cpus: tuple[int, ...] | None, work: Path, a: argparse.Namespace) -> None:
    workloads = [load_workload("edit").with_tokenizer(model),
                 load_workload("sharegpt").with_tokenizer(model).with_sampling(temperature=a.sharegpt_temperature)]
    # The sharegpt replies are capped so a round stays short; the prompts are the real ones.
    workloads[1] = dataclasses.replace(workloads[1], output_len=dataclasses.replace(workloads[1].output_len, max=256))
    results: dict[tuple[str, str, str], list[float]] = {}
    accept: dict[tuple[str, str], list[float]] = {}
    for label, flags in (("default", {}), ("ngram", {"speculative_config": NGRAM})):
        with serve(model, cpus, work, **flags) as srv:
            url = srv.base_url
            print(f"   {label} server ready at {url}", flush=True)
            run_load(url, NAME, workloads[0], concurrency=1, num_requests=1, seed=999)  # warm-up
            for wl in workloads:
                for rep in range(a.repeats):
                    seed = 40 + rep
                    order = ("ours", "vllm") if rep % 2 == 0 else ("vllm", "ours")
                    for client in order:
                        tpot, ok, win = (ours(url, wl, a.requests, seed) if client == "ours"
                                         else theirs(url, model, wl, a.requests, seed, work))
                        results.setdefault((wl.name, label, client), []).append(tpot)  # type: ignore[arg-type]
                        rate = win.spec_decode_acceptance_rate
                        if label == "ngram":
                            accept.setdefault((wl.name, client), []).append(rate or 0.0)
                        print(f"   {wl.name} {label} {client} repeat {rep + 1}: TPOT p50 "
                              f"{(tpot or 0) * 1000:.2f} ms, {ok} ok, acceptance "
                              f"{'-' if rate is None else f'{rate:.1%}'} ({win.spec_decode_drafts or 0:.0f} drafts)",
                              flush=True)
    for wl in workloads:
        for client in ("ours", "vllm"):
            base, spec = results[(wl.name, "default", client)], results[(wl.name, "ngram", client)]
            speedups = [b / s for b, s in zip(base, spec, strict=True) if b and s]
            print(f"FIGURE real ngram {wl.name} ({client}): TPOT default {spread(base)}, ngram {spread(spec)}, "
                  f"speedup {spread(speedups, 1.0, 'x')}, acceptance {spread(accept[(wl.name, client)], 100.0, '%')} "
                  f"({stamp()})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["tpot", "prefill", "capacity", "ngram"],
                    choices=["tpot", "prefill", "capacity", "ngram"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--requests", type=int, default=8, help="requests per concurrency-1 run")
    ap.add_argument("--capacity-requests", type=int, default=24)
    ap.add_argument("--capacity-clients", nargs="+", choices=["ours", "vllm"], default=["ours", "vllm"],
                    help="which clients measure capacity (default both, alternating)")
    ap.add_argument("--capacity-max-output", type=int, default=256, help="cap on a reply's tokens in `capacity`")
    ap.add_argument("--sharegpt-temperature", type=float, default=0.0)
    ap.add_argument("--shared-cores", action="store_true", help="vLLM and the clients on every core")
    a = ap.parse_args()

    from slotune.smollm2 import build_smollm2

    model = build_smollm2(CACHE / "models" / "smollm2")
    avail = sorted(os.sched_getaffinity(0))
    cpus = None if a.shared_cores or len(avail) < 2 else (avail[-1],)
    if cpus:
        os.sched_setaffinity(0, set(avail) - set(cpus))  # ours, and vLLM's client as our child
    print(f"real model {model}; vLLM on {list(cpus) if cpus else 'every core'}, clients on "
          f"{sorted(os.sched_getaffinity(0))}; {stamp()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-real-"))
    simple = [p for p in ("tpot", "prefill", "capacity") if p in a.parts]
    if simple:
        # Dev mode only adds /reset_prefix_cache (capacity resets it before each run); flags stay vLLM's.
        # Inherited from this process: a config's env admits no dev switch (slotune.vllm_config).
        os.environ["VLLM_SERVER_DEV_MODE"] = "1"
        with serve(model, cpus, work) as srv:
            url = srv.base_url
            run_load(url, NAME, Workload.fixed(64, 8), concurrency=1, num_requests=2, seed=1)  # warm-up
            for part in simple:
                print(f"\n{part}", flush=True)
                if part == "capacity":
                    part_capacity(url, model, a, work)
                elif part == "prefill":
                    part_prefill(url, model, a, work)
                else:
                    part_tpot(url, model, a)
    if "ngram" in a.parts:
        print("\nngram", flush=True)
        part_ngram(model, cpus, work, a)
    print(f"\ndone ({stamp()})", flush=True)


if __name__ == "__main__":
    main()
