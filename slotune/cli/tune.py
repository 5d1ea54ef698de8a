"""`slotune tune` (search vLLM's flags against SLO targets on real load) and `slotune report`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from slotune.cli.options import (
    WORKLOAD_HELP,
    model_option,
    sampling_options,
    slo_option,
    storage_option,
    writable_dir_option,
    writable_file_option,
)
from slotune.errors import ConfigError, validation_message
from slotune.files import to_json, write_output
from slotune.loadgen.schedule import MAX_REQUESTS


def _finite(_ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Refuse inf/nan where a range check lets them through (a factor of inf would judge every
    trial and never stop one; a timeout of nan or inf is no timeout)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number, not {value}", param=param)
    return value

# No accelerator or host holds more KV cache than this (4 TiB); a typo's 99999999 is refused up front.
KV_CACHE_MAX_GIB = 4096


def _check_up_front(spec: Any) -> None:
    """What `check_spec` checks (workload, space, base config), and the fixed values (`--fix`, `--space`) as
    a launch config, so `--fix max_num_seqs=1e23` is one line now, not a study of failed trials."""
    from slotune.tuner.study import build_space, check_spec, load_spec_workload, workload_need

    check_spec(spec)
    space = build_space(spec, workload_need(load_spec_workload(spec)))
    try:
        space.config_for(spec.base_config(), {})
    except ConfigError as exc:
        raise ConfigError(f"fixed values (--fix, --space): {exc}") from None
    # The database is opened (its tables created) before the study's header is printed: a path it
    # cannot write (`sqlite:////proc/x.db`) is then one error line, not one after "tuning ...".
    from slotune.store import open_store
    from slotune.tuner.storage import storage_url

    open_store(storage_url(spec.storage)).dispose()


def _spec(**kw: Any) -> Any:
    from pydantic import ValidationError

    from slotune.tuner.study import TuneSpec

    try:
        return TuneSpec(**kw)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc.errors(), top_level=None)) from None


def _price(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    from slotune.tuner.report import check_price

    try:
        return None if value is None else check_price(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


COST_HELP = "the machine's price in USD/hour: adds cost per 1,000 output tokens (baseline and recommendation)"


def _cpus(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    from slotune.platforms import parse_cpus

    return None if value is None else parse_cpus(value)


class _TrialProgress:
    """One progress line per trial: a spinner and the trial's current stage, then its outcome. Output
    that is not a terminal (a log file, CI) gets one plain line per stage instead: a live display is
    drawn there only once, at the end, and the stages (waiting for another worker, stopped early)
    would never be seen."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.live = Console().is_terminal
        self.progress = Progress(SpinnerColumn(), TextColumn("trial {task.fields[trial]:>3}"),
                                 TextColumn("{task.description}"), TimeElapsedColumn(), transient=False)
        self.tasks: dict[int, Any] = {}

    def __call__(self, trial: int, stage: str) -> None:
        from slotune.tuner.objective import OUTCOME_STAGES

        done = stage.startswith(OUTCOME_STAGES)
        if not self.live:  # an outcome stage ends with the trial's wall time, as the trials table has it
            click.echo(f"trial {trial:>3}: {stage}")
            return
        task = self.tasks.get(trial)
        if task is None:
            task = self.tasks[trial] = self.progress.add_task(stage, total=1, trial=trial)
        self.progress.update(task, description=stage, completed=1 if done else 0)

    def __enter__(self) -> _TrialProgress:  # noqa: PYI034
        if self.live:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.__exit__(*exc)


def register(app: click.Group) -> None:
    @app.command()
    @click.option("--model", required=True, callback=model_option,
                  help="model directory (must exist) or Hugging Face id (ORG/NAME) to serve")
    @click.option("--workload", help=WORKLOAD_HELP)
    @sampling_options
    @click.option("--input-len", type=click.IntRange(min=1), help="fixed prompt length (with --output-len)")
    @click.option("--output-len", type=click.IntRange(min=1), help="fixed output length (with --input-len)")
    @click.option("--slo", required=True, callback=slo_option, help="targets, e.g. 'ttft_p95<=500ms,tpot_p95<=50ms'")
    @click.option("--trials", type=click.IntRange(min=1), help="trial budget for the study (default 10)")
    @click.option("--timeout", type=click.FloatRange(min=0, min_open=True), callback=_finite,
                  help="stop starting trials after S seconds (of this run: a resume or another worker has its own)")
    @click.option("--mode", type=click.Choice(["offered", "capacity"]), default="offered", show_default=True,
                  help="goodput at the given load, or at the highest rate meeting the SLOs")
    @click.option("--rate", type=click.FloatRange(min=0, min_open=True), callback=_finite,
                  help="offered request rate (req/s)")
    @click.option("--concurrency", type=click.IntRange(min=1), help="fixed number of requests in flight")
    @click.option("--num-requests", type=click.IntRange(min=1, max=MAX_REQUESTS), default=40, show_default=True,
                  help="requests per trial")
    @click.option("--space", "space_file", type=click.Path(path_type=Path, dir_okay=False),
                  help="YAML file narrowing or fixing dimensions")
    @click.option("--fix", "fixes", multiple=True, metavar="NAME=VALUE", help="fix one dimension (repeatable)")
    @click.option("--pareto", is_flag=True, help="two objectives: goodput vs p95 TTFT (Pareto front)")
    @click.option("--storage", callback=storage_option,
                  help="database URL (default: slotune's SQLite file; PostgreSQL for several workers)")
    @click.option("--study", "study_name", help="study name; an existing one is resumed")
    @click.option("--out", "out_dir", type=click.Path(path_type=Path), callback=writable_dir_option,
                  help="directory for report.html (one self-contained file), summary.json, best.yaml, best.sh, plots")
    @click.option("--cost-per-hour", callback=_price, metavar="USD", help=COST_HELP)
    @click.option("--json", "json_out", type=click.Path(path_type=Path),
                  callback=writable_file_option, help="write the result as JSON ('-' for stdout)")
    @click.option("--kv-cache-max-gib", type=click.IntRange(min=1, max=KV_CACHE_MAX_GIB), metavar="GIB",
                  help="search the KV-cache size up to this many GiB (CPU: VLLM_CPU_KVCACHE_SPACE; GPU: "
                       "--kv-cache-memory-bytes); nothing above it is tried (default: not searched)")
    @click.option("--prune-at", "prune_factor", type=click.FloatRange(min=1, min_open=True), default=2.0,
                  callback=_finite,
                  show_default=True, help="stop a trial whose requests so far miss an SLO target by this factor")
    @click.option("--no-prune", is_flag=True, help="run every trial in full (no early stop)")
    @click.option("--remeasure", type=click.IntRange(min=0), default=2, show_default=True,
                  help="best configs measured again (with the baseline) before a winner is named")
    @click.option("--remeasure-rounds", "remeasure_repeats", type=click.IntRange(min=1), default=2, show_default=True,
                  help="interleaved rounds of re-measurement (baseline, then each of the best, per round)")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--worker", type=click.IntRange(min=0), default=0, show_default=True,
                  help="this worker's number when several share a study")
    @click.option("--heartbeat", "heartbeat_interval", type=click.IntRange(min=1), default=30, show_default=True,
                  help="seconds between heartbeats; a trial silent for twice that is failed and retried")
    @click.option("--startup-timeout", type=click.FloatRange(min=1), default=240.0, show_default=True, callback=_finite)
    @click.option("--server-cpus", callback=_cpus, metavar="N|A-B",
                  help="confine each trial's vLLM to these cores, the load generator to the rest (small hosts)")
    def tune(json_out: Path | None, remeasure: int, no_prune: bool, **kw: Any) -> None:
        """Search vLLM's launch flags for the most goodput that meets the SLO targets."""
        from slotune.tuner.report import render
        from slotune.tuner.study import run_study

        kw["fixes"] = list(kw["fixes"])
        if no_prune:
            if click.get_current_context().get_parameter_source("prune_factor") is click.core.ParameterSource.COMMANDLINE:
                raise click.UsageError("give --prune-at or --no-prune, not both")
            kw["prune_factor"] = None
        spec = _spec(remeasure_top=remeasure, **kw)
        _check_up_front(spec)
        spec = spec.model_copy(update={"study_name": spec.name()})  # named now, so it can be resumed
        quiet = json_out is not None and str(json_out) == "-"
        if quiet:
            result = run_study(spec)
        else:
            click.echo(f"study {spec.study_name}: tuning {spec.model} for {spec.slo} (resume with --study)")
            with _TrialProgress() as bar:
                result = run_study(spec, events=bar)
            render(result)
            if spec.out_dir:
                click.echo(f"results in {spec.out_dir} (report: {spec.out_dir / 'report.html'})")
        _emit_json(result.to_dict(), json_out)

    @app.command()
    @click.option("--study", "study_name", required=True, help="the study to report on")
    @click.option("--storage", help="database URL (default: slotune's SQLite file)")
    @click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
    @click.option("--out", "out_dir", type=click.Path(path_type=Path), callback=writable_dir_option,
                  help="also write report.html (one self-contained file), summary.json, best.yaml, best.sh, plots")
    @click.option("--cost-per-hour", callback=_price, metavar="USD", help=COST_HELP)
    def report(study_name: str, storage: str | None, as_json: bool, out_dir: Path | None,
               cost_per_hour: float | None) -> None:
        """Summarize a tuning study: baseline, best config, gain, every trial (from storage alone)."""
        from slotune.tuner.report import load, render, summarize, write_outputs

        result = summarize(storage, study_name)
        result.cost_per_hour = cost_per_hour
        if out_dir is not None:
            write_outputs(result, load(storage, study_name), out_dir)
        if as_json:
            click.echo(to_json(result.to_dict(), indent=2, default=str))
        else:
            render(result)
            if out_dir is not None:
                click.echo(f"report: {out_dir / 'report.html'}")


def _emit_json(data: dict[str, Any], out: Path | None) -> None:
    if out is None:
        return
    write_output(out, to_json(data, indent=2, default=str) + "\n")
