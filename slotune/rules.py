"""Prometheus rules from one config block and the SLO spec the tuner uses.

Three rule files, all generated here and committed under `deploy/prometheus/rules/`:

* `vllm-recording.yml`: every derived SLI, defined once (recording rules named
  `level:metric:operations`); dashboards and alerts read these series, never the raw formulas.
* `vllm-alerts.yml`: static engine alerts (KV pressure, preemptions, low spec acceptance, targets
  down), thresholds from `THRESHOLDS`.
* `slo.yml`: from an `SloSpec`: the per-SLO bad-request ratio over each burn window, and
  multi-window, multi-burn-rate alerts (Google SRE workbook, ch. 5) from `SRE_WINDOWS`.

Level `instance`: aggregated `by (job, instance, model_name)`, i.e. one scrape target and model,
with vLLM's per-engine series summed (data-parallel engines share the `engine` label).

A latency SLO `ttft_p95<=500ms` reads as "at most 5 % of requests may have a TTFT over 500 ms".
The bad fraction comes from the histogram: 1 - rate(bucket{le=B}) / rate(count), where B is the
threshold itself on a server that has it as a bound (slotune starts vLLM with the SLO's thresholds
as bounds, `slotune.slo_buckets`), else, per target (`or`), the smallest default bound *at or above*
the threshold (`pick_bucket`): lenient, counting as slow only requests beyond B, which `slotune
rules` says on stderr and in the file's header, with the flag that would make the threshold a bound. The bounds are
vLLM 0.32's (see `BUCKETS`; a unit test checks them against a real /metrics capture). The
error-rate SLO counts the finishes `slotune.slo.ERROR_FINISH_REASONS` names (`error`; aborts are
client cancellations, not server errors) against all finished requests, as the sidecar does.

vLLM's metric names and default bucket bounds come from `slotune.metric_names` (the core floor), the
same table the collectors parse by.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

from slotune.errors import ConfigError
from slotune.metric_names import default_buckets, name_of
from slotune.slo import DEFAULT_SLO, RATIO_METRICS, SloSpec, SloTarget, error_reason_selector
from slotune.slo_buckets import bound_advice

AGG = "job, instance, model_name"
LEVEL = "instance"
RUNBOOK_BASE = "https://github.com/slotune/slotune/blob/main/docs/stack.md"

# Latency histograms: SLI short name -> vLLM histogram, and its default bounds (vLLM 0.32).
HISTOGRAMS: dict[str, str] = {k: name_of(k) for k in ("ttft", "tpot", "itl", "e2e", "queue")}
BUCKETS: dict[str, tuple[float, ...]] = {k: default_buckets(k) for k in HISTOGRAMS}
QUANTILES = (0.5, 0.95, 0.99)

# Static alert thresholds: the one config block (like a monitoring mixin's config.libsonnet).
THRESHOLDS = {
    "kv_cache_usage": 0.90,  # fraction of the KV cache in use
    "kv_cache_for": "5m",
    "preemptions_per_second": 0.0,  # any sustained preemption means the KV cache is too small
    "preemptions_for": "10m",
    "spec_acceptance_min": 0.30,  # accepted / proposed draft tokens
    "spec_drafts_min_per_second": 1.0,  # ignore idle servers
    "spec_acceptance_for": "15m",
    "target_down_for": "1m",
    "sidecar_down_for": "2m",
}


@dataclass(frozen=True)
class BurnWindow:
    """One row of the SRE workbook's multi-window table: alert when the bad ratio over both `long`
    and `short` exceeds `factor` times the error budget, for `for_`."""

    severity: str
    long: str
    short: str
    factor: float
    for_: str


# Google SRE workbook, "Alerting on SLOs", recommended parameters for a 30-day budget.
SRE_WINDOWS: tuple[BurnWindow, ...] = (
    BurnWindow("page", "1h", "5m", 14.4, "2m"),
    BurnWindow("page", "6h", "30m", 6.0, "15m"),
    BurnWindow("ticket", "1d", "2h", 3.0, "1h"),
    BurnWindow("ticket", "3d", "6h", 1.0, "3h"),
)


# ---- series names (dashboards import these; one name per SLI) ----

def latency_quantile(sli: str, quantile: float, window: str = "5m") -> str:
    """`instance:vllm_ttft_seconds:p95_rate5m`."""
    return f"{LEVEL}:vllm_{sli}_seconds:p{round(quantile * 100)}_rate{window}"


def latency_mean(sli: str, window: str = "5m") -> str:
    return f"{LEVEL}:vllm_{sli}_seconds:mean_rate{window}"


SLO_ERRORS = f"{LEVEL}:vllm_slo_errors:ratio_rate"  # + window, label slo
SLO_BUDGET = "slo:vllm_error_budget:ratio"  # label slo: 1 - objective
SLO_THRESHOLD = "slo:vllm_latency_threshold:seconds"  # label slo: the per-request threshold

SERIES = {
    "requests_rate": f"{LEVEL}:vllm_requests:rate5m",
    "error_ratio": f"{LEVEL}:vllm_request_errors:ratio_rate5m",
    "prompt_tokens_rate": f"{LEVEL}:vllm_prompt_tokens:rate5m",
    "generation_tokens_rate": f"{LEVEL}:vllm_generation_tokens:rate5m",
    "kv_cache_usage": f"{LEVEL}:vllm_kv_cache_usage:ratio",
    "requests_running": f"{LEVEL}:vllm_requests_running:sum",
    "requests_waiting": f"{LEVEL}:vllm_requests_waiting:sum",
    "preemptions_rate": f"{LEVEL}:vllm_preemptions:rate5m",
    "prefix_cache_hit_ratio": f"{LEVEL}:vllm_prefix_cache_hits:ratio_rate5m",
    "iteration_tokens_mean": f"{LEVEL}:vllm_iteration_tokens:mean_rate5m",
    "iteration_tokens_p99": f"{LEVEL}:vllm_iteration_tokens:p99_rate5m",
    "spec_acceptance_ratio": f"{LEVEL}:vllm_spec_decode_acceptance:ratio_rate5m",
    "spec_acceptance_length": f"{LEVEL}:vllm_spec_decode_acceptance_length:mean_rate5m",
    "spec_acceptance_per_position": f"{LEVEL}:vllm_spec_decode_acceptance_per_position:ratio_rate5m",
    "spec_drafts_rate": f"{LEVEL}:vllm_spec_decode_drafts:rate5m",
}


def _sum(expr: str, by: str = AGG) -> str:
    return f"sum by ({by}) ({expr})"


def _ratio(num: str, den: str) -> str:
    return f"{num}\n/\n{den}"


def recording_rules() -> list[dict[str, object]]:
    rules: list[dict[str, object]] = []
    for sli, hist in HISTOGRAMS.items():
        for q in QUANTILES:
            rules.append({"record": latency_quantile(sli, q),
                          "expr": f"histogram_quantile({q}, {_sum(f'rate({hist}_bucket[5m])', AGG + ', le')})"})
        rules.append({"record": latency_mean(sli),
                      "expr": _ratio(_sum(f"rate({hist}_sum[5m])"), _sum(f"rate({hist}_count[5m])"))})

    def rate(metric: str, sel: str = "") -> str:
        return _sum(f"rate({metric}{sel}[5m])")

    s = SERIES
    iteration = name_of("iteration_tokens")
    rules += [
        {"record": s["requests_rate"], "expr": rate(name_of("request_success"))},
        {"record": s["error_ratio"],
         "expr": _ratio(rate(name_of("request_success"), "{" + error_reason_selector() + "}"),
                        rate(name_of("request_success")))},
        {"record": s["prompt_tokens_rate"], "expr": rate(name_of("prompt_tokens"))},
        {"record": s["generation_tokens_rate"], "expr": rate(name_of("generation_tokens"))},
        # Engines have separate KV caches: the fullest one is the one that preempts.
        {"record": s["kv_cache_usage"], "expr": f"max by ({AGG}) ({name_of('kv_cache_usage')})"},
        {"record": s["requests_running"], "expr": _sum(name_of("requests_running"))},
        {"record": s["requests_waiting"], "expr": _sum(name_of("requests_waiting"))},
        {"record": s["preemptions_rate"], "expr": rate(name_of("preemptions"))},
        {"record": s["prefix_cache_hit_ratio"],
         "expr": _ratio(rate(name_of("prefix_cache_hits")), rate(name_of("prefix_cache_queries")))},
        {"record": s["iteration_tokens_mean"],
         "expr": _ratio(rate(f"{iteration}_sum"), rate(f"{iteration}_count"))},
        {"record": s["iteration_tokens_p99"],
         "expr": f"histogram_quantile(0.99, {_sum(f'rate({iteration}_bucket[5m])', AGG + ', le')})"},
        {"record": s["spec_drafts_rate"], "expr": rate(name_of("spec_decode_drafts"))},
        {"record": s["spec_acceptance_ratio"],
         "expr": _ratio(rate(name_of("spec_decode_accepted_tokens")),
                        rate(name_of("spec_decode_draft_tokens")))},
        # Mean tokens per verification step: the bonus token plus the accepted drafts.
        {"record": s["spec_acceptance_length"],
         "expr": "1 + (\n" + _ratio(rate(name_of("spec_decode_accepted_tokens")),
                                    rate(name_of("spec_decode_drafts"))) + "\n)"},
        {"record": s["spec_acceptance_per_position"],
         "expr": _ratio(_sum(f"rate({name_of('spec_decode_accepted_per_pos')}[5m])", AGG + ", position"),
                        "ignoring (position) group_left\n" + rate(name_of("spec_decode_drafts")))},
    ]
    return [{"name": "vllm-sli.rules", "rules": rules}]


# ---- SLO rules ----

def pick_bucket(sli: str, threshold: float) -> float:
    """The smallest bucket bound at or above `threshold` (see the module docstring)."""
    for bound in BUCKETS[sli]:
        if bound >= threshold - 1e-12:
            return bound
    raise ConfigError(
        f"no {sli} histogram bucket at or above {threshold:g}s (largest is {BUCKETS[sli][-1]:g}s): "
        "Prometheus cannot count requests over that threshold"
    )


def le_matcher(bound: float) -> str:
    """A regex for the `le` label that matches both `2` and `2.0` (exporters format floats
    differently), e.g. `2(\\.0+)?` or `0\\.50*`."""
    if float(bound).is_integer():
        return f"{int(bound)}(\\\\.0+)?"
    return re.escape(repr(float(bound))).replace("\\", "\\\\") + "0*"


def error_budget(target: SloTarget) -> float | None:
    """The allowed bad fraction: 1 - quantile for latency percentiles, the threshold for ratios;
    None where no fraction-of-requests reading exists (means)."""
    if target.metric in RATIO_METRICS:
        return target.threshold
    if target.quantile is None or target.metric not in HISTOGRAMS:
        return None
    return round(1 - target.quantile, 6)


def bad_ratio_expr(target: SloTarget, window: str) -> str:
    if target.metric == "error_rate":
        return _ratio(_sum(f"rate({name_of('request_success')}{{{error_reason_selector()}}}[{window}])"),
                      _sum(f"rate({name_of('request_success')}[{window}])"))
    hist = HISTOGRAMS[target.metric]
    bound = pick_bucket(target.metric, target.threshold)
    fast = _sum(f'rate({hist}_bucket{{le=~"{le_matcher(target.threshold)}"}}[{window}])')
    if abs(bound - target.threshold) > 1e-12:
        # Exact where the server has the threshold as a bound (slotune starts vLLM with it, see
        # slotune.slo_buckets); elsewhere the next default bound at or above, per target (`or`).
        fast = f"(\n{fast}\nor\n" + _sum(f'rate({hist}_bucket{{le=~"{le_matcher(bound)}"}}[{window}])') + "\n)"
    return "1 - (\n" + _ratio(fast, _sum(f"rate({hist}_count[{window}])")) + "\n)"


def _dur_key(d: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return float(d[:-1]) * units[d[-1]]


def slo_rules(spec: SloSpec, windows: tuple[BurnWindow, ...] = SRE_WINDOWS) -> tuple[list[dict], list[str]]:
    """Rule groups for `spec`, and notes on targets or tiers that cannot be alerted on."""
    notes: list[str] = []
    record: list[dict[str, object]] = []
    alerts: list[dict[str, object]] = []
    spans = sorted({w for bw in windows for w in (bw.long, bw.short)}, key=_dur_key)
    for t in spec.targets:
        budget = error_budget(t)
        if budget is None:
            notes.append(f"{t}: a mean has no per-request reading; no burn-rate alert")
            continue
        if budget <= 0:
            notes.append(f"{t}: a zero error budget cannot burn at a rate; no burn-rate alert")
            continue
        labels = {"slo": t.key}
        record.append({"record": SLO_BUDGET, "expr": f"vector({budget:g})", "labels": labels})
        if t.metric not in RATIO_METRICS:
            bound = pick_bucket(t.metric, t.threshold)
            record.append({"record": SLO_THRESHOLD, "expr": f"vector({t.threshold:g})", "labels": labels})
            if abs(bound - t.threshold) > 1e-12:
                notes.append(f"{t}: {t.threshold:g}s is not a bound of vLLM's default buckets: a server without it "
                             f"is counted against the {bound:g}s bound (lenient); make it one: {bound_advice(SloSpec((t,)))}")
        for span in spans:
            record.append({"record": SLO_ERRORS + span, "expr": bad_ratio_expr(t, span), "labels": labels})
        for bw in windows:
            limit = bw.factor * budget
            if limit >= 1:
                notes.append(f"{t}: the {bw.long}/{bw.short} tier ({bw.factor:g}x) would need more than "
                             "100 % bad requests; omitted")
                continue
            sel = f'{{slo="{t.key}"}}'
            alerts.append({
                "alert": "VllmSloErrorBudgetBurn",
                "expr": (f"{SLO_ERRORS}{bw.long}{sel} > ({bw.factor:g} * {budget:g})\nand\n"
                         f"{SLO_ERRORS}{bw.short}{sel} > ({bw.factor:g} * {budget:g})"),
                "for": bw.for_,
                "labels": {"severity": bw.severity, "slo": t.key, "long_window": bw.long,
                           "short_window": bw.short},
                "annotations": {
                    "summary": f"{{{{ $labels.model_name }}}} burns its {t} error budget "
                               f"{bw.factor:g}x too fast",
                    "description": (
                        f"On {{{{ $labels.instance }}}}, {{{{ $value | humanizePercentage }}}} of requests "
                        f"missed {t} over the last {bw.long} (and over {bw.short}); the budget is "
                        f"{budget:.4g} of requests, so at {bw.factor:g}x it lasts "
                        f"{30 / bw.factor:.3g} days. slotune's sidecar attaches a diagnosis."),
                    "runbook_url": f"{RUNBOOK_BASE}#vllmsloerrorbudgetburn",
                },
            })
    return [{"name": "slo-sli.rules", "rules": record}, {"name": "slo-burn.alerts", "rules": alerts}], notes


# ---- static alerts ----

def _alert(name: str, expr: str, for_: str, severity: str, summary: str, description: str) -> dict:
    return {"alert": name, "expr": expr, "for": for_, "labels": {"severity": severity},
            "annotations": {"summary": summary, "description": description,
                            "runbook_url": f"{RUNBOOK_BASE}#{name.lower()}"}}


def static_alerts() -> list[dict[str, object]]:
    th, s = THRESHOLDS, SERIES
    where = "{{ $labels.model_name }} on {{ $labels.instance }}"
    rules = [
        _alert("VllmKvCachePressure", f"{s['kv_cache_usage']} > {th['kv_cache_usage']:g}", str(th["kv_cache_for"]),
               "ticket", f"{where}: KV cache {{{{ $value | humanizePercentage }}}} full",
               "The KV cache has stayed above the pressure threshold; new requests wait and running ones "
               "get preempted. See the engine dashboard; slotune's kv_cache_pressure playbook suggests "
               "flag changes."),
        _alert("VllmPreemptions", f"{s['preemptions_rate']} > {th['preemptions_per_second']:g}",
               str(th["preemptions_for"]), "ticket", f"{where}: requests are being preempted",
               "vLLM preempted {{ $value | humanize }} requests/s over 5m, recomputing their KV cache."),
        _alert("VllmSpecDecodeLowAcceptance",
               f"{s['spec_acceptance_ratio']} < {th['spec_acceptance_min']:g}\nand\n"
               f"{s['spec_drafts_rate']} > {th['spec_drafts_min_per_second']:g}",
               str(th["spec_acceptance_for"]), "ticket",
               f"{where}: speculative decoding accepts {{{{ $value | humanizePercentage }}}} of drafts",
               "Few draft tokens are accepted, so speculation costs compute without speeding decoding up."),
        _alert("VllmTargetDown", 'up{job="vllm"} == 0', str(th["target_down_for"]), "page",
               "vLLM target {{ $labels.instance }} is down",
               "Prometheus cannot scrape vLLM's /metrics: the server is down or unreachable."),
        _alert("SlotuneSidecarDown", 'up{job="slotune"} == 0', str(th["sidecar_down_for"]), "ticket",
               "slotune sidecar {{ $labels.instance }} is down",
               "Prometheus cannot scrape the slotune sidecar: no diagnoses or notifications until it is back."),
        _alert("SlotuneTargetUnreachable", "slotune_target_up == 0", str(th["target_down_for"]), "page",
               "slotune cannot reach {{ $labels.target }}",
               "The sidecar's scrapes of its vLLM target fail (see slotune_scrape_errors_total)."),
        _alert("SlotuneNotificationsDeadLettered", "slotune_outbox_dead_letters > 0", "1m", "ticket",
               "slotune gave up delivering {{ $value }} notification(s) to {{ $labels.receiver }}",
               "Notifications failed outbox.max_attempts times and are kept as dead letters "
               "(GET /api/v1/outbox/dead); they are retried when the receiver answers again, or on "
               "POST /api/v1/outbox/retry."),
    ]
    return [{"name": "vllm-engine.alerts", "rules": rules}]


# ---- rendering ----

class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: object) -> bool:  # shared label dicts: write them out, no &id001
        return True


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)

_HEADER = "# Generated by `slotune rules` (slotune/rules.py); do not edit by hand.\n"


def _render(groups: list[dict], comments: list[str]) -> str:
    head = _HEADER + "".join(f"# {c}\n" for c in comments)
    return head + yaml.dump({"groups": groups}, Dumper=_Dumper, sort_keys=False, width=120)


def render_slo(spec: SloSpec | str = DEFAULT_SLO, windows: tuple[BurnWindow, ...] = SRE_WINDOWS) -> str:
    spec = SloSpec.parse(spec) if isinstance(spec, str) else spec
    groups, notes = slo_rules(spec, windows)
    table = ", ".join(f"{w.long}/{w.short} {w.factor:g}x {w.severity} for {w.for_}" for w in windows)
    return _render(groups, [f"SLO: {spec}", f"Burn windows: {table}", *notes])


def render_recording() -> str:
    return _render(recording_rules(), ["Recording rules: one definition of each SLI."])


def render_alerts() -> str:
    return _render(static_alerts(), ["Static engine alerts; thresholds in slotune.rules.THRESHOLDS."])


# File name in deploy/prometheus/rules/ -> renderer (the SLO file for the default spec).
RULE_FILES = {"vllm-recording.yml": render_recording, "vllm-alerts.yml": render_alerts, "slo.yml": render_slo}
