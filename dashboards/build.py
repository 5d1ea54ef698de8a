"""Generate slotune's Grafana dashboards (the committed `dashboards/*.json` are this script's output).

Why a generator rather than hand-written JSON: every query names a recording rule from
`slotune.rules` (one definition of each SLI, shared with the alerts), and the SLO thresholds come
from `slotune.slo.DEFAULT_SLO`, so renaming a series or changing the default SLO is one edit here
and `python dashboards/build.py`, never a search through 3,000 lines of JSON. A unit test checks the
committed files equal this output.

Panels that draw an SLO target draw it twice: as a Grafana threshold line at DEFAULT_SLO's value,
and as the `slo:vllm_latency_threshold:seconds` series the rule generator records, so a stack
whose rules were generated for another SLO still shows its real targets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slotune import rules
from slotune.metric_names import name_of
from slotune.slo import DEFAULT_SLO, ERROR_FINISH_REASONS, SloSpec

OUT = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'model_name=~"$model", instance=~"$instance"'
S = rules.SERIES
SLO = SloSpec.parse(DEFAULT_SLO)
TARGETS = SLO.request_thresholds()  # metric -> seconds
SCHEMA_VERSION = 39
Json = dict[str, Any]


def q(expr: str, legend: str = "", ref: str = "A", instant: bool = False, fmt: str | None = None) -> Json:
    t: Json = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref}
    if instant:
        t |= {"instant": True, "range": False}
    if fmt:
        t["format"] = fmt
    return t


def sel(series: str, extra: str = "") -> str:
    return f"{series}{{{SEL}{', ' + extra if extra else ''}}}"


def _thresholds(steps: list[tuple[float, str]]) -> Json:
    # The first step's value stands for -Infinity (Grafana ignores it); the schema wants a number.
    return {"mode": "absolute", "steps": [{"color": "green", "value": 0}] + [{"color": c, "value": v} for v, c in steps]}


def timeseries(title: str, targets: list[Json], unit: str, description: str,
               thresholds: list[tuple[float, str]] | None = None, stack: bool = False) -> Json:
    custom: Json = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if stack else 0, "showPoints": "never",
                    "spanNulls": False, "thresholdsStyle": {"mode": "line+area" if thresholds else "off"},
                    "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    return {"type": "timeseries", "title": title, "description": description, "datasource": DS, "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit, "custom": custom,
                                         "thresholds": _thresholds(thresholds or [])}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
                        "tooltip": {"mode": "multi", "sort": "desc"}}}


def stat(title: str, targets: list[Json], unit: str, description: str,
         thresholds: list[tuple[float, str]] | None = None, base: str = "green") -> Json:
    th = _thresholds(thresholds or [])
    th["steps"][0]["color"] = base
    return {"type": "stat", "title": title, "description": description, "datasource": DS, "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit, "thresholds": th}, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "background", "graphMode": "area", "textMode": "auto"}}


def table(title: str, targets: list[Json], description: str) -> Json:
    return {"type": "table", "title": title, "description": description, "datasource": DS, "targets": targets,
            "fieldConfig": {"defaults": {}, "overrides": []}, "options": {"showHeader": True},
            "transformations": [{"id": "labelsToFields", "options": {}}]}


def latency_panel(sli: str, title: str, why: str) -> Json:
    targets = [q(sel(rules.latency_quantile(sli, qq)), f"p{round(qq * 100)} {{{{instance}}}}", ref)
               for qq, ref in zip(rules.QUANTILES, "ABC", strict=True)]
    targets.append(q(f'max by (slo) ({rules.SLO_THRESHOLD}{{slo=~"{sli}_.*"}})', "target {{slo}}", "D"))
    th = [(TARGETS[sli], "red")] if sli in TARGETS else None
    return timeseries(title, targets, "s", why, th)


def layout(panels: list[Json]) -> list[Json]:
    """Flow panels left to right: stats are 6 wide and 4 high, everything else 12 by 8."""
    x = y = row_h = 0
    for i, p in enumerate(panels, start=1):
        w, h = (6, 4) if p["type"] == "stat" else (24, 8) if p["type"] == "table" else (12, 8)
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        p["id"] = i
        p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        x, row_h = x + w, max(row_h, h)
    return panels


RUNNING = name_of("requests_running")  # on every vLLM page: the one the variables list values from


def variables(vllm: bool = True) -> list[Json]:
    out: list[Json] = [{"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
                        "current": {"text": "default", "value": "default"}, "hide": 0}]
    if vllm:
        for name, label, expr in (
            ("model", "Model", f"label_values({RUNNING}, model_name)"),
            ("instance", "Instance", f'label_values({RUNNING}{{model_name=~"$model"}}, instance)'),
        ):
            out.append({"type": "query", "name": name, "label": label, "datasource": DS,
                        "query": expr, "refresh": 2, "multi": True, "includeAll": True, "allValue": ".+",
                        "current": {"text": "All", "value": "$__all"}, "sort": 1, "hide": 0})
    return out


def annotation(name: str, expr: str, color: str) -> Json:
    # Grafana titles a Prometheus annotation with the series' labels; the strict schema has no
    # `titleFormat`, so the expressions keep only the labels worth reading.
    return {"name": name, "datasource": DS, "enable": True, "iconColor": color, "expr": expr}


BUILTIN_ANNOTATION: Json = {"name": "Annotations & Alerts", "builtIn": 1, "type": "dashboard", "enable": True,
                            "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                            "datasource": {"type": "grafana", "uid": "-- Grafana --"}}
ALERTS_ANNOTATION = annotation(
    "Firing alerts", 'max by (alertname, slo, severity) (ALERTS{alertstate="firing", model_name=~"$model"})', "red")
FINDINGS_ANNOTATION = annotation(
    "slotune findings", "max by (playbook, severity, target) (slotune_findings_active) > 0", "orange")
CONFIG_ANNOTATION = annotation(
    "Config changes", "sum by (target, outcome) (changes(slotune_config_changes_total[2m])) > 0", "purple")


def dashboard(uid: str, title: str, description: str, panels: list[Json], *, vllm_vars: bool = True,
              annotations: list[Json] | None = None, tags: tuple[str, ...] = ()) -> Json:
    return {"uid": uid, "title": title, "description": description, "tags": ["slotune", "vllm", *tags],
            "timezone": "browser", "editable": True, "graphTooltip": 1, "refresh": "30s",
            "time": {"from": "now-1h", "to": "now"}, "schemaVersion": SCHEMA_VERSION, "version": 1,
            "templating": {"list": variables(vllm_vars)},
            "annotations": {"list": [BUILTIN_ANNOTATION, *(annotations or [])]},
            "links": [{"title": "slotune dashboards", "type": "dashboards", "tags": ["slotune"], "asDropdown": True,
                       "includeVars": True, "keepTime": True, "icon": "external link", "targetBlank": False,
                       "tooltip": "", "url": ""}],
            "panels": layout(panels)}


def burn(window: str) -> str:
    return f"{sel(rules.SLO_ERRORS + window)}\n/ on (slo) group_left\n{rules.SLO_BUDGET}"


def slo_overview() -> Json:
    min_objective = min(1 - (rules.error_budget(t) or 0) for t in SLO.targets)
    factors = [(w.factor, "red" if w.severity == "page" else "orange") for w in rules.SRE_WINDOWS]
    panels = [
        stat("SLO attainment (1h)", [q(f"1 - {sel(rules.SLO_ERRORS + '1h')}", "{{slo}}", instant=True)], "percentunit",
             "Share of requests meeting each SLO's per-request threshold over the last hour.",
             [(min_objective, "green")], base="red"),
        stat("Burn rate (1h)", [q(burn("1h"), "{{slo}}", instant=True)], "x",
             "How fast the error budget burns over 1h: 1x spends a 30-day budget in 30 days; 14.4x pages.",
             [(1.0, "orange"), (14.4, "red")]),
        stat("Request rate", [q(f"sum({sel(S['requests_rate'])})", "req/s", instant=True)], "reqps",
             "Finished requests per second (all reasons)."),
        stat("Error ratio", [q(sel(S["error_ratio"]), "{{instance}}", instant=True)], "percentunit",
             "Requests finished with reason=error, as a share of all finished requests.",
             [(SLO.get("error_rate").threshold, "red")] if SLO.get("error_rate") else [(0.01, "red")]),
        timeseries("Error-budget burn rate by window", [q(burn(w), f"{{{{slo}}}} {w}", r)
                                                         for w, r in (("5m", "A"), ("1h", "B"), ("6h", "C"))],
                   "x", "Burn rate = bad-request ratio / error budget. Page tiers: 14.4x (1h/5m), 6x (6h/30m); "
                   "ticket tiers: 3x (1d/2h), 1x (3d/6h).", factors),
        timeseries("SLO attainment", [q(f"1 - {sel(rules.SLO_ERRORS + w)}", f"{{{{slo}}}} {w}", r)
                                      for w, r in (("5m", "A"), ("1h", "B"))],
                   "percentunit", "Share of requests within each SLO's threshold (recording rules from "
                   "`slotune rules`).", None),
        latency_panel("ttft", "Time to first token", "TTFT p50/p95/p99 against the SLO target: high TTFT means "
                      "queueing or long prefills (see the engine dashboard)."),
        latency_panel("tpot", "Time per output token", "TPOT after the first token: decode speed per request."),
        latency_panel("e2e", "End-to-end latency", "Whole-request latency; a wide p50-p99 gap is inconsistent "
                      "latency (mixed prompt lengths, preemptions)."),
        latency_panel("itl", "Inter-token latency", "Gaps between streamed tokens; spikes are prefills of other "
                      "requests interrupting decode."),
        timeseries("slotune's view: attainment and burn", [
            q('slotune_slo_attainment_ratio{target=~".*($instance).*"}', "attainment {{slo}}", "A"),
            q('slotune_slo_error_budget_burn_ratio{target=~".*($instance).*"}', "burn {{slo}}", "B"),
        ], "short", "The sidecar's own SLO evaluation (the same SLO spec the tuner uses)."),
        table("Firing alerts", [q('ALERTS{alertstate="firing"}', "", instant=True, fmt="table")],
              "Alerts Prometheus is firing now; Alertmanager sends them to the slotune sidecar for a diagnosis."),
    ]
    return dashboard("slotune-slo", "slotune / SLO overview",
                     "SLO attainment, error-budget burn and latency quantiles against their targets.", panels,
                     annotations=[ALERTS_ANNOTATION, FINDINGS_ANNOTATION, CONFIG_ANNOTATION], tags=("slo",))


def engine() -> Json:
    kv = rules.THRESHOLDS["kv_cache_usage"]
    panels = [
        timeseries("Running and waiting requests", [q(sel(S["requests_running"]), "running {{instance}}", "A"),
                                                    q(sel(S["requests_waiting"]), "waiting {{instance}}", "B")],
                   "short", "Waiting > 0 with running flat at --max-num-seqs: the batch is full (high TTFT).", None),
        timeseries("Waiting by reason", [q(f"sum by (reason) ({name_of('requests_waiting_by_reason')}{{{SEL}}})",
                                           "{{reason}}")], "short",
                   "capacity: no KV blocks free (KV pressure); deferred: scheduling constraints.", None, stack=True),
        timeseries("KV-cache usage", [q(sel(S["kv_cache_usage"]), "{{instance}}")], "percentunit",
                   "Fullest engine's KV cache. Sustained near 100 % means preemptions and queueing.", [(kv, "red")]),
        timeseries("Preemptions", [q(sel(S["preemptions_rate"]), "{{instance}}")], "short",
                   "Requests preempted per second (KV cache exhausted; their KV is recomputed).", [(0.01, "red")]),
        timeseries("Tokens per engine step", [
            q(sel(S["iteration_tokens_mean"]), "mean {{instance}}", "A"),
            q(sel(S["iteration_tokens_p99"]), "p99 {{instance}}", "B"),
        ], "short", "Tokens scheduled per step. The step budget is --max-num-batched-tokens (tuning dashboard, "
           "applied config): p99 at the budget means prefills are chunked; mean far below it with low GPU "
           "utilisation means the batch is too small.", None),
        timeseries("Prefix-cache hit ratio", [q(sel(S["prefix_cache_hit_ratio"]), "{{instance}}")], "percentunit",
                   "Prompt tokens served from the prefix cache.", None),
        timeseries("Token throughput", [q(sel(S["prompt_tokens_rate"]), "prompt {{instance}}", "A"),
                                        q(sel(S["generation_tokens_rate"]), "generation {{instance}}", "B")],
                   "short", "Prompt (prefill) and generated (decode) tokens per second.", None),
        timeseries("Requests by finish reason", [q(
            f"sum by (finished_reason) (rate({name_of('request_success')}{{{SEL}}}[$__rate_interval]))",
            "{{finished_reason}}")], "reqps", "length/stop are normal; error and abort count against the "
            f"error-rate SLO ({', '.join(ERROR_FINISH_REASONS)}) or the client (abort).", None, stack=True),
        timeseries("Queue time", [q(sel(rules.latency_quantile("queue", qq)), f"p{round(qq * 100)}", r)
                                  for qq, r in zip(rules.QUANTILES, "ABC", strict=True)], "s",
                   "Time requests wait before their first schedule: the queueing part of TTFT.", None),
        timeseries("Request rate", [q(sel(S["requests_rate"]), "{{instance}}")], "reqps",
                   "Finished requests per second.", None),
    ]
    return dashboard("slotune-engine", "slotune / vLLM engine",
                     "Scheduler and KV cache: batch occupancy, queueing, preemptions, step size, prefix cache.",
                     panels, annotations=[ALERTS_ANNOTATION], tags=("engine",))


def spec_decode() -> Json:
    th = rules.THRESHOLDS["spec_acceptance_min"]
    panels = [
        timeseries("Draft acceptance rate", [q(sel(S["spec_acceptance_ratio"]), "{{instance}}")], "percentunit",
                   "Accepted / proposed draft tokens. Below the line, speculation costs more than it saves.",
                   [(th, "green")]),
        timeseries("Mean acceptance length", [q(sel(S["spec_acceptance_length"]), "{{instance}}")], "short",
                   "Tokens produced per verification step (1 = no speculation gain).", None),
        timeseries("Acceptance by draft position", [q(sel(S["spec_acceptance_per_position"]),
                                                      "position {{position}}")], "percentunit",
                   "Share of drafts whose k-th token was accepted; a steep drop says fewer speculative tokens "
                   "would do.", None),
        timeseries("Drafts per second", [q(sel(S["spec_drafts_rate"]), "{{instance}}")], "short",
                   "Speculation activity; zero means speculative decoding is off or idle.", None),
        latency_panel("tpot", "Time per output token (did speculation help?)",
                      "Compare with a run without speculation: acceptance without a lower TPOT is no speedup."),
        latency_panel("itl", "Inter-token latency", "Accepted drafts arrive in bursts: ITL spreads out."),
    ]
    return dashboard("slotune-specdecode", "slotune / Speculative decoding",
                     "Is speculative decoding paying off? Acceptance, length, per-position acceptance, TPOT.",
                     panels, annotations=[ALERTS_ANNOTATION], tags=("spec-decode",))


def gpu() -> Json:
    panels = [
        timeseries("GPU utilisation (DCGM)", [q("DCGM_FI_DEV_GPU_UTIL / 100", "GPU {{gpu}} {{Hostname}}")],
                   "percentunit", "NVML utilisation from the DCGM exporter (gpu profile). Low with waiting "
                   "requests at zero: not enough load or batch too small.", None),
        timeseries("GPU memory used (DCGM)", [q(
            "DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)",
            "GPU {{gpu}}")], "percentunit", "Frame-buffer in use; vLLM pre-allocates --gpu-memory-utilization.",
            None),
        timeseries("Power (DCGM)", [q("DCGM_FI_DEV_POWER_USAGE", "GPU {{gpu}}")], "watt",
                   "Board power draw.", None),
        timeseries("SM clock (DCGM)", [q("DCGM_FI_DEV_SM_CLOCK", "GPU {{gpu}}")], "hertz",
                   "Clock throttling shows as drops under load.", None),
        timeseries("Batch occupancy next to utilisation", [q(sel(S["requests_running"]), "running {{instance}}", "A"),
                                                           q(sel(S["requests_waiting"]), "waiting {{instance}}", "B")],
                   "short", "Low GPU utilisation with few running requests: raise --max-num-seqs or the load.",
                   None),
        timeseries("KV-cache usage", [q(sel(S["kv_cache_usage"]), "{{instance}}")], "percentunit",
                   "vLLM's view of the GPU memory it reserved for KV.", None),
    ]
    return dashboard("slotune-gpu", "slotune / GPU",
                     "GPU utilisation, memory and power from NVIDIA's DCGM exporter, next to vLLM's batch.", panels,
                     tags=("gpu",))


def tuning() -> Json:
    panels = [
        timeseries("Tuning trials", [q("slotune_tuning_trials_finished", "finished {{study}}", "A"),
                                     q("slotune_tuning_trials_planned", "planned {{study}}", "B")],
                   "short", "Trials finished (any state) against the trial budget, per study the sidecar ran.", None),
        timeseries("Tuning studies running", [q("slotune_tuning_studies_running", "running")], "short",
                   "1 while the sidecar runs a study (`POST /api/v1/studies`); the best config and its goodput "
                   "are in `GET /api/v1/studies` and `slotune report`.", None),
        timeseries("Active findings", [q("sum by (playbook, severity) (slotune_findings_active)",
                                         "{{playbook}} ({{severity}})")], "short",
                   "Diagnoses the sidecar holds open, by playbook.", None, stack=True),
        timeseries("Config changes", [q("sum by (outcome) (increase(slotune_config_changes_total[$__rate_interval]))",
                                        "{{outcome}}")], "short",
                   "Applied, rolled-back and refused config changes (apply mode).", None),
        timeseries("Notifications", [q("sum by (receiver, outcome) (rate(slotune_notifications_total[$__rate_interval]))",
                                       "{{receiver}} {{outcome}}", "A"),
                                     q("slotune_outbox_pending_messages", "outbox pending", "B")], "short",
                   "Outgoing notifications by receiver and outcome, and the outbox backlog.", None),
        timeseries("Sidecar scrapes", [q("sum by (target) (rate(slotune_scrapes_total[$__rate_interval]))",
                                         "scrapes {{target}}", "A"),
                                       q("sum by (target) (rate(slotune_scrape_errors_total[$__rate_interval]))",
                                         "errors {{target}}", "B")], "short",
                   "The sidecar's scrapes of its vLLM target.", None),
        table("Applied config", [q("slotune_applied_config_info == 1", "", instant=True, fmt="table")],
              "The vLLM flags slotune last applied (one row per target)."),
    ]
    return dashboard("slotune-tuning", "slotune / Tuning and findings",
                     "Tuning studies, the applied config, and findings (also drawn as annotations).", panels,
                     vllm_vars=False, annotations=[FINDINGS_ANNOTATION, CONFIG_ANNOTATION], tags=("tuning",))


DASHBOARDS = {"slo-overview.json": slo_overview, "engine.json": engine, "speculative-decoding.json": spec_decode,
              "gpu.json": gpu, "tuning.json": tuning}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2, sort_keys=True) + "\n" for name, build in DASHBOARDS.items()}


def main() -> None:
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
