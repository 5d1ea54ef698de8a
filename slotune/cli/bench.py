"""`slotune bench`: drive load at a server and report client-side latency, SLO attainment and goodput.

    slotune bench --target URL (--workload NAME|FILE|FILE.jsonl | --input-len N --output-len N)
                  [--temperature T] [--top-p P] [--tokenizer DIR]
                  [--rate R [--burstiness B] | --concurrency C] [--num-requests N] [--duration S]
                  [--slo SPEC] [--find-max-rate] [--json OUT|-]
    slotune bench --workload NAME --num-requests N --seed S --write-prompts FILE.jsonl

The JSON has the collectors' latency keys (`ttft_seconds`, ... each {p50, p90, p95, p99, mean, count})
measured on the client, plus `completed`, `failed`, `request_throughput`, `goodput` and the SLO results.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from slotune.cli.options import WORKLOAD_HELP, sampling_options, slo_option, writable_file_option
from slotune.errors import TargetError
from slotune.files import to_json, write_output
from slotune.loadgen.schedule import MAX_REQUESTS
from slotune.slo import DEFAULT_SLO, SloSpec

if TYPE_CHECKING:
    from slotune.loadgen.figures import LoadFigures

ROWS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2e", "end-to-end"))


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f}"


def render(f: LoadFigures, target: str) -> Any:
    """A rich renderable of one load run's figures."""
    from rich.console import Group
    from rich.table import Table

    mode = f"rate {f.rate:g}/s" if f.rate else "no rate limit"
    if f.concurrency:
        mode += f", concurrency {f.concurrency}"
    lat = Table(title=f"{target} · {f.workload} · {mode}", title_justify="left")
    for col in ("client latency (ms)", "p50", "p90", "p95", "p99", "mean", "count"):
        lat.add_column(col, justify="left" if col.startswith("client") else "right")
    for key, label in ROWS:
        q = f.latency(key)
        if q is None:
            lat.add_row(label, "no data", "", "", "", "", "0")
        else:
            lat.add_row(label, *(_ms(getattr(q, s)) for s in ("p50", "p90", "p95", "p99", "mean")), f"{q.count:.0f}")
    summary = Table(show_header=False, box=None)
    summary.add_column(style="bold")
    summary.add_column()
    goodput = "-" if f.goodput is None else f"{f.goodput:.2f} req/s ({f.good_requests} good)"
    rows = [
        ("completed / failed", f"{f.completed} / {f.failed} (error rate {f.error_rate:.1%})"),
        ("duration", f"{f.duration:.2f} s"),
        ("request throughput", f"{f.request_throughput:.2f} req/s"),
        ("output throughput", f"{f.output_throughput:.1f} tok/s"),
        ("tokens in / out", f"{f.total_input_tokens} / {f.total_output_tokens}"),
        ("goodput", goodput),
    ]
    for r in f.slo:
        met = {True: "met", False: "MISSED", None: "no data"}[r.met]
        value = "-" if r.value is None else (f"{r.value:.2%}" if r.target.key == "error_rate" else _ms(r.value) + " ms")
        rows.append((f"SLO {r.target}", f"{met} ({value})"))
    for err, n in f.errors.items():
        rows.append(("error", f"{n} x {err}"))
    for warning in f.warnings:
        rows.append(("[yellow]warning[/]", warning))
    for k, v in rows:
        summary.add_row(k, v)
    return Group(lat, summary)


def register(app: click.Group) -> None:
    @app.command()
    @click.option("--target", default=None, metavar="URL", help="server, e.g. http://127.0.0.1:8000")
    @click.option("--model", default=None, metavar="NAME", help="model name to request (default: the server's first)")
    @click.option("--workload", default=None, metavar="NAME|FILE", help=WORKLOAD_HELP)
    @sampling_options
    @click.option("--tokenizer", default=None, metavar="DIR",
                  help="the served model's directory (or tokenizer.json): exact prompt lengths and caps")
    @click.option("--write-prompts", type=click.Path(path_type=Path), default=None,
                  callback=writable_file_option,
                  metavar="FILE.jsonl", help="write the prompts this run would send (vllm bench serve's custom "
                  "format: --dataset-name custom) and exit without sending; needs no --target")
    @click.option("--input-len", type=click.IntRange(min=1), default=None, metavar="N", help="fixed prompt tokens")
    @click.option("--output-len", type=click.IntRange(min=1), default=None, metavar="N", help="fixed output tokens")
    @click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None, metavar="R",
                  help="open loop: requests per second (Poisson; gamma with --burstiness)")
    @click.option("--burstiness", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
                  help="gamma shape of inter-arrival gaps: <1 burstier, >1 more even")
    @click.option("--concurrency", type=click.IntRange(min=1), default=None, metavar="C",
                  help="closed loop: C requests in flight")
    @click.option("--num-requests", type=click.IntRange(min=1, max=MAX_REQUESTS), default=None, metavar="N",
                  help="requests to send (default 100 unless --duration)")
    @click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None, metavar="S",
                  help="stop sending after S seconds")
    @click.option("--slo", "slo_text", default=None, metavar="SPEC", callback=slo_option,
                  help=f"SLO targets for attainment and goodput (default {DEFAULT_SLO!r})")
    @click.option("--find-max-rate", is_flag=True, help="search the highest rate meeting every SLO target")
    @click.option("--start-rate", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
                  metavar="R", help="--find-max-rate: the first rate tried (doubled or halved from there)")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True), default=120.0,
                  show_default=True, metavar="S")
    @click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, metavar="OUT",
                  callback=writable_file_option, help="write the result as JSON to OUT (- for stdout)")
    @click.option("--no-progress", is_flag=True, help="no progress bar")
    def bench(target: str | None, model: str | None, workload: str | None, temperature: float | None,
              top_p: float | None, tokenizer: str | None, write_prompts: Path | None,
              input_len: int | None, output_len: int | None,
              rate: float | None, burstiness: float, concurrency: int | None, num_requests: int | None,
              duration: float | None, slo_text: str | None, find_max_rate: bool, start_rate: float, seed: int,
              request_timeout: float, json_out: Path | None, no_progress: bool) -> None:
        """Drive load at an OpenAI-compatible server; client-side TTFT/TPOT/ITL, SLO attainment, goodput."""
        from rich.console import Console

        from slotune.loadgen.prompts import load_tokenizer
        from slotune.loadgen.runner import DEFAULT_REQUESTS, normalize_base_url, run_load, served_models
        from slotune.loadgen.workload import Workload, load_workload

        fixed = input_len is not None or output_len is not None
        if workload is not None and fixed:
            raise click.UsageError("give --workload or --input-len/--output-len, not both")
        if workload is None and not fixed:
            raise click.UsageError("give --workload NAME|FILE or --input-len N --output-len N")
        if fixed and (input_len is None or output_len is None):
            raise click.UsageError("--input-len and --output-len go together")
        if rate is not None and concurrency is not None:
            raise click.UsageError("give --rate or --concurrency, not both")
        if find_max_rate and rate is not None:
            raise click.UsageError("--find-max-rate searches the rate: drop --rate")
        if duration is not None and rate is None and concurrency is None and not find_max_rate:
            raise click.UsageError("--duration needs --rate or --concurrency")
        slo = SloSpec.parse(slo_text or DEFAULT_SLO)
        wl = Workload.fixed(input_len, output_len) if fixed else load_workload(workload)  # type: ignore[arg-type]
        wl = wl.with_sampling(temperature, top_p)
        if tokenizer is not None:
            load_tokenizer(tokenizer)  # a bad path fails here, in one line
            wl = dataclasses.replace(wl, tokenizer=tokenizer)
        if write_prompts is not None:
            from slotune.loadgen.runner import prompt_lines

            lines = prompt_lines(wl, seed, num_requests or DEFAULT_REQUESTS)
            write_output(write_prompts, "".join(lines))
            click.echo(f"{len(lines)} prompts of workload {wl.name!r} (seed {seed}) written to {write_prompts}: "
                       f"vllm bench serve --dataset-name custom --dataset-path {write_prompts} --custom-output-len -1 --disable-shuffle "
                       f"--skip-chat-template "
                       f"--backend {'openai-chat --endpoint /v1/chat/completions' if wl.endpoint == 'chat' else 'vllm'}"
                       + (" --ignore-eos" if wl.ignore_eos else "")
                       + (f" --temperature {wl.temperature:g}" if wl.temperature is not None else ""))
            return
        if target is None:
            raise click.UsageError("give --target URL (or --write-prompts FILE to only write the prompts)")
        url = normalize_base_url(target)
        if model is None:
            models = served_models(url)
            if not models:
                raise TargetError(f"{url}/v1/models lists no model: pass --model")
            model = models[0]
        progress = not no_progress and sys.stderr.isatty()
        console = Console()

        if find_max_rate:
            from slotune.loadgen.sweep import find_max_rate as sweep

            def show(point: Any) -> None:
                if str(json_out) != "-":
                    f = point.result.figures()
                    console.print(f"rate {point.rate:g}/s: {'meets' if point.met else 'misses'} the SLOs "
                                  f"(goodput {f.goodput:.2f} req/s, {f.completed} ok, {f.failed} failed)")

            found = sweep(url, model, wl, slo, num_requests=num_requests, seed=seed, burstiness=burstiness,
                          start_rate=start_rate,
                          concurrency=concurrency, request_timeout=request_timeout, progress=progress, on_point=show)
            if json_out is not None:
                write_output(json_out, to_json(found.to_dict(), indent=2) + "\n")
            if str(json_out) != "-":
                if found.best is None:
                    console.print(f"no rate tried meets {slo}")
                else:
                    console.print(f"highest rate meeting {slo}: {found.max_rate:g} req/s")
                    console.print(render(found.best.figures(), url))
            return

        result = run_load(url, model, wl, rate=rate, concurrency=concurrency, num_requests=num_requests,
                          duration=duration, slo=slo, seed=seed, burstiness=burstiness, progress=progress,
                          request_timeout=request_timeout)
        figures = result.figures()
        if json_out is not None:
            write_output(json_out, to_json(figures.to_dict(), indent=2) + "\n")  # written even when every request failed: the errors are in it
        if str(json_out) != "-":
            console.print(render(figures, url))
        if figures.completed == 0 and figures.failed:
            first = next(iter(figures.errors), "unknown error")
            raise TargetError(f"every request failed ({figures.failed}): {first}")
