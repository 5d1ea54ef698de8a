"""`slotune demo`: the main job on the embedded default, end to end, in a few minutes.

tiny model → real vLLM (vLLM's default flags) → a short load → the server's window and the client's
figures → the five playbooks → a short tuning study (SQLite) → the best config as a `vllm serve`
line. Everything it starts it stops, also on Ctrl-C or an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from slotune import paths
from slotune.slo import DEFAULT_SLO

DEMO_WORKLOAD = "chat"


def _table(title: str, rows: list[tuple[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)


def _ms(block: Any, stat: str) -> str:
    from slotune.collectors.snapshot import quantile_text

    return quantile_text(block, stat, missing="no data") + ("" if block is None or block.get(stat) is None else " ms")


def _latency_rows(figures: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for key, label in (("ttft_seconds", "TTFT"), ("tpot_seconds", "TPOT"), ("itl_seconds", "ITL"),
                       ("e2e_seconds", "end-to-end"), ("queue_seconds", "queue")):
        if key in figures:
            block = figures[key]
            rows.append((f"{label} p50 / p95 / p99 (mean)",
                         f"{_ms(block, 'p50')} / {_ms(block, 'p95')} / {_ms(block, 'p99')} ({_ms(block, 'mean')})"))
    return rows


def _pct(x: Any) -> str:
    return "no data" if x is None else f"{100 * float(x):.1f} %"


def measure_and_diagnose(model_dir: Path, slo_text: str, num_requests: int, concurrency: int) -> dict[str, Any]:
    """Start vLLM with its defaults, load it, print what the client and the server measured, and
    what the playbooks make of it. Returns the diagnosis as JSON."""
    from slotune.loadgen.runner import run_load
    from slotune.loadgen.workload import load_workload
    from slotune.playbooks.engine import diagnose
    from slotune.playbooks.persist import save_findings

    from slotune.collectors import vllm_metrics
    from slotune.collectors.persist import save_snapshot
    from slotune.server import ManagedServer, ServerStartError
    from slotune.slo import SloSpec
    from slotune.store import open_store
    from slotune.vllm_config import VllmConfig

    slo = SloSpec.parse(slo_text)
    workload = load_workload(DEMO_WORKLOAD)
    config = VllmConfig(model=str(model_dir), served_model_name="tiny")
    server = ManagedServer(config, log_dir=paths.logs_dir() / "demo", slo=slo)
    click.echo(f"starting vLLM (default flags): {server.effective_config().serve_command()}")
    try:
        result = server.start()
        if not result.ok:
            raise ServerStartError(result)
        click.echo(f"vLLM ready at {server.base_url} in {result.seconds:.0f} s (log: {result.log_path})")
        url = server.base_url
        run_load(url, "tiny", workload, concurrency=2, num_requests=4, seed=1)  # warm-up, not measured
        before = vllm_metrics.scrape(f"{url}/metrics")
        click.echo(f"load: workload {workload.name!r}, {num_requests} requests at concurrency {concurrency}")
        client = run_load(url, "tiny", workload, concurrency=concurrency, num_requests=num_requests, slo=slo,
                          progress=True).to_dict()
        after = vllm_metrics.scrape(f"{url}/metrics")
    finally:
        server.stop()
    window = vllm_metrics.derive(before, after, target=url)
    server_fig = window.to_dict()

    _table("client side (slotune's load generator)", [
        ("requests completed / failed", f"{client.get('completed')} / {client.get('failed')}"),
        ("request throughput", f"{client.get('request_throughput', 0):.2f} req/s"),
        ("goodput", f"{client.get('goodput') or 0:.2f} req/s  (SLO {slo})"),
        *_latency_rows(client),
    ])
    # Server quantiles are interpolated inside vLLM's buckets (as histogram_quantile does): where the
    # bucket is coarse (e2e and queue start at 0.3 s) its bounds are shown instead; the mean is exact.
    _table(f"server side (vLLM /metrics, {window.window_seconds:.1f} s window)", [
        ("requests finished", f"{window.requests_finished or 0:.0f}"),
        *_latency_rows(server_fig),
        ("KV-cache usage (now)", _pct(window.kv_cache_usage)),
        ("preemptions", f"{window.preemptions or 0:.0f}"),
        ("prefix-cache hit rate", _pct(window.prefix_cache_hit_rate)),
        ("GPU", "unavailable (no NVML)" if server_fig.get("gpu") is None else _pct(window.gpu.utilization
                                                                                   if window.gpu else None)),
    ])
    slo_rows = [(str(r.target), f"MISSED ({r.value:.3f})" if r.met is False else r.status)
                for r in slo.evaluate(server_fig)]
    _table("SLO (server-side window)", slo_rows)

    diagnosis = diagnose([window], slo=slo, server_config=config, client=client)
    store = open_store()
    try:
        snapshot_id = save_snapshot(store, window)
        save_findings(store, diagnosis, snapshot_id)
    finally:
        store.dispose()
    out = diagnosis.to_dict()
    findings = out.get("findings") or []
    click.echo(f"diagnosis: {out.get('status')}" + (f", {len(findings)} finding(s)" if findings else ""))
    for f in findings:
        click.echo(f"  [{f['severity']}] {f['playbook']}: {f.get('summary', '')}")
        for r in (f.get("remedies") or [])[:2]:
            delta = r.get("config_delta") or {}
            click.echo(f"      → {r.get('action', '')}" + (f"  {delta}" if delta else ""))
    return out


def short_study(model_dir: Path, slo_text: str, trials: int, num_requests: int, concurrency: int) -> None:
    from slotune.tuner.report import render
    from slotune.tuner.study import TuneSpec, run_study

    spec = TuneSpec(model=str(model_dir), workload=DEMO_WORKLOAD, slo=slo_text, trials=trials,
                    concurrency=concurrency, num_requests=num_requests, warmup_requests=2, remeasure_top=0,
                    served_model_name="tiny", study_name=None, out_dir=paths.data_dir() / "demo-study")
    spec = spec.model_copy(update={"study_name": spec.name()})
    click.echo(f"tuning: study {spec.study_name}, {trials} trials (baseline first, then remedies, then TPE)")

    def progress(trial: int, stage: str) -> None:
        if stage.startswith(("done", "infeasible")):
            click.echo(f"  trial {trial}: {stage}")

    result = run_study(spec, events=progress)
    render(result)
    click.echo(f"study stored in {spec.storage or paths.default_database_url()}; plots in {spec.out_dir}; "
               f"`slotune report --study {spec.study_name}` shows it again")


def register(app: click.Group) -> None:
    @app.command()
    @click.option("--slo", "slo_text", default=DEFAULT_SLO, show_default=True, help="SLO targets")
    @click.option("--num-requests", type=click.IntRange(min=1, max=2000), default=40, show_default=True)
    @click.option("--concurrency", type=click.IntRange(min=1, max=256), default=4, show_default=True)
    @click.option("--trials", type=click.IntRange(min=0, max=100), default=4, show_default=True,
                  help="tuning trials (0 skips tuning)")
    def demo(slo_text: str, num_requests: int, concurrency: int, trials: int) -> None:
        """Tiny model → real vLLM → load → measure → diagnose → tune; stops everything it started."""
        from slotune.model import build_tiny_model
        from slotune.server import stop_on_signals
        from slotune.slo import SloSpec

        SloSpec.parse(slo_text)  # a bad spec fails here, before anything starts
        stop_on_signals()
        model_dir = build_tiny_model(paths.models_dir() / "tiny-llama")
        click.echo(f"slotune demo: data in {paths.data_dir()} (SQLite), tiny model in {model_dir}")
        measure_and_diagnose(model_dir, slo_text, num_requests, concurrency)
        if trials:
            short_study(model_dir, slo_text, trials, num_requests=min(num_requests, 24), concurrency=concurrency)
        click.echo("demo done: every process it started has stopped")
