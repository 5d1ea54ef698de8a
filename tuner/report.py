"""What a study found, in forms people use: JSON (`baseline`, `best`, each with `params`, `goodput`
and the SLO figures, `best.command`), rich tables that stay readable at 80 columns (and 60), the best
config as a `vllm serve` line and a flag file, plots (optimization history; Pareto front in Pareto
mode) as PNG and HTML, and one self-contained HTML report (`slotune.tuner.html_report`).

Everything is computed from the storage alone, so `slotune report` after the fact (or while other
workers still run) says what `slotune tune` said at its end.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from slotune.errors import ConfigError
from slotune.loadgen.figures import LoadFigures
from slotune.store import shown_url
from slotune.tuner import speculation
from slotune.tuner.labels import fmt_params, trial_label, why_tried
from slotune.tuner.measure import Measurement
from slotune.tuner.objective import (
    BASELINE,
    DUPLICATE,
    ORIGIN,
    PRUNED,
    REMEDY,
    SEARCH_STOPPED,
    SERVED,
    WALL,
    ttft_p95,
    wall_times,
)
from slotune.tuner.storage import HEARTBEAT_ATTR, HEARTBEAT_INTERVAL, open_storage, storage_url, uncached
from slotune.tuner.trial_queue import pending
from slotune.tuner.verdict import MIN_GAIN, STOPPED_AFTER_BASELINE, Verdict, decide, ranked, samples_of
from slotune.vllm_config import VllmConfig


@dataclass
class StudyResult:
    study: str
    storage: str
    settings: dict[str, Any]
    counts: dict[str, int]
    baseline: dict[str, Any] | None
    best: dict[str, Any] | None
    verdict: Verdict
    pareto: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    cost_per_hour: float | None = None  # the machine's price, USD/hour (`--cost-per-hour`): adds `cost`
    # {"study": s, "trials": s, "per_trial": {number: s}} (objective.wall_times)
    wall: dict[str, Any] = field(default_factory=dict)
    # {"engine_applies_schedule", "evidence", "schedule", "k_by_load"} (tuner.speculation.summary)
    speculation: dict[str, Any] = field(default_factory=dict)
    search_stopped: str = ""  # why the search ended before its trial budget ("" when it did not)
    # Remedies slotune queued and did not run (`tuner.trial_queue`; the budget ran out first): what the
    # findings proposed and no trial measured. [{"params", "why_tried", "label"}]
    pending_remedies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def recommended(self) -> dict[str, Any] | None:
        if self.verdict.recommendation == "tuned":
            return self.best
        if self.verdict.recommendation == "baseline":
            return self.baseline
        return None

    def to_dict(self) -> dict[str, Any]:
        rec = self.recommended
        return {
            "study": self.study,
            "storage": self.storage,
            "settings": self.settings,
            "trials": self.counts,
            "baseline": self.baseline,
            "best": self.best,
            "recommendation": {
                "use": self.verdict.recommendation,
                "trial": rec["trial"] if rec else None,
                "command": rec["command"] if rec else None,
                "message": self.verdict.message,
            },
            "gain": {"goodput_delta": self.verdict.gain, "goodput_ratio": self.verdict.ratio,
                     "noise": self.verdict.noise, "remeasured": self.verdict.remeasured},
            "verdict": self.verdict.to_dict(),
            "pareto": self.pareto,
            "rows": self.rows,
            **({"cost": cost_figures(self)} if self.cost_per_hour is not None else {}),
            "wall_seconds": self.wall,
            "speculation": self.speculation,
            "search_stopped": self.search_stopped or None,
            "pending_remedies": self.pending_remedies,
            "hint": load_hint(self),
        }

    def interval(self, trial: int | None) -> dict[str, Any]:
        """The verdict's figures for one trial (`{}` when it has none): `goodput_ci` `[lo, hi]` req/s,
        `confidence`, and per SLO `{"estimate", "ci", "threshold", "outcome"}` where the verdict
        computed intervals; `goodputs` (the samples) and `mean` always."""
        if trial is None:
            return {}
        return dict(self.verdict.to_dict().get("samples", {}).get(str(trial)) or {})


def k_by_load_of(result: StudyResult) -> list[dict[str, Any]]:
    """Best K per load, `[{"concurrency": c | None, "rate": r | None, "best_k", "goodput"}]`, when the
    study measured speculation by load (`result.speculation["k_by_load"]`, or a top-level
    `k_by_load`; empty otherwise)."""
    d = result.to_dict()
    spec = getattr(result, "speculation", None) or d.get("speculation") or {}
    rows = getattr(result, "k_by_load", None) or spec.get("k_by_load") or d.get("k_by_load") or []
    return [r for r in rows if isinstance(r, dict)]


def load_label(row: dict[str, Any]) -> str:
    """A K-by-load row's load: 'concurrency C' or 'R req/s'."""
    if row.get("concurrency") is not None:
        return f"concurrency {row['concurrency']}"
    return f"{row['rate']:g} req/s" if isinstance(row.get("rate"), (int, float)) else "-"


def stale_text(counts: dict[str, int]) -> str:
    """' (1 of them stale: its worker stopped)' after the running count, '' when none is stale."""
    n = counts.get("stale", 0)
    return f" ({n} of them stale: {'its worker' if n == 1 else 'their workers'} stopped)" if n else ""


def runs_text(goodputs: list[float]) -> str:
    """A side's goodput runs, '2 runs: 0.312, 0.287' (each run's req/s; the mean is printed before it)."""
    return f"{len(goodputs)} run{'' if len(goodputs) == 1 else 's'}: " + ", ".join(f"{g:.3g}" for g in goodputs)


def tuned_for(result: StudyResult) -> str:
    """What the study tuned for, one line: 'study S: model M, workload W, SLO X, offered rate R req/s
    (or concurrency C, or capacity mode), N requests a trial'; from the study's stored settings."""
    s = result.settings
    load = ("capacity mode (the highest rate meeting the SLO)" if s.get("mode") == "capacity"
            else f"concurrency {s['concurrency']}" if s.get("concurrency") is not None
            else f"offered rate {s['rate']:g} req/s" if isinstance(s.get("rate"), (int, float))
            else "every request at once (no rate or concurrency)" if s.get("mode") == "offered" else None)
    parts = [f"model {s['model']}" if s.get("model") else None,
             f"workload {s['workload']}" if s.get("workload") else None,
             f"SLO {s['slo']}" if s.get("slo") else None, load,
             f"{s['num_requests']} requests a trial" if s.get("num_requests") else None]
    return f"study {result.study}: " + ", ".join(p for p in parts if p)


def cost_per_1k_tokens(usd_per_hour: float, output_tokens_per_s: float | None) -> float | None:
    """USD per 1,000 output tokens: `usd_per_hour / (output_tokens_per_s * 3600) * 1000`.

    `output_tokens_per_s` is the trial's measured output-token throughput over *all* completed
    requests (the load generator's `output_throughput`), not only those that met the SLOs: the
    targets are percentiles of the whole run (p95), so a run that meets them served every token under
    them, and per-request outcomes are not stored. None when nothing was generated (no price per
    token exists) or the throughput is unknown.
    """
    if output_tokens_per_s is None or not output_tokens_per_s > 0:
        return None
    return usd_per_hour / (output_tokens_per_s * 3600) * 1000


def cost_figures(result: StudyResult) -> dict[str, Any]:
    """`{"usd_per_hour", "throughput": "output tokens/s, all completed requests", "baseline":
    {"trial", "output_tokens_per_s", "usd_per_1k_output_tokens"}, "recommended": {...}}` (a side is
    None when the study has none)."""
    usd = float(result.cost_per_hour or 0.0)

    def side(e: dict[str, Any] | None) -> dict[str, Any] | None:
        if not e:
            return None
        tps = e.get("output_throughput")
        return {"trial": e["trial"], "output_tokens_per_s": tps, "usd_per_1k_output_tokens": cost_per_1k_tokens(usd, tps)}

    return {"usd_per_hour": usd, "throughput": "output tokens/s, all completed requests",
            "baseline": side(result.baseline), "recommended": side(result.recommended)}


def check_price(value: Any) -> float:
    """A machine price in USD/hour: a finite number >= 0; raises ValueError with the reason."""
    try:
        usd = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number (USD per hour, e.g. 3.5)") from None
    if not math.isfinite(usd) or usd < 0:
        raise ValueError(f"{value!r} is not a price (a finite number of USD per hour, 0 or more)")
    return usd


def load(storage: str | None, study_name: str) -> optuna.Study:
    url = storage_url(storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(url, must_exist=True))
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(url, must_exist=True))]
        known = f" (studies here: {', '.join(names[:10])})" if names else " (no studies there)"
        raise ConfigError(f"no study named {study_name!r} in {shown_url(url)}{known}") from None
    beat = study.user_attrs.get(HEARTBEAT_ATTR)
    if type(beat) is int and beat > 0 and beat != HEARTBEAT_INTERVAL:  # as the study's workers judge it
        study = optuna.load_study(study_name=study_name,
                                  storage=open_storage(url, heartbeat_interval=beat, must_exist=True))
    return study


def summarize(storage: str | None, study_name: str) -> StudyResult:
    """The study's result, from storage."""
    study = load(storage, study_name)
    trials = study.get_trials(deepcopy=False)
    attrs = study.user_attrs
    verdict = decide(trials, attrs)
    by_number = {t.number: t for t in trials}
    base_t = next((t for t in trials if t.user_attrs.get(ORIGIN) == BASELINE and t.state in
                   (TrialState.COMPLETE, TrialState.PRUNED)), None)
    best_t: FrozenTrial | None = None
    if verdict.recommendation == "tuned" and verdict.winner is not None:
        best_t = by_number[verdict.winner]
    else:
        tuned = [t for t in ranked(trials) if t.user_attrs.get(ORIGIN) != BASELINE]
        best_t = tuned[0] if tuned else base_t
    counts = {"total": len(trials)}
    for state in TrialState:
        counts[state.name.lower()] = sum(1 for t in trials if t.state is state)
    # Optuna's PRUNED holds trials never launched (infeasible), trials stopped early (pruned) and trials
    # whose server an earlier trial measured (duplicate): each its own count.
    counts.pop("pruned")
    pruned = [t.user_attrs.get("state") for t in trials if t.state is TrialState.PRUNED]
    counts["pruned"] = pruned.count(PRUNED)
    counts["duplicate"] = pruned.count(DUPLICATE)
    counts["infeasible"] = len(pruned) - counts["pruned"] - counts["duplicate"]
    stale = stale_trials(study, trials)
    counts["stale"] = len(stale)
    rows = [row(t) for t in trials]
    # Optuna's retry of a trial whose worker died names it (`failed_trial`; its attrs are copied).
    retried = {t.system_attrs["failed_trial"]: t.number for t in trials if "failed_trial" in t.system_attrs}
    for r, t in zip(rows, trials, strict=True):
        if t.state is TrialState.FAIL and not r["reason"]:
            # Optuna keeps an objective's exception as `fail_reason`; a trial failed for a stale
            # heartbeat has none.
            r["reason"] = str(t.system_attrs.get("fail_reason") or (
                "its worker stopped (no heartbeat): failed by the next worker on the study"
                + (f"; its config ran again as trial {retried[t.number]}" if t.number in retried else "")))
        if r["trial"] in stale:
            r["state"] = STALE
            r["reason"] = (f"running, but no heartbeat for over {stale_after(study)} s: its worker stopped (killed?); "
                           "the next worker on this study fails it and runs its config again")
    recommended = by_number.get(verdict.winner) if verdict.winner is not None else None
    return StudyResult(
        study=study_name,
        storage=shown_url(storage_url(storage)),
        settings=dict(attrs.get("slotune_spec") or {}),
        counts=counts,
        baseline=entry(base_t, attrs) if base_t else None,
        best=entry(best_t, attrs) if best_t else None,
        verdict=verdict,
        pareto=pareto_front(trials),
        rows=rows,
        wall=wall_times(trials, attrs),
        speculation=speculation.summary(trials, recommended.user_attrs.get("params") if recommended else None),
        search_stopped=str(attrs.get(SEARCH_STOPPED) or ""),
        pending_remedies=[pending_row(e) for e in pending(study) if e["attrs"].get(ORIGIN) == REMEDY],
    )


def pending_row(e: dict[str, Any]) -> dict[str, Any]:
    """A trial in slotune's queue (`trial_queue`), not yet handed to Optuna: its tuned flags (defaults
    left out), why it is queued, and its progress label."""
    params = {k: v for k, v in e["params"].items() if v is not None}
    ua = e["attrs"]
    return {"params": params, "why_tried": why_tried(ua), "label": trial_label(str(ua.get(ORIGIN)), ua, params)}


def entry(t: FrozenTrial, study_attrs: dict[str, Any]) -> dict[str, Any]:
    ua = t.user_attrs
    m = Measurement.from_attrs(ua)
    client = m.client if m is not None else None
    slo = {r["key"]: {"value": r["value"], "threshold": r["threshold"], "met": r["met"], "status": r.get("status")}
           for r in ua.get("slo") or []}
    # The flag file of the server as it ran (the platform's flags in, as in `command`); trials stored
    # before that was kept have their tuned config only.
    config = ua.get(SERVED) or ua.get("config")
    flag_file = VllmConfig.model_validate(config).flag_file() if config else None
    s = samples_of(t, study_attrs)
    return {
        "trial": t.number,
        "origin": ua.get(ORIGIN),
        "state": ua.get("state") or t.state.name.lower(),
        "reason": ua.get("reason") or "",
        "params": ua.get("params") or {},
        "goodput": ua.get("goodput"),
        "goodput_mean": s.mean,
        "goodput_samples": list(s.goodputs),
        "feasible": bool(ua.get("feasible")),
        "slo": slo,
        "ttft_p95": ttft_p95(client),
        "tpot_p95": _p95(client, "tpot"),
        "e2e_p95": _p95(client, "e2e"),
        "request_throughput": client.request_throughput if client is not None else None,
        # output tokens/s, all completed requests
        "output_throughput": client.output_throughput if client is not None else None,
        "rate": m.rate if m is not None else None,  # offered req/s, or the highest rate meeting the SLOs (capacity)
        # capacity mode: [{"rate", "met", "goodput", "request_throughput"}]
        "sweep": [p.to_dict() for p in m.sweep] if m is not None else [],
        # The load generator's self-checks: a trial measured on a starved host is not evidence.
        "measurement_warnings": list(client.warnings) if client is not None else [],
        "command": ua.get("command"),
        "flag_file": flag_file,
        "findings": [f.playbook for f in m.findings] if m is not None else [],
        "spec_decode": ua.get("spec_decode"),
        "wall_seconds": ua.get(WALL),
        "log_path": ua.get("log_path"),
    }


STALE = "stale"  # a row's state: running in storage, its worker gone (no heartbeat within the grace period)


def stale_after(study: optuna.Study) -> int:
    """Seconds without a heartbeat after which a running trial is stale (Optuna's grace period)."""
    rdb = uncached(study)
    return int(getattr(rdb, "grace_period", None) or 2 * (getattr(rdb, "heartbeat_interval", None) or 0))


def stale_trials(study: optuna.Study, trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the running trials (of `trials`, the study's) whose worker stopped: no heartbeat
    within Optuna's grace period (`RDBStorage._get_stale_trial_ids`, what `fail_stale_trials` acts
    on; read here, nothing is written: a report only reads). A killed `slotune tune` leaves its trial
    running in storage until the next worker on the study fails it and retries its config."""
    rdb = uncached(study)
    if not getattr(rdb, "heartbeat_interval", None) or not hasattr(rdb, "_get_stale_trial_ids"):
        return set()
    ids = set(rdb._get_stale_trial_ids(study._study_id))
    return {t.number for t in trials if t.state is TrialState.RUNNING and t._trial_id in ids}


def row(t: FrozenTrial) -> dict[str, Any]:
    ua = t.user_attrs
    m = Measurement.from_attrs(ua)
    client = m.client if m is not None else None
    state = {TrialState.PRUNED: "infeasible"}.get(t.state, t.state.name.lower())
    if t.state is TrialState.PRUNED and ua.get("state") in (PRUNED, DUPLICATE):
        state = ua["state"]
    # A queued trial has no flags yet (its objective sets them when it runs); its queued dimension values
    # (non-default ones) stand in, so a queued remedy never reads as "(vLLM defaults)".
    queued = ({k: v for k, v in (t.system_attrs.get("fixed_params") or {}).items() if v is not None}
              if t.state is TrialState.WAITING and not ua.get("params") else {})
    why = why_tried(ua)
    if "failed_trial" in t.system_attrs:  # Optuna's retry of a trial whose worker died
        retry = f"retry of trial {t.system_attrs['retry_history'][-1]}, whose worker stopped"
        why = f"{why}; {retry}" if why else retry
    return {"trial": t.number, "origin": ua.get(ORIGIN), "state": state, "feasible": ua.get("feasible"),
            "goodput": ua.get("goodput"), "ttft_p95": ttft_p95(client), "tpot_p95": _p95(client, "tpot"),
            "params": ua.get("params") or {}, "queued_params": queued,
            "reason": ua.get("reason") or "", "remedy": ua.get("remedy"), "why_tried": why,
            **{k: ua.get(k) for k in ("follows", "instead_of", "duplicate_of", "queued_instead")},
            "findings": [f.playbook for f in m.findings] if m is not None else [], "wall_seconds": ua.get(WALL),
            "measurement_warnings": list(client.warnings) if client is not None else []}


def _p95(client: LoadFigures | None, metric: str) -> float | None:
    block = client.latency(metric) if client is not None else None
    return block.p95 if block is not None else None


def pareto_front(trials: list[FrozenTrial]) -> list[dict[str, Any]]:
    """Feasible measured trials no other one beats on both goodput (higher) and p95 TTFT (lower)."""
    pts = []
    for t in trials:
        if t.state is TrialState.COMPLETE and t.user_attrs.get("feasible"):
            m = Measurement.from_attrs(t.user_attrs)
            ttft = ttft_p95(m.client) if m is not None else None
            if ttft is not None:
                pts.append((float(t.user_attrs.get("goodput") or 0.0), ttft, t))
    front = [p for p in pts if not any(q[0] >= p[0] and q[1] <= p[1] and (q[0], q[1]) != (p[0], p[1]) for q in pts)]
    return [{"trial": t.number, "goodput": g, "ttft_p95": f, "params": t.user_attrs.get("params") or {}}
            for g, f, t in sorted(front, key=lambda p: -p[0])]


# -- human output ---------------------------------------------------------------------------------


def _fmt_s(v: Any) -> str:
    return "-" if not isinstance(v, (int, float)) else (f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s")


def interval_pair(ci: Any) -> tuple[float, float] | None:
    """`[lo, hi]` as two finite floats, or None when it is missing or not two numbers."""
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in ci):
        return float(ci[0]), float(ci[1])
    return None


def _fmt_ci(d: dict[str, Any]) -> str:
    ci = interval_pair(d.get("goodput_ci"))
    if ci is None:
        return ""
    conf = d.get("confidence")
    return f" [{ci[0]:.3g}, {ci[1]:.3g}]" + (f" at {conf:.0%}" if isinstance(conf, (int, float)) else "")


def load_hint(result: StudyResult) -> str | None:
    """A hint when the study's load left nothing to find: in offered mode, vLLM's defaults kept up with
    the offered rate (goodput within `MIN_GAIN` of it), so no config could beat them by goodput, and
    the verdict "keep vLLM's defaults" says little about the flags. None otherwise (the verdict's
    `nothing_to_win` message already says it when the search stopped for that reason)."""
    s, base = result.settings, result.baseline
    rate = s.get("rate")
    if (s.get("mode") != "offered" or not isinstance(rate, (int, float)) or not base
            or result.verdict.recommendation != "baseline" or STOPPED_AFTER_BASELINE in result.verdict.message):
        return None
    served = base.get("goodput_mean") or 0.0
    if served * (1 + MIN_GAIN) <= rate:
        return None
    return (f"the defaults served {served:.3g} of the {rate:g} req/s offered: at this load no config can beat them "
            f"by the {MIN_GAIN:.0%} a restart needs; to look for headroom, offer more (--rate) or use --mode capacity")


def sides(result: StudyResult) -> list[tuple[str, dict[str, Any]]]:
    """`[("baseline", entry), ("best tuned", entry)]` for the lines and the HTML table that set the two
    side by side; the best tuned trial is left out when it is the baseline itself (no tuned trial
    finished: `summarize` falls back to the baseline), and may be worse than the default (the verdict
    says which to run)."""
    out = [("baseline", result.baseline)]
    if result.best and (not result.baseline or result.best["trial"] != result.baseline["trial"]):
        out.append(("best tuned", result.best))
    return [(label, e) for label, e in out if e]


def judged_outcomes(d: dict[str, Any]) -> dict[str, str]:
    """`{target key: "met" | "missed" | "inconclusive"}` as the verdict judged a trial's SLOs (`d`:
    `StudyResult.interval`); empty where it judged none."""
    slo = d.get("slo") if isinstance(d.get("slo"), dict) else {}
    return {k: f["outcome"] for k, f in slo.items() if isinstance(f, dict) and f.get("outcome")}


def slo_outcomes(d: dict[str, Any], feasible: bool) -> str:
    """How a trial stands against the SLOs, in the verdict's words where it judged them (`d`:
    `StudyResult.interval`): "every SLO met at 95%", "SLO at 95%: ttft_p95 met, tpot_p95
    inconclusive"; else from its own run's figures, which are one sample ("SLO met on its run")."""
    outcomes = judged_outcomes(d)
    conf = d.get("confidence")
    at = f" at {conf:.0%}" if isinstance(conf, (int, float)) else ""
    if not outcomes:
        return f"SLO {'met' if feasible else 'missed'} on its run"
    if len(set(outcomes.values())) == 1:
        return f"every SLO {next(iter(outcomes.values()))}{at}"
    return f"SLO{at}: " + ", ".join(f"{k} {o}" for k, o in outcomes.items())


def fmt_usd(v: float | None) -> str:
    return "-" if v is None else f"${v:.4g}"


def trial_tables(result: StudyResult, width: int = 80) -> tuple[Any, Any]:
    """Two rich tables: the figures per trial, then each trial's flags (or why it was not measured).
    Below 72 columns (`width`) the figures' columns are one blank apart instead of two.

    Flags live in their own two-column table so they get the console's whole width: in one table
    with the figures, rich shrank them to a column a few characters wide at 80 columns. Flags wrap
    between `name=value` pairs, never inside one (a pair longer than the line folds, the last resort).
    """
    from rich import box
    from rich.table import Table
    from rich.text import Text

    tight = {"padding": (0, 0)} if width < 72 else {"collapse_padding": True}
    figures = Table(title=f"study {result.study}", box=box.SIMPLE_HEAD, pad_edge=False, **tight)
    wall = any(isinstance(r.get("wall_seconds"), (int, float)) for r in result.rows)  # when trials were timed
    for col, justify in (("#", "right"), ("origin", "left"), ("state", "left"), ("goodput\nreq/s", "right"),
                         ("TTFT\np95", "right"), ("TPOT\np95", "right"), ("SLO", "left"),
                         *((("wall\ns", "right"),) if wall else ())):
        # Headers on two lines keep the columns as narrow as their figures; a figure never wraps
        # (and would show "…" if it ever had to be cut).
        figures.add_column(col, justify=justify, no_wrap=True, overflow="ellipsis")
    flags = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    flags.add_column("#", justify="right", no_wrap=True)
    flags.add_column("flags / reason", overflow="fold", ratio=1)
    for r in result.rows:
        slo = "-" if r["state"] != "complete" else ("met" if r["feasible"] else "missed")
        gp = r["goodput"]
        ws = r.get("wall_seconds")
        # "!": its load generator warned (printed under the tables): figures from a starved host
        figures.add_row(str(r["trial"]), str(r["origin"] or ""), r["state"] + (" !" if r.get("measurement_warnings") else ""),
                        f"{gp:.3g}" if isinstance(gp, (int, float)) and r["state"] == "complete" else "-",
                        _fmt_s(r["ttft_p95"]), _fmt_s(r["tpot_p95"]), slo,
                        *((f"{ws:.0f}" if isinstance(ws, (int, float)) else "-",) if wall else ()))
        queued = r.get("queued_params")
        detail = (f"queued: {fmt_params(queued)}" if queued else fmt_params(r["params"])) + (
            f"  ({r['why_tried']})" if r.get("why_tried") else "") + (f"  [{r['reason']}]" if r["reason"] else "")
        flags.add_row(str(r["trial"]), Text(detail))  # Text: "[reason]" is data, not rich markup
    return figures, flags


def render(result: StudyResult, console: Any = None) -> None:
    """The study's tables, verdict (with intervals where the verdict has them), cost per 1,000 output
    tokens (with `result.cost_per_hour`), and the recommended `vllm serve` line, with rich."""
    from rich.console import Console
    from rich.markup import escape

    console = console or Console()
    console.print(tuned_for(result), markup=False, soft_wrap=True)
    for table in trial_tables(result, console.width):
        console.print(table)
    # Prose lines are not wrapped (soft_wrap): a terminal folds them itself, and a log file keeps
    # each on one line that grep finds whole; the tables above fit the width.
    c = result.counts
    dup = c.get("duplicate", 0)
    console.print(f"trials: {c['complete']} measured, {c.get('pruned', 0)} stopped early, {c['infeasible']} "
                  f"infeasible, {dup} duplicate{'' if dup == 1 else 's'} (not measured), {c['fail']} failed, "
                  f"{c['running']} running{stale_text(c)}, {c['waiting']} waiting", soft_wrap=True)
    if result.search_stopped:
        console.print(f"search stopped before its trial budget: {result.search_stopped}", markup=False,
                      soft_wrap=True)
    for e in result.pending_remedies:  # the budget ran out first
        console.print(f"queued, not run (a resume with more trials runs it): {e['label']}", markup=False,
                      soft_wrap=True)
    if isinstance(result.wall.get("study"), (int, float)):
        waited = result.wall.get("waited") or 0
        console.print(f"wall time: study {result.wall['study']:.0f} s, trials {result.wall['trials']:.0f} s"
                      + (f" ({waited:.0f} s of it duplicates waiting for another worker's run of their server)"
                         if waited >= 1 else ""), soft_wrap=True)
    for r in result.rows:  # a trial measured on a starved host is not evidence: say so where it is read
        for w in r.get("measurement_warnings") or []:
            console.print(f"trial {r['trial']} (!): load generator warning: {w}", markup=False, soft_wrap=True)
    v = result.verdict
    console.print(f"[bold]verdict:[/bold] {escape(v.message)}", soft_wrap=True)
    hint = load_hint(result)
    if hint:
        console.print(f"hint: {hint}", markup=False, soft_wrap=True)
    for label, e in sides(result):
        iv = result.interval(e["trial"])
        console.print(f"{label}: trial {e['trial']}, goodput {e['goodput_mean']:.3g} req/s{_fmt_ci(iv)} "
                      f"({runs_text(e['goodput_samples'])}), "
                      f"{slo_outcomes(iv, e['feasible'])}", markup=False, soft_wrap=True)
    if result.cost_per_hour is not None:
        cost = cost_figures(result)
        for label in ("baseline", "recommended"):
            side = cost[label]
            if side:
                console.print(f"cost ({label}, trial {side['trial']}): "
                              f"{fmt_usd(side['usd_per_1k_output_tokens'])} per 1,000 output tokens at "
                              f"${cost['usd_per_hour']:g}/hour", soft_wrap=True)
    k_rows = k_by_load_of(result)
    if k_rows:
        from rich import box
        from rich.table import Table

        ks = Table(title="speculation by load: best K", box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("load", "best K", "goodput req/s"):
            ks.add_column(col, justify="right", no_wrap=True)
        for k in k_rows:
            gp = k.get("goodput")
            ks.add_row(load_label(k), str(k.get("best_k") or "off"),
                       f"{gp:.3g}" if isinstance(gp, (int, float)) else "-")
        console.print(ks)
    rec = result.recommended
    if rec and rec.get("command"):
        console.print("[bold]run it:[/bold]")
        console.print(rec["command"], soft_wrap=True, markup=False, highlight=False)


def serve_script(command: str, comment: str) -> str:
    """A POSIX sh script that runs `command` (a `vllm serve` line, possibly led by `VAR=value`
    assignments such as `VLLM_CPU_KVCACHE_SPACE=4`). `exec env` because a plain `exec VAR=1 vllm`
    takes the assignment for the program's name."""
    comment = " ".join(comment.split())  # one comment line whatever the message holds
    return f"#!/bin/sh\n# {comment}\nexec env {command}\n"


def write_outputs(result: StudyResult, study: optuna.Study, out_dir: Path) -> dict[str, Path]:
    """summary.json, best.yaml (flag file), best.sh (serve line), the plots (PNG + HTML), and
    report.html (self-contained, with its figures also as PNG: see `slotune.tuner.html_report`)."""
    from slotune.tuner.html_report import write_html_report

    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    p = out_dir / "summary.json"
    p.write_text(json.dumps(result.to_dict(), indent=2, default=str))
    written["summary"] = p
    rec = result.recommended
    if rec and rec.get("flag_file"):
        (out_dir / "best.yaml").write_text(rec["flag_file"])
        (out_dir / "best.sh").write_text(serve_script(rec["command"], result.verdict.message))
        written["flag_file"] = out_dir / "best.yaml"
        written["command"] = out_dir / "best.sh"
    written.update(write_plots(study, out_dir))
    extra = {name: written[f"{name}_png"] for name in ("history", "pareto") if f"{name}_png" in written}
    written.update(write_html_report(result, out_dir, extra))
    # A folder used before may hold an earlier study's outputs this one has none of (a Pareto front,
    # a best.sh): left there, they would read as this study's.
    for name in OUTPUT_FILES:
        if (out_dir / name).exists() and out_dir / name not in written.values():
            (out_dir / name).unlink()
    return written


# Every file `write_outputs` may write (and so may remove, when this study has no such output).
OUTPUT_FILES = ("summary.json", "best.yaml", "best.sh", "history.png", "history.html", "pareto.png", "pareto.html",
                "baseline_vs_best.png", "slo_targets.png", "goodput_vs_rate.png", "report.html")


def write_plots(study: optuna.Study, out_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as mvis

    written: dict[str, Path] = {}
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return written
    multi = len(study.directions) > 1
    history_kw: dict[str, Any] = {"target_name": "goodput (req/s)"}
    if multi:
        history_kw["target"] = lambda t: t.values[0]
    plots: list[tuple[str, Any, Any]] = [
        ("history", lambda: mvis.plot_optimization_history(study, **history_kw),
         lambda: vis.plot_optimization_history(study, **history_kw)),
    ]
    if multi:
        names = ["goodput (req/s)", "TTFT p95 (s)"]
        plots.append(("pareto", lambda: mvis.plot_pareto_front(study, target_names=names),
                      lambda: vis.plot_pareto_front(study, target_names=names)))
    for name, mpl, plotly in plots:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ax = mpl()
            fig = ax.figure if hasattr(ax, "figure") else ax
            png = out_dir / f"{name}.png"
            fig.savefig(png, dpi=100, bbox_inches="tight")
            plt.close(fig)
            html = out_dir / f"{name}.html"
            plotly().write_html(str(html), include_plotlyjs=True)
        written[f"{name}_png"] = png
        written[f"{name}_html"] = html
    return written
