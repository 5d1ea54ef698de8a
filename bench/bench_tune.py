"""Benchmark the tuner (not a CI test; `make bench-tune`). Prints figures; asserts nothing.

1. Tuned vs default: a study on the demo workload with an SLO vLLM's default config misses or barely
   meets; then both the default and the recommended config are started again and measured with
   vLLM's own load generator (`vllm.benchmarks.serve`, random dataset, same lengths, rate and
   `--goodput` thresholds) in this same run. Target: tuned goodput / default goodput >= 1.5.
2. Trials to near-best: a small grid is measured exhaustively, then TPE studies (several seeds) are
   replayed on those measurements; figure: trials until a config within 5 % of the grid's best
   feasible goodput is found, against the grid's size.

    .venv/bin/python bench/bench_tune.py [--trials 8] [--rate 6] [--input-len 384] [--output-len 48]
        [--slo 'ttft_p95<=400ms,tpot_p95<=40ms'] [--skip-grid] [--skip-tune]

On 2 shared CPU cores every vLLM start costs ~35 s: the default run takes roughly
(trials + re-measures + grid size + 2) x ~1 min.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from slotune.loadgen.vllm_bench import run_vllm_bench
from slotune.model import build_tiny_model
from slotune.platforms import parse_cpus
from slotune.server import ManagedServer
from slotune.slo import SloSpec
from slotune.tuner.command import parse_serve_command
from slotune.tuner.study import TuneSpec, run_study
from slotune.vllm_config import VllmConfig

REPO = Path(__file__).resolve().parents[1]

def vllm_bench(server: ManagedServer, model_dir: Path, name: str, a: argparse.Namespace, slo: SloSpec) -> dict:
    """vLLM's own load generator against a running server; its summary (request_goodput, p95s...)."""
    argv = ["--backend", "vllm", "--base-url", server.base_url,
            "--endpoint", "/v1/completions", "--model", name, "--tokenizer", str(model_dir),
            "--dataset-name", "random", "--random-input-len", str(a.input_len), "--random-output-len",
            str(a.output_len), "--random-range-ratio", "0", "--ignore-eos", "--num-prompts", str(a.bench_requests),
            "--request-rate", str(a.rate), "--seed", "0", "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--metric-percentiles", "50,95,99", "--goodput", *slo.vllm_goodput_args()]
    return run_vllm_bench(argv, timeout=900).summary


def measure_with_vllm(config: VllmConfig, model_dir: Path, a: argparse.Namespace, slo: SloSpec, logs: Path) -> dict:
    cfg = config.with_changes(served_model_name="bench")
    with ManagedServer(cfg, log_dir=logs, cpus=a.server_cpus) as server:
        return vllm_bench(server, model_dir, "bench", a, slo)


def tuned_vs_default(model: Path, a: argparse.Namespace, work: Path) -> None:
    slo = SloSpec.parse(a.slo)
    spec = TuneSpec(model=str(model), input_len=a.input_len, output_len=a.output_len, slo=a.slo, trials=a.trials,
                    rate=a.rate, num_requests=a.requests, storage=f"sqlite:///{work}/bench.db",
                    study_name="bench-tune", out_dir=work / "out", remeasure_top=a.remeasure,
                    mode=a.mode, server_cpus=a.server_cpus,
                    fixes=["speculative_method=off"] if a.no_spec else [])
    t0 = time.monotonic()
    result = run_study(spec, events=lambda n, s: print(f"  trial {n}: {s}", flush=True))
    took = time.monotonic() - t0
    d = result.to_dict()
    print(f"\nstudy: {d['trials']['total']} trials in {took / 60:.1f} min; verdict: {d['recommendation']['message']}")
    base, best = d["baseline"], d["best"]
    for label, e in (("default", base), ("tuned", best)):
        if e:
            print(f"  slotune {label:8s} trial {e['trial']}: goodput {e['goodput_mean']:.3f} req/s "
                  f"ttft_p95 {e['ttft_p95']} tpot_p95 {e['tpot_p95']} params {e['params']}")
    if not best or not best.get("command"):
        print("no tuned config to compare")
        return
    print("\nre-measuring both with vllm.benchmarks.serve ...", flush=True)
    ref = {}
    for label, command in (("default", VllmConfig(model=str(model)).serve_command()), ("tuned", best["command"])):
        r = measure_with_vllm(parse_serve_command(command), model, a, slo, work / "logs")
        ref[label] = r
        print(f"  vllm bench {label:8s}: request_goodput {r['request_goodput']:.3f} req/s, throughput "
              f"{r['request_throughput']:.3f} req/s, p95 ttft {r.get('p95_ttft_ms', 0):.0f} ms, "
              f"p95 tpot {r.get('p95_tpot_ms', 0):.1f} ms", flush=True)
    g0, g1 = ref["default"]["request_goodput"], ref["tuned"]["request_goodput"]
    ratio = g1 / g0 if g0 > 0 else float("inf")
    print(f"\nFIGURE tuned/default goodput (vllm.benchmarks.serve, same run): {g1:.3f} / {g0:.3f} = x{ratio:.2f} "
          f"(target >= 1.5)")
    print(f"tuned command: {best['command']}")


def trials_to_near_best(model: Path, a: argparse.Namespace, work: Path) -> None:
    """Measure a small grid exhaustively, then replay TPE on the measurements (no new servers)."""
    import optuna

    from slotune.tuner.measure import Measurement
    from slotune.tuner.study import build_space

    grid_space = work / "grid.yaml"
    grid_space.write_text(
        "max_num_seqs: [4, 16, 64]\nmax_num_batched_tokens: [512, 2048]\nenable_chunked_prefill: [true, false]\n"
        "enable_prefix_caching: null\nmax_model_len: 2048\nspeculative_method: null\nquantization: null\n"
        "kv_cache_dtype: null\n")
    base = TuneSpec(model=str(model), input_len=a.input_len, output_len=a.output_len, slo=a.slo, trials=1,
                    rate=a.rate, num_requests=a.requests, storage=f"sqlite:///{work}/grid.db", remeasure_top=0,
                    max_remedies=0, space_file=grid_space)
    space = build_space(base, a.input_len + a.output_len)
    grid = space.grid()
    print(f"\ngrid: {len(grid)} configs, measured exhaustively ...", flush=True)
    measured: dict[str, Measurement] = {}

    class Cached:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, config, progress=None):
            key = json.dumps(config.tuned_params() and {k: str(v) for k, v in config.tuned_params().items()},
                             sort_keys=True)
            if key not in measured:
                measured[key] = self.inner(config, progress)
            return measured[key]

    from slotune.tuner.measure import LoadSpec, ServerMeasure
    from slotune.tuner.study import load_spec_workload

    workload = load_spec_workload(base)
    real = ServerMeasure(LoadSpec(workload=workload, slo=SloSpec.parse(a.slo), rate=a.rate,
                                  num_requests=a.requests), log_dir=work / "grid-logs", server_cpus=a.server_cpus)
    cached = Cached(real)
    run_study(base.model_copy(update={"study_name": "grid", "trials": len(grid) + 1, "enqueue": grid}),
              measure=cached, workload=workload)
    study = optuna.load_study(study_name="grid", storage=base.storage)
    feas = [t for t in study.get_trials() if t.user_attrs.get("feasible") and t.user_attrs.get("origin") != "baseline"]
    if not feas:
        print("no grid config met the SLO: loosen --slo to get the trials-to-near-best figure")
        return
    best = max(float(t.user_attrs["goodput"]) for t in feas)
    print(f"grid best feasible goodput: {best:.3f} req/s ({len(measured)} servers measured)")
    needed = []
    for seed in range(a.seeds):
        # Replayed on the cached measurements: the same space, so TPE can only propose grid configs.
        name = f"replay-{seed}"
        run_study(base.model_copy(update={"study_name": name, "trials": len(grid) + 1, "seed": seed}),
                  measure=cached, workload=workload)
        trials = optuna.load_study(study_name=name, storage=base.storage).get_trials()
        hit = next((t.number + 1 for t in trials if t.user_attrs.get("feasible")
                    and float(t.user_attrs.get("goodput") or 0) >= 0.95 * best), None)
        needed.append(hit if hit is not None else len(trials) + 1)
        print(f"  seed {seed}: {needed[-1]} trials", flush=True)
    print(f"\nFIGURE trials to get within 5 % of the grid's best: median {statistics.median(needed)} "
          f"(seeds: {needed}) vs grid size {len(grid)} (trial counts include the baseline)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--rate", type=float, default=6.0)
    p.add_argument("--input-len", type=int, default=384)
    p.add_argument("--output-len", type=int, default=48)
    p.add_argument("--requests", type=int, default=40, help="requests per trial")
    p.add_argument("--bench-requests", type=int, default=60, help="requests per vllm.benchmarks.serve run")
    p.add_argument("--slo", default="ttft_p95<=400ms,tpot_p95<=40ms")
    p.add_argument("--remeasure", type=int, default=1)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--no-spec", action="store_true", help="leave speculative decoding out of the space")
    p.add_argument("--skip-tune", action="store_true")
    p.add_argument("--skip-grid", action="store_true")
    p.add_argument("--mode", choices=["offered", "capacity"], default="offered")
    p.add_argument("--server-cpus", default="last",
                   help="cores for each vLLM ('last': the last core where there are two or more; 'none': shared)")
    a = p.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    if a.server_cpus == "last":
        a.server_cpus = (cores[-1],) if len(cores) > 1 else None
    elif a.server_cpus == "none":
        a.server_cpus = None
    else:
        a.server_cpus = parse_cpus(a.server_cpus)
    if a.server_cpus:
        # Both load generators (ours in this process, vLLM's as its child) off the server's cores.
        os.sched_setaffinity(0, set(cores) - set(a.server_cpus))
    model = build_tiny_model(REPO / ".slotune-test" / "models" / "tiny-llama")
    work = Path(tempfile.mkdtemp(prefix="bench-tune-"))
    print(f"work dir {work}; workload {a.input_len}+{a.output_len} tokens at {a.rate} req/s; SLO {a.slo}; "
          f"{a.mode} mode; vLLM on cores {a.server_cpus or 'all (shared with the clients)'}")
    if not a.skip_tune:
        tuned_vs_default(model, a, work)
    if not a.skip_grid:
        trials_to_near_best(model, a, work)


if __name__ == "__main__":
    main()
