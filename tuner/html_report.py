"""One self-contained HTML file a person reads at a glance, plus its figures as PNG files.

`write_html_report(result, out_dir, extra_pngs)` writes `report.html` and `baseline_vs_best.png`,
`slo_targets.png`, `goodput_vs_rate.png` into `out_dir`. The page holds (from the template
`templates/report.html.j2`): the verdict; baseline vs best with their goodput intervals where the
verdict computed them (the samples otherwise); each SLO target against its threshold; goodput
against offered rate for the two (the points a study measured: one rate per config in offered mode,
the highest rate meeting the SLOs in capacity mode); the Pareto front with `--pareto`; the K-by-load
table when speculation was measured by load; cost per 1,000 output tokens with a machine price; the
recommended `vllm serve` line; every trial.

Self-contained means no network on the reader's machine: every image is embedded as a base64
`data:` URI, the style is inline, and nothing is linked by http(s).
"""

from __future__ import annotations

import base64
from importlib.resources import files
from pathlib import Path
from typing import Any

from slotune.slo import RATIO_METRICS, fmt_figure, fmt_interval
from slotune.tuner.labels import SCHEDULE, fmt_params
from slotune.tuner.report import (
    StudyResult,
    cost_figures,
    interval_pair,
    judged_outcomes,
    k_by_load_of,
    load_label,
    sides,
    slo_outcomes,
)

TEMPLATE = "report.html.j2"


def fmt_value(key: str, v: Any) -> str:
    """An SLO figure in its unit (`slotune.slo.fmt_figure`)."""
    return fmt_figure(key, v)


def slo_rows(result: StudyResult) -> list[dict[str, Any]]:
    """Per SLO target: `{"key", "threshold", "baseline", "best"}`, each side `{"estimate", "ci",
    "outcome"}` or None. The verdict's figures (with an interval) win over the trial's own."""
    keys: dict[str, float | None] = {}
    for e in (result.baseline, result.best):
        for k, v in ((e or {}).get("slo") or {}).items():
            keys.setdefault(k, v.get("threshold"))
    for e in (result.baseline, result.best):
        for k, v in (result.interval(e["trial"]).get("slo") or {}).items() if e else ():
            keys.setdefault(k, v.get("threshold"))

    def side(e: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
        if not e:
            return None
        conf = (result.interval(e["trial"]).get("slo") or {}).get(key)
        if conf:
            return {"estimate": conf.get("estimate"), "ci": interval_pair(conf.get("ci")), "outcome": conf.get("outcome")}
        own = (e.get("slo") or {}).get(key)
        if not own:
            return None
        outcome = own.get("status") or {True: "met", False: "missed"}.get(own.get("met"), "no data")
        return {"estimate": own.get("value"), "ci": None, "outcome": outcome}

    return [{"key": k, "threshold": t, "baseline": side(result.baseline, k), "best": side(result.best, k)}
            for k, t in keys.items()]


def _slo_class(iv: dict[str, Any], feasible: bool) -> str:
    """The CSS class of a side's SLO cell: the worst outcome the verdict gave, else its run's."""
    outcomes = set(judged_outcomes(iv).values())
    if not outcomes:
        return "met" if feasible else "missed"
    return next(o for o in ("missed", "inconclusive", "met") if o in outcomes)


def _interval(ax: Any, x: float, lo: float, hi: float) -> None:
    ax.vlines(x, lo, hi, color="black", lw=1.5, zorder=2)
    ax.plot([x, x], [lo, hi], "_", color="black", ms=16, mew=1.5, zorder=2)


def _plot_baseline_vs_best(result: StudyResult, path: Path) -> bool:
    import matplotlib.pyplot as plt

    pair = sides(result)
    if not pair:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for i, (label, e) in enumerate(pair):
        iv = result.interval(e["trial"])
        mean = e["goodput_mean"]
        ax.bar(i, mean, color="#9db9d8" if label == "baseline" else "#5aa469", width=0.5)
        ci = interval_pair(iv.get("goodput_ci"))
        if ci:  # drawn from its own bounds: an interval need not be centred on (or hold) the mean
            _interval(ax, i, ci[0], ci[1])
        samples = e.get("goodput_samples") or []
        ax.scatter([i] * len(samples), samples, color="black", s=12, zorder=3)
    ax.set_xticks(range(len(pair)), [f"{label}\n(trial {e['trial']})" for label, e in pair])
    ax.set_ylabel("goodput (req/s)")
    ax.set_title("goodput: mean (bar), interval (whiskers), samples (dots)", fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


def _plot_slo(rows: list[dict[str, Any]], path: Path) -> bool:
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["threshold"] is not None]
    if not rows:
        return False
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.2), squeeze=False)
    for ax, r in zip(axes[0], rows, strict=True):
        scale, unit = (100, "%") if r["key"] in RATIO_METRICS else (1000, "ms")
        labels = []
        for i, label in enumerate(("baseline", "best")):
            s = r[label]
            labels.append(label)
            if not s or s["estimate"] is None:
                continue
            ci = s.get("ci")
            if ci:
                _interval(ax, i, ci[0] * scale, ci[1] * scale)
            color = {"met": "#5aa469", "missed": "#d35d6e"}.get(str(s["outcome"]), "#e0a030")
            ax.plot(i, s["estimate"] * scale, "o", color=color, ms=8, zorder=3)
        ax.axhline(r["threshold"] * scale, color="black", ls="--", lw=1, label="threshold")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.set_ylim(bottom=0)
        ax.set_title(f"{r['key']} ({unit})", fontsize=9)
        ax.legend(fontsize=7, loc="best")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


def rate_points(result: StudyResult) -> list[dict[str, Any]]:
    """`[{"label", "trial", "rate", "goodput", "measured_rate", "met"}]` for the baseline and the best: every
    point of a stored rate sweep (`sweep: [{"rate", "goodput"}]` on the entry) where one exists, else
    the one rate the config was measured at (None: no offered rate, e.g. a fixed concurrency)."""
    out = []
    for label, e in sides(result):
        sweep = e.get("sweep") or []
        if sweep:
            out += [{"label": label, "trial": e["trial"], "rate": p.get("rate"), "goodput": p.get("goodput"),
                     "measured_rate": p.get("request_throughput"), "met": p.get("met")}
                    for p in sorted(sweep, key=lambda p: p.get("rate") or 0)]
        else:
            rate = e.get("rate") or result.settings.get("rate")
            out.append({"label": label, "trial": e["trial"], "rate": rate, "goodput": e.get("goodput"),
                        "measured_rate": e.get("request_throughput"), "met": e.get("feasible")})
    return out


def _plot_rate(points: list[dict[str, Any]], mode: str, path: Path) -> bool:
    import matplotlib.pyplot as plt

    usable = [p for p in points if p["goodput"] is not None and (p["rate"] or p["measured_rate"])]
    if not usable:
        return False
    offered = all(p["rate"] for p in usable)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    # The labels `sides` gives ("best tuned" since the report stopped calling a baseline "best"): a
    # literal "best" here drew the baseline alone.
    for label, color in (("baseline", "#6b8fb8"), ("best tuned", "#3d8b4f")):
        pts = sorted((p["rate"] if offered else p["measured_rate"], p["goodput"]) for p in usable if p["label"] == label)
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], "s--" if label == "baseline" else "o-", color=color,
                    label=label, ms=9 if label == "baseline" else 6)
    lim = max(max(p["rate"] if offered else p["measured_rate"] for p in usable), 1e-9) * 1.1
    ax.plot([0, lim], [0, lim], ls=":", color="grey", lw=1, label="goodput = rate")
    ax.set_xlabel("offered rate (req/s)" if offered else "measured request rate (req/s; no offered rate set)")
    ax.set_ylabel("goodput (req/s)")
    ax.set_title(f"goodput against rate ({mode} mode)", fontsize=9)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


def schedule_of(e: dict[str, Any] | None) -> list[dict[str, int]]:
    """The config's speculation schedule by batch size, `[{"first", "last", "k"}]` (empty: none)."""
    spec = ((e or {}).get("params") or {}).get("speculative_config")
    rows = spec.get(SCHEDULE) if isinstance(spec, dict) else None
    return [{"first": a, "last": b, "k": n} for a, b, n in rows or []]


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def context(result: StudyResult, images: dict[str, Path]) -> dict[str, Any]:
    """Everything the template shows, as plain data (the images as `data:` URIs)."""
    from slotune.tuner.report import fmt_usd, load_hint

    rec = result.recommended
    rows = []
    cost = cost_figures(result) if result.cost_per_hour is not None else None
    for label, e in sides(result):
        iv = result.interval(e["trial"])
        usd = None
        if cost:
            usd = next((c["usd_per_1k_output_tokens"] for c in (cost["baseline"], cost["recommended"])
                        if c and c["trial"] == e["trial"]), None)
        rows.append({"label": label, "trial": e["trial"], "flags": fmt_params(e.get("params") or {}),
                      "mean": e["goodput_mean"], "samples": e.get("goodput_samples") or [],
                      "ci": interval_pair(iv.get("goodput_ci")), "confidence": iv.get("confidence"),
                      "feasible": e.get("feasible"), "output_throughput": e.get("output_throughput"),
                      # as the verdict judged them, where it did (the trial's own run is one sample)
                      "slo_text": slo_outcomes(iv, bool(e.get("feasible"))),
                      "slo_class": _slo_class(iv, bool(e.get("feasible"))),
                      "cost": fmt_usd(usd) if cost else None, "command": e.get("command")})
    return {
        "r": result,
        "hint": load_hint(result),
        "settings": result.settings,
        "sides": rows,
        "slo_rows": slo_rows(result),
        "fmt_value": fmt_value,
        "fmt_interval": fmt_interval,
        "fmt_params": fmt_params,
        "recommended": rec,
        "cost": cost,
        "fmt_usd": fmt_usd,
        "rate_points": rate_points(result),
        "k_by_load": k_by_load_of(result),
        "load_label": load_label,
        "schedule": schedule_of(result.recommended or result.best),
        "pareto": result.pareto if len(result.pareto) and result.settings.get("pareto") else [],
        "images": {name: _data_uri(p) for name, p in images.items()},
    }


def write_html_report(result: StudyResult, out_dir: Path, extra_pngs: dict[str, Path] | None = None) -> dict[str, Path]:
    """Write `report.html` (self-contained) and its PNG figures; returns `{name: path}` of what it
    wrote. `extra_pngs` (e.g. `{"history": ..., "pareto": ...}`) are embedded too."""
    import warnings

    import jinja2
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    images: dict[str, Path] = {}
    rows = slo_rows(result)
    mode = str(result.settings.get("mode") or "offered")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, draw in (("baseline_vs_best", lambda p: _plot_baseline_vs_best(result, p)),
                           ("slo_targets", lambda p: _plot_slo(rows, p)),
                           ("goodput_vs_rate", lambda p: _plot_rate(rate_points(result), mode, p))):
            path = out_dir / f"{name}.png"
            if draw(path):
                images[name] = written[f"{name}_png"] = path
    for name, path in (extra_pngs or {}).items():
        if path.exists():
            images[name] = path
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    template = env.from_string((files("slotune.tuner") / "templates" / TEMPLATE).read_text(encoding="utf-8"))
    html = out_dir / "report.html"
    html.write_text(template.render(**context(result, images)), encoding="utf-8")
    written["report_html"] = html
    return written
