"""A `slotune tune` SIGKILLed mid-trial, while the trial's vLLM is still starting: that vLLM dies with it
(the server's watchdog; see docs/architecture.md), and `--study` resumes
the study: the finished trial is kept as it was, the killed one is failed once its heartbeat is
stale and retried with the same params."""

from __future__ import annotations

import json
import signal
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from tests.support.polling import wait_until
from tests.support.procs import left_behind, live_members, server_groups, wait_gone
from tests.support.tuner import spawn, tune_cmd

pytestmark = pytest.mark.integration


def _serving(data, nth: int) -> bool:
    """The `nth` vLLM the study started has finished starting (its log says so)."""
    logs = sorted((data / "logs" / "tune" / "k").glob("vllm-*.log"), key=lambda p: p.stat().st_mtime)
    return len(logs) >= nth and "Application startup complete" in logs[nth - 1].read_text(errors="replace")


def test_killed_study_resumes_without_losing_a_finished_trial(tiny_model, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    url = f"sqlite:///{data}/slotune.db"
    cmd = tune_cmd(tiny_model, "--trials", "2", "--study", "k", "--heartbeat", "2", "--fix", "speculative_method=off")

    def trials():
        try:
            return optuna.load_study(study_name="k", storage=url).get_trials()
        except KeyError:  # not created yet
            return []

    proc = spawn(cmd, data, tmp_path / "first.log")
    try:
        # Kill once trial 0 is finished and trial 1's server is up and being loaded.
        wait_until(lambda: len(trials()) >= 2 and trials()[0].state is TrialState.COMPLETE
                   and trials()[1].state is TrialState.RUNNING, 300, what="trial 1 to run")
        wait_until(lambda: any(len(live_members(g)) >= 2 for g in server_groups(data)), 60,
                   what="trial 1's vLLM and its engine core")
        # Up and being loaded: the window where vLLM loses a SIGTERM, which only the watchdog's SIGKILL ends.
        groups = server_groups(data)
        assert not _serving(data, 2), "trial 1's vLLM already serves: not killed mid-start"
        before = trials()[0]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_gone(lambda: left_behind(data, groups), 40, what="the killed study's vLLM")
    assert trials()[1].state is TrialState.RUNNING  # what the kill left behind

    time.sleep(5)  # past the 4 s grace period: the trial is now stale
    second = spawn(cmd, data, tmp_path / "second.log")
    assert second.wait(timeout=400) == 0, (tmp_path / "second.log").read_text()[-3000:]

    after = trials()
    assert after[0].state is TrialState.COMPLETE and after[0].values == before.values
    assert after[0].user_attrs == before.user_attrs
    assert after[1].state is TrialState.FAIL
    retried = [t for t in after if t.system_attrs.get("failed_trial") == 1]
    assert len(retried) == 1 and retried[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retried[0].params == after[1].params
    assert len([t for t in after if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 2
    assert left_behind(data, groups) == []

    report = spawn([sys.executable, "-m", "slotune.cli.main", "report", "--study", "k", "--json"], data, tmp_path / "r.json")
    assert report.wait(timeout=60) == 0
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["baseline"]["trial"] == 0 and d["trials"]["fail"] == 1
