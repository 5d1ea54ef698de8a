"""What a study found, in forms people use: JSON (`baseline`, `best`, each with `params`, `goodput`
and the SLO figures, `best.command`), a rich table, the best config as a `vllm serve` line and a
flag file, and plots (optimization history; Pareto front in Pareto mode) as PNG and HTML.

Everything is computed from the storage alone, so `slotune report` after the fact (or while other
workers still run) says what `slotune tune` said at its end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from slotune.errors import ConfigError
from slotune.tuner.objective import BASELINE, ORIGIN, ttft_p95
from slotune.tuner.storage import _safe, open_storage, storage_url
from slotune.tuner.verdict import Verdict, decide, ranked, samples_of
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
        }


def load(storage: str | None, study_name: str) -> optuna.Study:
    url = storage_url(storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=study_name, storage=open_storage(url))
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(url))]
        known = f" (studies here: {', '.join(names[:10])})" if names else " (no studies there)"
        raise ConfigError(f"no study named {study_name!r} in {_safe(url)}{known}") from None


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
    counts["infeasible"] = counts.pop("pruned")
    return StudyResult(
        study=study_name,
        storage=_safe(storage_url(storage)),
        settings=dict(attrs.get("slotune_spec") or {}),
        counts=counts,
        baseline=entry(base_t, attrs) if base_t else None,
        best=entry(best_t, attrs) if best_t else None,
        verdict=verdict,
        pareto=pareto_front(trials),
        rows=[row(t) for t in trials],
    )


def entry(t: FrozenTrial, study_attrs: dict[str, Any]) -> dict[str, Any]:
    ua = t.user_attrs
    client = ua.get("client") or {}
    slo = {r["key"]: {"value": r["value"], "threshold": r["threshold"], "met": r["met"]} for r in ua.get("slo") or []}
    config = ua.get("config")
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
        "tpot_p95": _p95(client, "tpot_seconds"),
        "e2e_p95": _p95(client, "e2e_seconds"),
        "request_throughput": client.get("request_throughput"),
        # The load generator's self-checks: a trial measured on a starved host is not evidence.
        "measurement_warnings": client.get("warnings") or [],
        "command": ua.get("command"),
        "flag_file": flag_file,
        "findings": ua.get("findings") or [],
        "log_path": ua.get("log_path"),
    }


def row(t: FrozenTrial) -> dict[str, Any]:
    ua = t.user_attrs
    client = ua.get("client") or {}
    state = {TrialState.PRUNED: "infeasible"}.get(t.state, t.state.name.lower())
    return {"trial": t.number, "origin": ua.get(ORIGIN), "state": state, "feasible": ua.get("feasible"),
            "goodput": ua.get("goodput"), "ttft_p95": ttft_p95(client), "tpot_p95": _p95(client, "tpot_seconds"),
            "params": ua.get("params") or {}, "reason": ua.get("reason") or "", "remedy": ua.get("remedy"),
            "findings": ua.get("findings") or []}


def _p95(client: dict[str, Any], key: str) -> float | None:
    block = client.get(key)
    return block.get("p95") if isinstance(block, dict) else None


def pareto_front(trials: list[FrozenTrial]) -> list[dict[str, Any]]:
    """Feasible measured trials no other one beats on both goodput (higher) and p95 TTFT (lower)."""
    pts = []
    for t in trials:
        if t.state is TrialState.COMPLETE and t.user_attrs.get("feasible"):
            ttft = ttft_p95(t.user_attrs.get("client") or {})
            if ttft is not None:
                pts.append((float(t.user_attrs.get("goodput") or 0.0), ttft, t))
    front = [p for p in pts if not any(q[0] >= p[0] and q[1] <= p[1] and (q[0], q[1]) != (p[0], p[1]) for q in pts)]
    return [{"trial": t.number, "goodput": g, "ttft_p95": f, "params": t.user_attrs.get("params") or {}}
            for g, f, t in sorted(front, key=lambda p: -p[0])]


# -- human output ---------------------------------------------------------------------------------


def _fmt_s(v: Any) -> str:
    return "-" if not isinstance(v, (int, float)) else (f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s")


def _fmt_params(p: dict[str, Any]) -> str:
    if not p:
        return "(vLLM defaults)"
    parts = []
    for k, v in p.items():
        if isinstance(v, dict):
            v = f"{v.get('method')}/K={v.get('num_speculative_tokens')}"
        parts.append(f"{k}={v}")
    return " ".join(parts)


def render(result: StudyResult, console: Any = None) -> None:
    """The study summary table and the recommendation, with rich."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"study {result.study}", show_lines=False)
    for col in ("#", "origin", "state", "goodput req/s", "TTFT p95", "TPOT p95", "SLO", "flags / reason"):
        table.add_column(col, overflow="fold")
    for r in result.rows:
        slo = "-" if r["state"] != "complete" else ("met" if r["feasible"] else "missed")
        detail = _fmt_params(r["params"]) + (f"  [{r['reason']}]" if r["reason"] else "")
        gp = r["goodput"]
        table.add_row(str(r["trial"]), str(r["origin"] or ""), r["state"],
                      f"{gp:.3g}" if isinstance(gp, (int, float)) and r["state"] == "complete" else "-",
                      _fmt_s(r["ttft_p95"]), _fmt_s(r["tpot_p95"]), slo, detail)
    console.print(table)
    c = result.counts
    console.print(f"trials: {c['complete']} measured, {c['infeasible']} infeasible, {c['fail']} failed, "
                  f"{c['running']} running, {c['waiting']} waiting")
    v = result.verdict
    console.print(f"[bold]verdict:[/bold] {v.message}")
    for label, e in (("baseline", result.baseline), ("best", result.best)):
        if e:
            console.print(f"{label}: trial {e['trial']}, goodput {e['goodput_mean']:.3g} req/s "
                          f"(samples {', '.join(f'{g:.3g}' for g in e['goodput_samples'])}), "
                          f"SLO {'met' if e['feasible'] else 'missed'}")
    rec = result.recommended
    if rec and rec.get("command"):
        console.print("[bold]run it:[/bold]")
        console.print(rec["command"], soft_wrap=True, markup=False, highlight=False)


def write_outputs(result: StudyResult, study: optuna.Study, out_dir: Path) -> dict[str, Path]:
    """summary.json, best.yaml (flag file), best.sh (serve line), and the plots (PNG + HTML)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    p = out_dir / "summary.json"
    p.write_text(json.dumps(result.to_dict(), indent=2, default=str))
    written["summary"] = p
    rec = result.recommended
    if rec and rec.get("flag_file"):
        (out_dir / "best.yaml").write_text(rec["flag_file"])
        (out_dir / "best.sh").write_text(f"#!/bin/sh\n# {result.verdict.message}\nexec {rec['command']}\n")
        written["flag_file"] = out_dir / "best.yaml"
        written["command"] = out_dir / "best.sh"
    written.update(write_plots(study, out_dir))
    return written


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
