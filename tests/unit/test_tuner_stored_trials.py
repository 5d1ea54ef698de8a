"""Trials stored by an earlier slotune read back through the typed `Measurement`: the report says of
them what it said then, a resumed study queues the baseline's remedies, and a trial's measurement
writes the same attributes it was read from. The fixture (tests/support/data/study_v1.json) is a
study written by the code before measurements were typed, with its `slotune report --json`."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from slotune.slo import SloSpec
from slotune.tuner.measure import Measurement
from slotune.tuner.report import summarize
from slotune.tuner.space import SearchSpace
from slotune.tuner.study import SPEC_ATTR, enqueue_remedies

STORED = json.loads((Path(__file__).parents[1] / "support" / "data" / "study_v1.json").read_text())
TRIALS = STORED["trials"]
SLO = SloSpec.parse(STORED["study_attrs"][SPEC_ATTR]["slo"])


def test_a_stored_trial_reads_back_typed() -> None:
    base, infeasible = TRIALS[0]["user_attrs"], TRIALS[1]["user_attrs"]
    m = Measurement.from_attrs(base)
    assert m is not None and m.ok and m.status == "ready" and m.goodput == 2.0
    assert m.client is not None and m.client.ttft is not None and m.client.ttft.p95 == pytest.approx(0.34)
    assert (m.client.completed, m.client.failed, m.client.concurrency) == (5, 1, 2)
    assert [f.playbook for f in m.findings] == ["high_ttft", "kv_cache_pressure"]
    assert [(r.playbook, r.remedy.config_delta) for r in m.remedies()] == [
        ("high_ttft", {"enable_chunked_prefill": True}), ("kv_cache_pressure", {"max_num_seqs": 64})]
    assert m.requests is not None and m.requests.ok == (True, True, True, False, True, True)
    failed = Measurement.from_attrs(infeasible)
    assert failed is not None and not failed.ok and failed.client is None and failed.status == "kv_cache_too_small"
    assert Measurement.from_attrs({"origin": "remedy", "remedy": "queued, never run"}) is None


@pytest.mark.parametrize("number", [0, 1, 2])
def test_a_stored_trial_writes_back_the_attrs_it_was_read_from(number: int) -> None:
    stored = TRIALS[number]["user_attrs"]
    m = Measurement.from_attrs(stored)
    assert m is not None
    again = m.to_attrs(SLO)
    # The server's window is not among the attributes (only its drafting counters, `spec_decode`).
    assert {k: v for k, v in again.items() if k != "spec_decode"} == {k: stored[k] for k in again if k != "spec_decode"}


def _old_study(url: str) -> optuna.Study:
    study = optuna.create_study(study_name="old", storage=url, directions=["maximize"])
    for k, v in STORED["study_attrs"].items():
        study.set_user_attr(k, v)
    for t in TRIALS:
        state = TrialState[t["state"]]
        study.add_trial(create_trial(state=state, value=t["value"] if state is TrialState.COMPLETE else None,
                                     params={}, distributions={}, user_attrs=t["user_attrs"]))
    return study


def test_a_study_stored_before_typed_measurements_reports_as_it_did(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    _old_study(url)
    got = json.loads(json.dumps(summarize(url, "old").to_dict()))
    want = STORED["report"]
    for key in ("baseline", "best", "pareto", "speculation"):
        assert got[key] == want[key], key
    rows = [r for r in got["rows"] if r["trial"] in (0, 1, 2)]
    # Keys added since (a queued trial's `queued_params`) are additions: the old ones read as they did.
    assert [{k: r[k] for k in w} for r, w in zip(rows, want["rows"], strict=True)] == want["rows"]
    assert all(r["queued_params"] == {} for r in rows)


def test_a_resumed_old_study_queues_its_baselines_remedies(tmp_path: Path) -> None:
    study = _old_study(f"sqlite:///{tmp_path}/old.db")
    queued = enqueue_remedies(study, SearchSpace.default(), limit=3)
    assert [q["why"] for q in queued] == ["high_ttft: split prefills", "kv_cache_pressure: bigger batches"]
    assert [q["params"] for q in queued] == [{"enable_chunked_prefill": True}, {"max_num_seqs": 64}]
