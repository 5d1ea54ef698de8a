"""The control loop, tick by tick, on real vLLM 0.32 captures with an injected scrape and clock
(no sleeping) and a real SQLite store; the playbooks engine is the real one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select

from slotune.sidecar.loop import NO_STATS, SLO_BURN, TARGET_DOWN
from slotune.sidecar.windows import attainment
from slotune.store import Finding, OutboxMessage, Recommendation, Snapshot
from tests.support.pages import AFTER, SPEC_AFTER, SPEC_UNDER, UNDER, page
from tests.support.paths import FIELD_CASES
from tests.support.sidecar import TARGET, Script, make, ticks


def _bucket_total(text: str, name: str, le: str) -> float:
    """Sum of one bucket over every series, read straight off the exposition text."""
    pat = re.compile(rf'^{re.escape(name)}_bucket\{{[^}}]*le="{re.escape(le)}"[^}}]*\}} (\S+)', re.MULTILINE)
    return sum(float(v) for v in pat.findall(text))


def test_window_burn_matches_the_histogram(tmp_path: Path) -> None:
    sidecar, clock, _ = make(tmp_path, [page(UNDER), page(AFTER)], slo="e2e_p95<=1s,error_rate<=1%")
    first, second = ticks(sidecar, clock, 2)
    assert first.ok and first.window is None  # the first scrape is only the base
    figs = {f.key: f for f in second.window.figures}
    name = "vllm:e2e_request_latency_seconds"
    total = _bucket_total(page(AFTER), name, "+Inf") - _bucket_total(page(UNDER), name, "+Inf")
    good = _bucket_total(page(AFTER), name, "1.0") - _bucket_total(page(UNDER), name, "1.0")
    e2e = figs["e2e_p95"]
    assert total > 0 and e2e.total == total and e2e.bad == total - good
    assert e2e.burn == pytest.approx((total - good) / total / 0.05)
    assert e2e.attainment == pytest.approx(good / total)
    assert figs["error_rate"].bad == 0 and figs["error_rate"].burn == 0
    text = sidecar.metrics_text()[0].decode()
    assert f'slotune_slo_error_budget_burn_ratio{{slo="e2e_p95",target="{TARGET}"}} {e2e.burn}' in text
    with sidecar.store.session() as s:
        row = s.scalars(select(Snapshot)).one()
        assert row.data["slo"][0]["key"] == "e2e_p95" and row.data["requests_finished"] == total


def test_burning_slo_is_a_finding_then_resolves(tmp_path: Path) -> None:
    # Window 1 has 40 slow requests (e2e 1.5 s), window 2 none: the finding opens, then resolves.
    sidecar, clock, _ = make(tmp_path, [page(UNDER), page(AFTER), page(AFTER)], slo="e2e_p95<=1s",
                             receivers=[{"name": "r", "url": "http://127.0.0.1:9/x"}], webhook_secret="unit-test-hmac-key")
    _, opened, closed = ticks(sidecar, clock, 3)
    assert SLO_BURN in opened.new_findings and SLO_BURN in closed.resolved
    with sidecar.store.session() as s:
        burn = s.scalars(select(Finding).where(Finding.playbook == SLO_BURN)).one()
        assert burn.status == "resolved" and burn.severity == "critical"  # 20x: a fast burn
        kinds = [(m.kind, m.payload["event"]["status"]) for m in s.scalars(select(OutboxMessage))
                 if m.payload["event"].get("playbook") == SLO_BURN]
    assert kinds == [("finding", "active"), ("finding", "resolved")]


def test_down_target_is_a_finding_not_a_crash(tmp_path: Path) -> None:
    sidecar, clock, _ = make(tmp_path, [None, None, None, page(UNDER)], down_after=2)
    r1, r2, r3, r4 = ticks(sidecar, clock, 4)
    assert not r1.ok and r1.new_findings == []  # one miss is not yet "down"
    assert r2.new_findings == [TARGET_DOWN] and r3.new_findings == []  # opened once
    assert r4.ok and r4.resolved == [TARGET_DOWN]
    text = sidecar.metrics_text()[0].decode()
    assert f'slotune_scrape_errors_total{{target="{TARGET}"}} 3.0' in text
    assert f'slotune_target_up{{target="{TARGET}"}} 1.0' in text


def test_stat_less_answers_end_an_outage_and_stats_end_the_warning(tmp_path: Path) -> None:
    # down, down (target_down), then answers without stats (up: target_down resolves; no_vllm_stats
    # opens after down_after such answers), then real pages (no_vllm_stats resolves, windows resume).
    help_only = (FIELD_CASES / "07-v0-0.5.4-disable-log-stats-help-only.prom").read_text()
    sidecar, clock, _ = make(tmp_path, [None, None, help_only, help_only, page(UNDER), page(AFTER)], down_after=2)
    r = ticks(sidecar, clock, 6)
    assert [x.ok for x in r] == [False, False, True, True, True, True]
    assert r[1].new_findings == [TARGET_DOWN] and r[2].resolved == [TARGET_DOWN]
    assert r[2].new_findings == [] and r[3].new_findings == [NO_STATS]
    assert "disable-log-stats" in (r[3].error or "")
    assert r[4].resolved == [NO_STATS] and r[4].window is None  # the first page with stats is the base
    assert r[5].window is not None
    text = sidecar.metrics_text()[0].decode()
    assert f'slotune_scrape_errors_total{{target="{TARGET}"}} 2.0' in text  # answers are not failures


def test_an_outage_after_stat_less_answers_resolves_the_warning(tmp_path: Path) -> None:
    help_only = (FIELD_CASES / "07-v0-0.5.4-disable-log-stats-help-only.prom").read_text()
    sidecar, clock, _ = make(tmp_path, [help_only, None, None], down_after=1)
    r = ticks(sidecar, clock, 3)
    assert r[0].new_findings == [NO_STATS]
    assert r[1].new_findings == [TARGET_DOWN] and NO_STATS in r[1].resolved
    assert sidecar.controller.fresh_diagnosis()["status"] == TARGET_DOWN


def test_silenced_finding_comes_back_after_its_silence(tmp_path: Path) -> None:
    sidecar, clock, _ = make(tmp_path, [None], down_after=1)
    ticks(sidecar, clock, 1)
    with sidecar.store.session() as s:
        row = s.scalars(select(Finding)).one()
        row.status = "silenced"
        from datetime import datetime, timezone

        row.silenced_until = datetime.fromtimestamp(clock() + 5, tz=timezone.utc)
    ticks(sidecar, clock, 1)
    with sidecar.store.session() as s:
        assert s.scalars(select(Finding)).one().status == "silenced"
    ticks(sidecar, clock, 1)
    with sidecar.store.session() as s:
        assert s.scalars(select(Finding)).one().status == "active"


def test_observe_mode_never_recommends(tmp_path: Path) -> None:
    sidecar, clock, _ = make(tmp_path, [page(SPEC_UNDER), page(SPEC_AFTER)], persist_windows=1,
                             slo="ttft_p95<=10ms")
    ticks(sidecar, clock, 2)
    with sidecar.store.session() as s:
        assert s.scalars(select(Finding).where(Finding.playbook == "high_ttft")).one()
        assert s.scalars(select(Recommendation)).all() == []


def test_recommend_mode_publishes_the_remedy_once(tmp_path: Path) -> None:
    sidecar, clock, _ = make(tmp_path, [page(SPEC_UNDER), page(SPEC_AFTER)], persist_windows=1, mode="recommend",
                             slo="ttft_p95<=10ms", receivers=[{"name": "r", "url": "http://127.0.0.1:9/x"}], webhook_secret="unit-test-hmac-key")
    results = ticks(sidecar, clock, 2)
    assert results[1].recommendations, results[1].diagnosis
    sidecar.controller.scrape = Script(clock, [page(SPEC_UNDER), page(SPEC_AFTER)])  # the same finding again
    sidecar.controller.reset_base()
    assert ticks(sidecar, clock, 2)[1].recommendations == []  # one open recommendation per finding
    with sidecar.store.session() as s:
        recs = s.scalars(select(Recommendation)).all()
        assert "high_ttft" in {r.source for r in recs}
        assert len({r.source for r in recs}) == len(recs) == len(results[1].recommendations)
        for rec in recs:
            finding = s.get(Finding, rec.evidence["finding_id"])
            remedy = next(r for r in finding.data["remedies"] if r.get("config_delta"))
            assert rec.source == finding.playbook and rec.config == remedy["config_delta"]
            assert rec.status == "pending"
        notes = s.scalars(select(OutboxMessage).where(OutboxMessage.kind == "recommendation")).all()
        assert len(notes) == len(recs)


def test_attainment_sums_counts_across_windows(tmp_path: Path) -> None:
    sidecar, clock, _ = make(tmp_path, [page(UNDER), page(AFTER), page(AFTER)], slo="e2e_p95<=1s")
    ticks(sidecar, clock, 3)
    a = attainment(sidecar.controller.rolling.last())
    assert a.windows == 2 and a.requests == 40 and a.score == 0.0  # all 40 over 1 s; the empty window adds none


def test_loop_step_survives_an_unexpected_error(tmp_path: Path) -> None:
    sidecar, _, _ = make(tmp_path, [page(UNDER)])

    def boom(url: str) -> object:
        raise RuntimeError("bug")

    sidecar.controller.scrape = boom
    sidecar.step()  # logged and counted, not raised
    assert "slotune_loop_errors_total 1.0" in sidecar.metrics_text()[0].decode()


def test_fresh_diagnosis_is_not_judged_on_an_empty_sliver(tmp_path: Path) -> None:
    # The loop's one window (UNDER → AFTER) holds slow requests; the extra scrape a fresh diagnosis
    # takes (an alert arriving just after a tick) sees none finish. The diagnosis is that of the
    # evidence there is, not "healthy" because of the empty last moment.
    # (The window has no first token, so TTFT is not judged there; e2e is, and misses.)
    sidecar, clock, _ = make(tmp_path, [page(UNDER), page(AFTER), page(AFTER)], slo="ttft_p95<=1ms,e2e_p95<=100ms")
    _, tick = ticks(sidecar, clock, 2)
    assert tick.diagnosis["status"] == "findings"
    fresh = sidecar.controller.fresh_diagnosis()
    assert fresh["status"] == "findings", fresh
    assert {f["playbook"] for f in fresh["findings"]} == {f["playbook"] for f in tick.diagnosis["findings"]}
