"""`slotune diagnose`: why an SLO fails and which flags to change, from the rule-based playbooks.

    slotune diagnose --target URL [--window S | --load WORKLOAD [--concurrency C] [--num-requests N]]
    slotune diagnose --snapshot FILE           # offline: a window saved by `slotune collect --json`
    slotune diagnose --launch CONFIG [--load WORKLOAD]   # start a managed server; a failed start is judged
    common: [--slo SPEC] [--config FILE | --serve-command LINE] [--backend cpu|gpu] [--playbooks FILE|DIR ...] [--json]
            [--save [--db URL]]

`--json` prints the diagnosis object: `status` (healthy | findings | slo_missed | insufficient_data),
`findings` (each with `playbook`, `severity`, `summary`, `cause`, `evidence`, `window`,
`remedies[].config_delta`), `slo` (each target met | missed | no data | inconclusive, as `slotune
collect --slo` prints it), `window`, `notes`, `facts`. See docs/playbooks.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from slotune.cli.options import slo_option
from slotune.errors import ConfigError
from slotune.files import parse_json, read_text, to_json
from slotune.loadgen.schedule import MAX_REQUESTS
from slotune.slo import DEFAULT_SLO, SloSpec

SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def read_snapshots(path: Path) -> list[Any]:
    """Windows from a file: one snapshot object, a list of them, or JSON lines (`collect --json`)."""
    from slotune.collectors.snapshot import Snapshot

    text = read_text(path)
    try:
        data = parse_json(text, str(path))
        items = data if isinstance(data, list) else [data]
    except ConfigError as whole:
        if "nested too deeply" in str(whole):
            raise
        try:
            items = [parse_json(line, str(path)) for line in text.splitlines() if line.strip()]
        except ConfigError:
            raise ConfigError(f"{path}: not JSON (expected a snapshot from 'slotune collect --json')") from None
    if not items:
        raise ConfigError(f"{path}: no snapshot in the file")
    snaps = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "window_start" not in item or "target" not in item:
            raise ConfigError(f"{path}: item {i}: not a snapshot (needs target, window_start, window_end, ...)")
        try:
            snaps.append(Snapshot.from_dict(item))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: item {i}: not a snapshot ({exc})") from None
    return sorted(snaps, key=lambda s: s.window_start)


def read_config(path: Path) -> Any:
    """A server config (VllmConfig fields) from YAML or JSON (JSON is YAML)."""
    from slotune.cli.options import load_yaml
    from slotune.vllm_config import VllmConfig

    return VllmConfig.from_mapping(load_yaml(path), source=str(path))


def render(d: dict[str, Any]) -> Any:
    """A rich renderable of a diagnosis (`Diagnosis.to_dict()`)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from slotune.playbooks.engine import figure_text
    from slotune.slo import result_line

    parts: list[Any] = []
    win = d.get("window") or {}
    where = d.get("target") or "server"
    span = f" · {win['seconds']:.1f} s window" if win.get("seconds") else ""
    head = {"healthy": "healthy: no playbook fired, every SLO target met or undecided",
            "findings": f"{len(d['findings'])} finding(s)",
            "slo_missed": "SLO missed: no playbook names a cause",
            "insufficient_data": "insufficient data: no request finished in the window"}[d["status"]]
    parts.append(Text(f"{where}{span}: {head}", style="bold"))
    for r in d.get("slo") or []:
        parts.append(Text(f"SLO {result_line(r)}", style="bold red" if r.get("met") is False else ""))
    for f in d["findings"]:
        parts.append(Text(""))
        parts.append(Text(f"[{f['severity']}] {f['playbook']}: {f['summary']}", style=SEVERITY_STYLE[f["severity"]]))
        ev = Table(show_header=True, box=None, padding=(0, 2))
        for col in ("evidence", "value", "threshold", "meaning"):
            ev.add_column(col)
        for e in f["evidence"]:
            thr = "" if e["op"] is None else f"{e['op']} {_num(e['threshold'])}"
            value = figure_text(e["value"], e["bounds"]) if e.get("bounds") else _num(e["value"])
            ev.add_row(e["field"], value, thr, e["description"])
        parts.append(ev)
        for i, r in enumerate(f["remedies"], 1):
            delta = ", ".join(f"{k}={json.dumps(v)}" for k, v in r["config_delta"].items())
            parts.append(Text(f"  {i}. {r['action']}" + (f"  [{delta}]" if delta else "")))
            parts.append(Text(f"     {r['why']}", style="dim"))
    for note in d.get("notes") or []:
        parts.append(Text(f"note: {note}", style="dim"))
    return Group(*parts)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def register(app: click.Group) -> None:
    @app.command()
    @click.option("--target", metavar="URL", help="a running vLLM server, e.g. http://127.0.0.1:8000")
    @click.option("--snapshot", "snapshot_file", type=click.Path(path_type=Path), metavar="FILE",
                  help="judge saved windows offline (JSON from 'slotune collect --json')")
    @click.option("--launch", "launch_file", type=click.Path(path_type=Path), metavar="CONFIG",
                  help="start a managed server from this config and judge it (a failed start too)")
    @click.option("--window", type=click.FloatRange(min=1.0), default=30.0, show_default=True, metavar="S",
                  help="seconds of the server's own traffic to watch (without --load)")
    @click.option("--load", "load_name", metavar="WORKLOAD",
                  help="drive a short load during the window: a built-in workload name, a YAML file or a .jsonl file of prompts")
    @click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True, help="with --load")
    @click.option("--num-requests", type=click.IntRange(min=1, max=MAX_REQUESTS), default=20, show_default=True, help="with --load")
    @click.option("--model", default=None, help="model name for --load (default: the server's first)")
    @click.option("--slo", "slo_text", default=DEFAULT_SLO, show_default=True, callback=slo_option,
                  help="SLO targets")
    @click.option("--config", "config_file", type=click.Path(path_type=Path), metavar="FILE",
                  help="the server's flags (YAML/JSON VllmConfig): without them vLLM's defaults are assumed")
    @click.option("--serve-command", default=None, metavar="LINE", help="the server's 'vllm serve ...' line")
    @click.option("--backend", type=click.Choice(["cpu", "gpu"]), default=None,
                  help="the server's vLLM backend (default: measured from NVML, else assumed: this host's vLLM "
                       "build for a loopback target, a GPU for a remote one; a note says so)")
    @click.option("--playbooks", "playbook_paths", multiple=True, type=click.Path(path_type=Path),
                  metavar="PATH", help="add or override playbooks (a YAML file or a directory); repeatable")
    @click.option("--json", "as_json", is_flag=True, help="print the diagnosis as JSON")
    @click.option("--save", is_flag=True, help="store the window and its findings in slotune's database")
    @click.option("--db", "db_url", default=None, metavar="URL", help="database URL for --save")
    def diagnose(target: str | None, snapshot_file: Path | None, launch_file: Path | None, window: float,
                 load_name: str | None, concurrency: int, num_requests: int, model: str | None, slo_text: str,
                 config_file: Path | None, serve_command: str | None, backend: str | None,
                 playbook_paths: tuple[Path, ...], as_json: bool, save: bool, db_url: str | None) -> None:
        """Name what makes an SLO fail, show the evidence and the flag changes that address it."""
        from slotune.playbooks.model import load_playbooks

        sources = [x for x in (target, snapshot_file, launch_file) if x is not None]
        if len(sources) != 1:
            raise click.UsageError("give exactly one of --target URL, --snapshot FILE or --launch CONFIG")
        if config_file is not None and serve_command is not None:
            raise click.UsageError("give the server's flags once: --config or --serve-command")
        slo = SloSpec.parse(slo_text)
        books = load_playbooks(playbook_paths)
        config = None
        if launch_file is not None:
            config = read_config(launch_file)
        elif config_file is not None:
            config = read_config(config_file)
        elif serve_command is not None:
            from slotune.tuner.command import parse_serve_line

            parsed = parse_serve_line(serve_command)
            config = parsed.config
            if parsed.skipped:  # said, not silent: these flags are the server's, slotune does not judge them
                click.echo(f"note: the serve line's {', '.join(parsed.skipped)} are not flags slotune tunes; "
                           "diagnosing without them", err=True)
        load = _load_plan(load_name, concurrency, num_requests)

        windows: list[Any] = []
        if snapshot_file is not None:
            from slotune.playbooks.engine import diagnose as judge

            windows = read_snapshots(snapshot_file)
            result = judge(windows, slo=slo, server_config=config, playbooks=books, backend=backend)
        elif target is not None:
            from slotune.collectors.gpu import GpuCollector
            from slotune.measurement import measure_window

            measured = measure_window(target, load or window, model=model, slo=slo, server_config=config,
                                      playbooks=books, gpu=GpuCollector(), backend=backend)
            result, windows = measured.diagnosis, [measured.server]
        else:
            result, windows = _launch(config, load, window, slo, books)
        if save:
            _save(result, windows, db_url)
        out = result.to_dict()
        if as_json:
            click.echo(to_json(out, indent=2))
        else:
            from rich.console import Console

            Console().print(render(out))


def _load_plan(load_name: str | None, concurrency: int, num_requests: int) -> Any:
    if load_name is None:
        return None
    from slotune.loadgen.workload import load_workload
    from slotune.measurement import LoadPlan

    return LoadPlan(load_workload(load_name), concurrency=concurrency, num_requests=num_requests)


def _launch(config: Any, load: Any, window: float, slo: SloSpec, books: list[Any]) -> tuple[Any, list[Any]]:
    """Start a managed server; a failed start is diagnosed from its classified log, a started one
    from a window under `load` (or `window` seconds idle), then it is stopped."""
    from slotune import paths
    from slotune.collectors.gpu import GpuCollector
    from slotune.measurement import measure_window, start_or_explain
    from slotune.server import ManagedServer

    server = ManagedServer(config, log_dir=paths.logs_dir(), slo=slo)
    with start_or_explain(server, slo=slo, playbooks=books) as launch:
        if not launch.ok:
            return launch.diagnosis, []
        measured = measure_window(launch.server.base_url, load or window, slo=slo, server_config=config,
                                  playbooks=books, gpu=GpuCollector(), process_group=launch.server.process_group)
        return measured.diagnosis, [measured.server]


def _save(result: Any, windows: list[Any], db_url: str | None) -> None:
    from slotune.collectors.persist import save_snapshot
    from slotune.playbooks.persist import save_findings
    from slotune.store import open_store

    store = open_store(db_url)
    snapshot_id = None
    for w in windows:
        snapshot_id = save_snapshot(store, w)
    save_findings(store, result, snapshot_id)
