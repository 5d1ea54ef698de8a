"""Early stop on a real vLLM (tiny model): a trial whose window's first requests already miss the TTFT
target by far stops there, its figures those of the requests that finished, while the baseline runs
its whole window. `--max-num-seqs 1` under 8 concurrent requests queues them one behind another, so
the TTFT of all but the first grows by a whole reply each."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from slotune.tuner.study import TuneSpec, run_study

pytestmark = pytest.mark.integration

REQUESTS = 60


def test_a_trial_that_misses_by_far_stops_within_its_window(tiny_model, tmp_path):
    url = f"sqlite:///{tmp_path}/tune.db"
    spec = TuneSpec(
        model=str(tiny_model), input_len=48, output_len=32, slo="ttft_p95<=250ms", trials=2, concurrency=8,
        num_requests=REQUESTS, warmup_requests=2, storage=url, study_name="es", remeasure_top=0, max_remedies=0,
        startup_timeout=180, fixes=["speculative_method=default"],
        enqueue=[{"max_num_seqs": 1}],
    )
    stages: list[tuple[int, str]] = []
    result = run_study(spec, events=lambda n, s: stages.append((n, s)))

    base, queued = optuna.load_study(study_name="es", storage=url).get_trials()
    assert base.state is TrialState.COMPLETE and base.user_attrs["client"]["completed"] == REQUESTS
    assert queued.state is TrialState.PRUNED and queued.user_attrs["state"] == "pruned", queued.user_attrs
    assert queued.user_attrs["reason"].startswith("stopped early: its first"), queued.user_attrs["reason"]
    so_far = queued.user_attrs["so_far"]
    # Judged from a tenth of the window on, and stopped well before its end: the figures kept are
    # those of the requests that had finished, every one of them measured.
    assert so_far["target"] == "ttft_p95" and so_far["ratio"] >= 2.0
    assert REQUESTS // 10 <= so_far["requests"] < REQUESTS // 2
    assert so_far["requests"] in queued.intermediate_values
    assert queued.user_attrs["client"]["completed"] == len(queued.user_attrs["requests"]["ok"])
    assert so_far["requests"] <= queued.user_attrs["client"]["completed"] < REQUESTS
    assert queued.constraints["slo:ttft_p95"] >= 1.0  # 2x its target or more: the sampler learns this region misses
    assert result.counts["pruned"] == 1 and result.verdict.winner != queued.number
    assert any(n == queued.number and s.startswith("stopped early") for n, s in stages)
