"""A study started through the API reports the verdict's recommendation beside its best trial, so
a config measured once (the `best` row) is never mistaken for what to run. run_study is replaced by
a stub here (the study itself is tests/unit/test_tuner_study.py's)."""

from __future__ import annotations

import slotune.tuner.study as study_mod
from slotune.sidecar.metrics import SidecarMetrics
from slotune.sidecar.studies import StudyRunner
from slotune.store import open_store


class _Result:
    def __init__(self):
        self.best = {"trial": 3, "goodput": 9.9}

    def to_dict(self):
        return {"recommendation": {"use": "baseline", "trial": 0, "command": "vllm serve m",
                                   "message": "keep vLLM's defaults (not re-measured): ..."}}


def test_a_finished_study_carries_the_verdicts_recommendation(tmp_path, monkeypatch):
    monkeypatch.setattr(study_mod, "run_study", lambda spec, events=None: _Result())
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    runner = StudyRunner(store, SidecarMetrics(), default_target=lambda: "http://127.0.0.1:1")
    info = runner.start({"model": "m", "slo": "ttft_p95<=1s", "input_len": 8, "output_len": 8, "trials": 1})
    assert "recommendation" in info
    runner.thread.join(30)
    done = runner.history[info["name"]]
    assert done["status"] == "finished" and done["best"]["trial"] == 3
    assert done["recommendation"]["use"] == "baseline" and done["recommendation"]["trial"] == 0
    store.dispose()
