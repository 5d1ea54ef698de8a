"""`slotune collect`: what a vLLM server's /metrics says, as a table or JSON lines.

`--once`: one scrape, cumulative since the server started. Otherwise one window per `--interval`
(deltas between scrapes), until `--count` windows or Ctrl-C.
"""

from __future__ import annotations

import time
from typing import Any

import click

from slotune.cli.options import slo_option
from slotune.collectors.snapshot import LATENCY_FIELDS, UNKNOWN, Snapshot, quantile_text
from slotune.files import to_json
from slotune.slo import SloSpec, result_line

LATENCY_LABELS = {
    "ttft": "TTFT",
    "tpot": "TPOT",
    "itl": "ITL",
    "e2e": "end-to-end",
    "queue": "queue",
    "prefill": "prefill",
    "decode": "decode",
}


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f}"


def _num(v: float | None, fmt: str = "{:.2f}", missing: str = "no data") -> str:
    return missing if v is None else fmt.format(v)


def render(snap: Snapshot) -> Any:
    """A rich renderable: latencies (ms) then the server's state in the window."""
    from rich.console import Group
    from rich.table import Table

    span = "since server start" if snap.cumulative else f"{snap.window_seconds:.1f} s window"
    reset = " (server restarted in the window)" if snap.counter_reset else ""
    lat = Table(title=f"{snap.target} · {span}{reset}", title_justify="left")
    for col in ("latency (ms)", "p50", "p90", "p95", "p99", "mean", "count"):
        lat.add_column(col, justify="left" if col.startswith("latency") else "right")
    for name in LATENCY_FIELDS:
        q = getattr(snap, name)
        if q is None:
            lat.add_row(LATENCY_LABELS[name], "no data", "", "", "", "", "0")
        else:
            # A quantile interpolated in a coarse bucket shows the bucket's bounds ("< 300"), not a guess.
            lat.add_row(LATENCY_LABELS[name], *(quantile_text(q, s, missing="-") for s in ("p50", "p90", "p95", "p99")),
                        _ms(q.mean), f"{q.count:.0f}")
    state = Table(show_header=False, box=None)
    state.add_column(style="bold")
    state.add_column()
    pct = "{:.1%}"
    waiting = ", ".join(f"{k} {v:.0f}" for k, v in sorted(snap.waiting_by_reason.items()) if v)
    rows = [
        ("requests finished", _num(snap.requests_finished, "{:.0f}")),
        ("request rate (/s)", _num(snap.request_rate)),
        ("prompt tokens/s", _num(snap.prompt_tokens_per_second, "{:.1f}")),
        ("generation tokens/s", _num(snap.generation_tokens_per_second, "{:.1f}")),
        ("error rate", _num(snap.error_rate, pct)),
        ("running / waiting", f"{_num(snap.requests_running, '{:.0f}')} / "
                              f"{_num(snap.requests_waiting, '{:.0f}')}" + (f" ({waiting})" if waiting else "")),
        ("KV-cache usage", _num(snap.kv_cache_usage, pct)),
        ("preemptions/s", _num(snap.preemptions_per_second)),
        ("prefix-cache hit rate", _num(snap.prefix_cache_hit_rate, pct)),
        ("spec-decode acceptance", _num(snap.spec_decode_acceptance_rate, pct)),
        ("spec-decode mean length", _num(snap.spec_decode_mean_acceptance_length)),
    ]
    if snap.capacity is not None:
        c = snap.capacity
        kv = (f"{_num(c.kv_cache_tokens, '{:.0f}', UNKNOWN)} tokens, block {_num(c.block_size, '{:.0f}', UNKNOWN)}, "
              f"max concurrency {_num(c.max_concurrency, missing=UNKNOWN)}")
        rows.append(("KV capacity", kv))
    gpu = snap.gpu
    rows.append(("GPU", "unavailable" if gpu is None or not gpu.available
                 else ", ".join(f"#{d.index} {_num(d.utilization, pct)}" for d in gpu.devices)))
    for k, v in rows:
        state.add_row(k, v)
    parts: list[Any] = [lat, state]
    if snap.per_model:
        parts.append(_per_model(snap))
    parts += [f"note: {n}" for n in snap.notes]
    return Group(*parts)


def _per_model(snap: Snapshot) -> Any:
    """One row per served model: the figures a total cannot carry when bucket layouts differ."""
    from rich.table import Table

    table = Table(title="per model", title_justify="left")
    for col in ("model", "finished", "TTFT p50 (ms)", "TTFT p95 (ms)", "ITL p50 (ms)", "prompt len p50",
                "output len p50", "KV-cache usage"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, m in snap.per_model.items():
        table.add_row(
            name, _num(m.requests_finished, "{:.0f}"),
            _ms(m.ttft.p50 if m.ttft else None), _ms(m.ttft.p95 if m.ttft else None),
            _ms(m.itl.p50 if m.itl else None),
            _num(m.prompt_tokens.p50 if m.prompt_tokens else None, "{:.0f}"),
            _num(m.output_tokens.p50 if m.output_tokens else None, "{:.0f}"),
            _num(m.kv_cache_usage, "{:.2%}"),
        )
    return table


def bucket_warnings(slo: SloSpec, scrape: Any) -> list[str]:
    """`slotune.slo_buckets.warnings` for the buckets this page's histograms actually have."""
    from slotune.slo_buckets import warnings

    observed = {}
    for metric in ("ttft", "tpot", "itl", "e2e"):
        series = scrape.histograms.get(metric)
        if series:
            observed[metric] = [b for b in next(iter(series.values())).bounds if b != float("inf")]
    return warnings(slo, observed)


def register(app: click.Group) -> None:
    @app.command()
    @click.option("--target", required=True, metavar="URL", help="vLLM server, e.g. http://127.0.0.1:8000")
    @click.option("--interval", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
                  metavar="S", help="seconds per window")
    @click.option("--once", is_flag=True, help="one scrape: everything since the server started")
    @click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
    @click.option("--count", type=click.IntRange(min=1), default=None, metavar="N",
                  help="stop after N windows (default: until Ctrl-C)")
    @click.option("--store", "persist", is_flag=True, help="also save each window to slotune's database")
    @click.option("--db", "db_url", default=None, metavar="URL",
                  help="database URL for --store (default: SQLite under $SLOTUNE_DATA_DIR)")
    @click.option("--slo", "slo_text", default=None, metavar="SPEC", callback=slo_option,
                  help="also check SLO targets, e.g. 'ttft_p95<=300ms' (met, missed or inconclusive)")
    def collect(target: str, interval: float, once: bool, as_json: bool, count: int | None,
                persist: bool, db_url: str | None, slo_text: str | None) -> None:
        """Report what a vLLM server's /metrics says: latency quantiles, rates, queue, KV cache."""
        from rich.console import Console

        from slotune.collectors.gpu import GpuCollector
        from slotune.collectors.vllm_metrics import VllmCollector

        slo = SloSpec.parse(slo_text) if slo_text else None
        collector = VllmCollector(target, gpu=GpuCollector())
        warned = False
        store = None
        if persist:
            from slotune.store import open_store

            store = open_store(db_url)
        console = Console()

        def emit(snap: Snapshot) -> None:
            nonlocal warned
            if store is not None:
                from slotune.collectors.persist import save_snapshot

                save_snapshot(store, snap)
            if slo is not None and not warned and collector.last is not None:
                warned = True  # once: the page's buckets do not change between windows
                for line in bucket_warnings(slo, collector.last):
                    click.echo(f"warning: {line}", err=True)
            results = slo.evaluate(snap) if slo is not None else []
            if as_json:
                out = snap.to_dict()
                if slo is not None:
                    out["slo"] = [r.to_dict() for r in results]
                click.echo(to_json(out))
            else:
                console.print(render(snap))
                for r in results:
                    console.print(f"SLO {result_line(r.to_dict())}")

        if once:
            emit(collector.cumulative())
            return
        collector.poll()  # the first scrape opens the first window
        done = 0
        try:
            while count is None or done < count:
                time.sleep(interval)
                snap = collector.poll()
                if snap is not None:
                    emit(snap)
                    done += 1
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a continuous collect ends
