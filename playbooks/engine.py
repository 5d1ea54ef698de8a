"""The evaluator: facts per window, each playbook's condition over the last `for` windows, findings
with evidence, cause and remedies (config deltas the tuner can try first).

    diagnose(windows, slo=..., server_config=..., startup_failure=..., client=...) -> Diagnosis

`windows` are consecutive windows of one target, oldest first. A playbook fires when its condition
holds in each of its last `for` windows; its evidence is read from the newest. Findings that
contradict each other are then settled by the table in `relations.yaml` (one excluded, with a note
saying why, or one qualified). A start-up failure
is one decisive event: it is judged alone and `for` does not apply. `client` (the load generator's
figures, `LoadFigures`) belongs to the newest window.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from slotune.collectors.snapshot import UNKNOWN, Snapshot
from slotune.loadgen.figures import LoadFigures
from slotune.playbooks import changes
from slotune.playbooks.facts import (
    FACTS,
    PERCENT_FACTS,
    FactBounds,
    Facts,
    add_history,
    backend_basis,
    build_facts,
    fact_bounds,
    resolution_notes,
    slo_thresholds,
    wide,
)
from slotune.playbooks.model import SEVERITIES, Check, Group, Playbook, Remedy, load_playbooks, sample_floor
from slotune.playbooks.relations import decide as relate
from slotune.playbooks.remedies import COMPUTE
from slotune.server import StartResult
from slotune.slo import DEFAULT_SLO, SloResult, SloSpec
from slotune.vllm_config import VllmConfig

# `slo_missed`: no playbook fired, yet a target is surely missed in the newest window (its figure, or
# the whole bucket it was interpolated in, is over the threshold): the SLO fails for a reason no
# playbook names, which is never "healthy". `findings` takes precedence (they say why).
Status = Literal["healthy", "findings", "slo_missed", "insufficient_data"]

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
}


@dataclass(frozen=True)
class Evidence:
    field: str
    value: float | None
    op: str | None  # None for a fact cited as context, not compared
    threshold: float | None
    description: str
    # (lower, upper] of the histogram bucket `value` was interpolated in (None: an exact figure).
    # JSON: [lower, upper], upper null for +Inf; `value` stays the number.
    bounds: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.bounds is not None:
            lo, hi = self.bounds
            out["bounds"] = [lo, None if math.isinf(hi) else hi]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Evidence:
        """The inverse of `to_dict()`."""
        b = d.get("bounds")
        bounds = (float(b[0]), math.inf if b[1] is None else float(b[1])) if b is not None else None
        return cls(d["field"], d.get("value"), d.get("op"), d.get("threshold"), d.get("description", ""), bounds)


@dataclass(frozen=True)
class RemedyOut:
    action: str
    why: str
    config_delta: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RemedyOut:
        """The inverse of `to_dict()`; a key it lacks reads empty."""
        return cls(str(d.get("action") or ""), str(d.get("why") or ""), dict(d.get("config_delta") or {}))


@dataclass(frozen=True)
class Finding:
    playbook: str
    title: str
    severity: str
    summary: str
    cause: str | None
    evidence: tuple[Evidence, ...]
    window: dict[str, float]
    remedies: tuple[RemedyOut, ...]
    windows: int = 1  # consecutive windows the condition held (the rule's `for`)

    def to_dict(self) -> dict[str, Any]:
        return {
            "playbook": self.playbook, "title": self.title, "severity": self.severity, "summary": self.summary,
            "cause": self.cause, "evidence": [e.to_dict() for e in self.evidence], "window": dict(self.window),
            "windows": self.windows, "remedies": [r.to_dict() for r in self.remedies],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Finding:
        """The inverse of `to_dict()` (a stored finding read back). Raises `KeyError` without a playbook."""
        return cls(
            playbook=d["playbook"], title=d.get("title") or "", severity=d.get("severity") or "",
            summary=d.get("summary") or "", cause=d.get("cause"),
            evidence=tuple(Evidence.from_dict(e) for e in d.get("evidence") or ()), window=dict(d.get("window") or {}),
            remedies=tuple(RemedyOut.from_dict(r) for r in d.get("remedies") or () if isinstance(r, Mapping)),
            windows=int(d.get("windows") or 1),
        )


@dataclass(frozen=True)
class Diagnosis:
    status: Status
    findings: tuple[Finding, ...]
    window: dict[str, float]
    target: str | None = None
    facts: Facts = field(default_factory=dict)  # the newest window's, for display and debugging
    notes: tuple[str, ...] = ()
    # Each SLO target checked on the newest window's server figures, as `slotune collect --slo` does
    # (met | missed | no data | inconclusive at this resolution); empty when there was no window.
    slo: tuple[SloResult, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "target": self.target, "window": dict(self.window),
            "findings": [f.to_dict() for f in self.findings], "notes": list(self.notes),
            "facts": {k: v for k, v in self.facts.items() if v is not None},
            "slo": [r.to_dict() for r in self.slo],
        }


def _window(snaps: Sequence[Snapshot]) -> dict[str, float]:
    if not snaps:
        return {}
    start, end = snaps[0].window_start, snaps[-1].window_end
    return {"start": start, "end": end, "seconds": max(end - start, 0.0)}


def _threshold(t: float | str, params: Mapping[str, float], slo: Mapping[str, float]) -> float | None:
    if isinstance(t, (int, float)):
        return float(t)
    scope, _, name = t.partition(".")
    return (params if scope == "params" else slo).get(name)


def evaluate(cond: Group, facts: Facts, params: Mapping[str, float],
             slo: Mapping[str, float]) -> tuple[bool, list[Evidence]]:
    """Whether a condition holds, with the checks that held. An unmeasured fact makes its check
    false: a rule never fires on missing data."""
    held: list[Evidence] = []
    results = []
    for item in cond.items:
        if isinstance(item, Group):
            ok, ev = evaluate(item, facts, params, slo)
        else:
            ok, ev = _check(item, facts, params, slo)
        results.append(ok)
        if ok:
            held += ev
    return (all(results) if cond.all is not None else any(results)), held


def _check(c: Check, facts: Facts, params: Mapping[str, float], slo: Mapping[str, float]) -> tuple[bool, list[Evidence]]:
    value, thr = facts.get(c.field), _threshold(c.threshold, params, slo)
    if value is None or thr is None or (isinstance(value, float) and math.isnan(value)):
        return False, []
    ok = OPS[c.op](value, thr)
    return ok, [Evidence(c.field, value, c.op, thr, c.description or FACTS[c.field])]


class _Fmt(dict):  # type: ignore[type-arg]
    """Facts for summary templates: numbers shortened, unknown names and missing values shown as "unknown"."""

    def __missing__(self, key: str) -> str:
        return UNKNOWN


def _fmt(v: float | None, percent: bool = False) -> str:
    if v is None:
        return UNKNOWN
    if percent:
        text = f"{v:.0%}" if 0.01 <= v <= 0.99 or v in (0, 1) else f"{v:.1%}"
        # a share is never rounded onto a whole or onto nothing: 99.96 % is not "100 %"
        if v < 1 and text.startswith("100"):
            return "> 99.9%"
        if v > 0 and text.startswith("0.0"):
            return "< 0.1%"
        return text
    return f"{v:.0f}" if abs(v) >= 100 or float(v).is_integer() else f"{v:.3g}"


def _fmt_bounds(lower: float, upper: float, percent: bool = False) -> str:
    """A figure known only to lie in (lower, upper]: `1000-2000`, `≤ 20` (the first bucket), `> 2000`."""
    if math.isinf(upper):
        return f"> {_fmt(lower, percent)}"
    if lower <= 0:
        return f"≤ {_fmt(upper, percent)}"
    return f"{_fmt(lower, percent)}-{_fmt(upper, percent)}"


def figure_text(value: float | None, bounds: Sequence[float | None] | None, percent: bool = False) -> str:
    """A cited figure as a reader should take it: its bucket's bounds when the figure was interpolated
    in a wide bucket (`bounds` as in the JSON: `[lower, upper]`, upper None for +Inf), else the figure."""
    if value is not None and bounds is not None and len(bounds) == 2 and bounds[0] is not None:
        b = (float(bounds[0]), math.inf if bounds[1] is None else float(bounds[1]))
        if wide(b):
            return _fmt_bounds(*b, percent=percent)
    return _fmt(value, percent)


RANGE_NOTE = ("a figure printed as a range (1000-2000, ≤ 20, > 2000) is a quantile from vLLM's histogram: "
              "it lies in that bucket, and interpolation inside the bucket cannot place it")


def _render(template: str, facts: Facts, thresholds: Mapping[str, float], bounds: FactBounds | None = None,
            ranged: set[str] | None = None) -> str:
    """Fill a summary template: facts by name, SLO targets as `slo_<name>` (seconds). A fact that is
    a quantile interpolated in a wide histogram bucket (`bounds`) is printed as the bucket's bounds,
    never as the interpolated figure; its name is added to `ranged` when the template cites it."""
    values = {k: _fmt(v, k in PERCENT_FACTS) for k, v in facts.items()}
    for k, b in (bounds or {}).items():
        if facts.get(k) is not None and wide(b):
            values[k] = _fmt_bounds(*b, percent=k in PERCENT_FACTS)
            if ranged is not None and "{" + k + "}" in template:
                ranged.add(k)
    values.update({f"slo_{k}": _fmt(v) for k, v in thresholds.items()})
    try:
        return template.format_map(_Fmt(values))
    except (ValueError, IndexError, AttributeError, KeyError):
        return template


def _remedies(pb: Playbook, cause: str | None, facts: Facts, config: VllmConfig | None,
              slo: Mapping[str, float], bounds: FactBounds | None = None,
              ranged: set[str] | None = None) -> tuple[RemedyOut, ...]:
    out = []
    seen: list[dict[str, Any]] = []
    for r in pb.remedies:
        if r.causes is not None and cause not in r.causes:
            continue
        if r.when is not None and not evaluate(r.when, facts, pb.params, slo)[0]:
            continue
        delta = _delta(r, facts, config)
        if delta is None:  # a computed change that does not apply here (nothing to lower, ...)
            continue
        if delta and delta in seen:
            continue
        seen.append(delta)
        out.append(RemedyOut(r.action, _render(r.why, facts, slo, bounds, ranged), delta))
    return tuple(out)


def _delta(r: Remedy, facts: Facts, config: VllmConfig | None) -> dict[str, Any] | None:
    delta = dict(r.set)
    if r.compute is not None:
        computed = COMPUTE[r.compute](facts, config)
        if computed is None:
            return None
        delta.update(computed)
    # A change to what the server already runs with (configured, or in effect by default) is no remedy.
    if delta and all(changes.same(changes.current(k, facts, config), v) for k, v in delta.items()):
        return None
    return delta


def _judge(pb: Playbook, per_window: Sequence[Facts], slo: Mapping[str, float]) -> tuple[bool, list[Evidence]]:
    need = 1 if len(per_window) == 1 and per_window[0].get("startup_failed") else pb.for_
    if len(per_window) < need:
        return False, []
    evidence: list[Evidence] = []
    for facts in per_window[-need:]:
        ok, evidence = evaluate(pb.when, facts, pb.params, slo)
        if not ok:
            return False, []
    # the newest window's; a condition written under two branches of the rule is cited once
    return True, list(dict.fromkeys(evidence))


def diagnose(windows: Sequence[Snapshot], *, slo: SloSpec | None = None, server_config: VllmConfig | None = None,
             startup_failure: StartResult | None = None, client: LoadFigures | None = None,
             playbooks: Sequence[Playbook] | None = None, backend: str | None = None,
             min_requests: float | None = None) -> Diagnosis:
    """Judge the windows (oldest first) of one target against the playbooks (built-in by default).
    `backend`: the target's vLLM backend as the user states it ("cpu" | "gpu"; None: assumed, and a
    note says from what, see `facts.backend_basis`). `min_requests`: the least finished requests a
    window needs for a finding to propose a flag change (None: `sample.yaml`'s; the tuner passes its own)."""
    snaps = list(windows)
    failed = startup_failure is not None and not startup_failure.ok
    if failed:
        per_window = [build_facts(None, slo=slo, config=server_config, startup_failure=startup_failure,
                                  backend=backend)]
    elif snaps:
        per_window = [build_facts(s, slo=slo, config=server_config, client=client if i == len(snaps) - 1 else None,
                                  backend=backend)
                      for i, s in enumerate(snaps)]
    else:
        return Diagnosis("insufficient_data", (), {}, notes=("no window to judge",))
    spans = [{} for _ in per_window] if failed else [_window([s]) for s in snaps]
    bounds = fact_bounds(snaps[-1], per_window[-1], slo) if snaps and not failed else None
    diagnosis = judge(per_window, spans, slo=slo, server_config=server_config, playbooks=playbooks,
                      target=snaps[-1].target if snaps else None, bounds=bounds, min_requests=min_requests)
    notes = list(diagnosis.notes)
    assumed = backend_basis(snaps[-1] if snaps and not failed else None, backend)[1]
    if assumed is not None and diagnosis.findings:  # it decides defaults and remedies: say it was assumed
        notes.append(assumed)
    status, results = diagnosis.status, ()
    if snaps and not failed:
        notes += resolution_notes(snaps[-1], slo)  # targets the buckets cannot decide are said, not guessed
        results = tuple((slo or SloSpec.parse(DEFAULT_SLO)).evaluate(snaps[-1]))
        missed = [r for r in results if r.met is False]  # inconclusive ones are None, never False
        if missed and status == "healthy":
            status = "slo_missed"
            notes.append("SLO missed with no playbook naming a cause: " + ", ".join(str(r.target) for r in missed)
                         + " (the facts and a longer window under load may show one)")
    if snaps and not per_window[-1].get("nvml_available") and not failed:
        notes.append("NVML unavailable: utilization judged on engine evidence (batch occupancy, tokens per step)")
    return replace(diagnosis, status=status, notes=tuple(notes), slo=results)


def judge(per_window: Sequence[Facts], spans: Sequence[dict[str, float]] | None = None, *,
          slo: SloSpec | None = None, server_config: VllmConfig | None = None,
          playbooks: Sequence[Playbook] | None = None, target: str | None = None,
          bounds: FactBounds | None = None, min_requests: float | None = None) -> Diagnosis:
    """The evaluator proper, on facts (one dict per window, oldest first): what `diagnose` runs after
    building the facts, and what rule tests call with hand-written facts. `bounds`: the newest
    window's bucket bounds of its estimated facts (`facts.fact_bounds`); evidence carries them and
    summaries print a wide one as its bounds. `min_requests`: see `diagnose`."""
    bounds = bounds or {}
    floor = sample_floor().min_requests if min_requests is None else min_requests
    ranged: set[str] = set()
    books = list(playbooks) if playbooks is not None else load_playbooks()
    thresholds = slo_thresholds(slo)
    if not per_window:
        return Diagnosis("insufficient_data", (), {}, target, notes=("no window to judge",))
    spans = list(spans) if spans is not None else [{} for _ in per_window]
    per_window = [dict(f) for f in per_window]
    add_history(per_window)
    newest = per_window[-1]
    failed = bool(newest.get("startup_failed"))
    notes: list[str] = []
    if server_config is None:
        notes.append("server flags unknown: vLLM's defaults assumed for max_num_seqs/max_num_batched_tokens")
    findings = []
    for pb in books:
        fired, evidence = _judge(pb, per_window, thresholds)
        if not fired:
            continue
        evidence = [replace(e, bounds=bounds.get(e.field)) for e in evidence]
        cause = next((c for c in pb.causes if c.when is None or evaluate(c.when, newest, pb.params, thresholds)[0]),
                     None)
        cited = {e.field for e in evidence}
        evidence += [Evidence(name, newest.get(name), None, None, FACTS[name], bounds.get(name))
                     for name in pb.evidence if name not in cited and newest.get(name) is not None]
        summary = _render(pb.summary, newest, thresholds, bounds, ranged)
        if cause is not None:
            summary += " " + _render(cause.summary, newest, thresholds, bounds, ranged)
        n = 1 if failed else pb.for_
        remedies = _remedies(pb, cause.id if cause else None, newest, server_config, thresholds, bounds, ranged)
        short = None if failed else _short_sample(pb, newest, thresholds, floor)
        if short is not None and any(r.config_delta for r in remedies):
            remedies = tuple(r for r in remedies if not r.config_delta)
            summary += " " + short
        findings.append(Finding(
            playbook=pb.id, title=pb.title, severity=pb.severity, summary=summary,
            cause=cause.id if cause else None, evidence=tuple(evidence), window=_merge(spans[-n:]),
            remedies=remedies, windows=n,
        ))
    findings, excluded = _relate(findings)
    notes += excluded
    findings = _settle(findings, newest, server_config)
    if ranged and findings:
        notes.append(RANGE_NOTE)
    findings.sort(key=lambda f: SEVERITIES.index(f.severity))
    if findings:
        status: Status = "findings"
    elif not failed and all(not (f.get("requests_finished") or 0) for f in per_window):
        status = "insufficient_data"
        notes.append("no request finished in the window: nothing to judge latency or load on")
    else:
        status = "healthy"
    return Diagnosis(status, tuple(findings), _merge(spans), target, newest, tuple(notes))


def _short_sample(pb: Playbook, facts: Facts, slo: Mapping[str, float], floor: float) -> str | None:
    """Why the window is too small to change a flag on (None: it is not): fewer finished requests
    than the floor (`sample.yaml`, or the caller's), or the rule's own `sample` not met."""
    done = facts.get("requests_finished")
    if done is not None and done < floor:
        return (f"Too few requests to change a flag on: {_fmt(done)} finished in the window (at least "
                f"{_fmt(floor)} needed); its flag changes are held back until a longer window confirms it.")
    if pb.sample is not None and not evaluate(pb.sample, facts, pb.params, slo)[0]:
        have = ", ".join(dict.fromkeys(f"{c.field} {_fmt(facts.get(c.field))}" for c in pb.sample.checks()))
        return (f"Too small a sample to change a flag on: the window has {have}, the rule needs "
                f"{_cond_text(pb.sample, pb.params, slo)}; its flag changes are held back until a longer window "
                "confirms it.")
    return None


def _cond_text(g: Group, params: Mapping[str, float], slo: Mapping[str, float]) -> str:
    """`a >= 100 or (b == 0 and c >= 64)`: a condition as a reader takes it."""
    parts = [f"({_cond_text(i, params, slo)})" if isinstance(i, Group) else
             f"{i.field} {i.op} {_fmt(_threshold(i.threshold, params, slo))}" for i in g.items]
    return (" and " if g.all is not None else " or ").join(parts)


def _settle(findings: list[Finding], facts: Facts, config: VllmConfig | None) -> list[Finding]:
    """No two findings' remedies pull one flag opposite ways: the more severe finding's (on a tie,
    the one judged first) stays; the other's is dropped, and its summary says which it gave way to."""
    order = sorted(range(len(findings)), key=lambda i: SEVERITIES.index(findings[i].severity))
    kept: list[tuple[str, RemedyOut]] = []  # (playbook, remedy) of the findings settled so far
    out = list(findings)
    for i in order:
        f = out[i]
        mine: list[RemedyOut] = []
        said: list[str] = []
        for r in f.remedies:
            clash = next(((p, k) for p, k in kept
                          if any(flag in k.config_delta and changes.opposed(flag, v, k.config_delta[flag], facts, config)
                                 for flag, v in r.config_delta.items())), None)
            if clash is None:
                mine.append(r)
            else:
                said.append(f"Its remedy \"{r.action}\" ({changes.describe(r.config_delta)}) is left out: it "
                            f"conflicts with {clash[0]}'s remedy \"{clash[1].action}\" "
                            f"({changes.describe(clash[1].config_delta)}).")
        kept += [(f.playbook, r) for r in mine]
        if said:
            out[i] = replace(f, remedies=tuple(mine), summary=" ".join([f.summary, *said]))
    return out


def _relate(findings: list[Finding]) -> tuple[list[Finding], list[str]]:
    """Apply the relations table: drop the findings it excludes (a note each), extend the summaries
    of those it qualifies."""
    kept: list[Finding] = []
    notes: list[str] = []
    for f, verdict in zip(findings, relate([(f.playbook, f.cause) for f in findings]), strict=True):
        if verdict is None:
            kept.append(f)
        elif verdict[0] == "exclude":
            notes.append(verdict[1])
        else:
            kept.append(replace(f, summary=f"{f.summary} {verdict[1]}"))
    return kept, notes


def _merge(spans: Sequence[dict[str, float]]) -> dict[str, float]:
    spans = [s for s in spans if s]
    if not spans:
        return {}
    start, end = spans[0]["start"], spans[-1]["end"]
    return {"start": start, "end": end, "seconds": max(end - start, 0.0)}
