"""Speculation by load in the study's result: the schedule of the recommended config, and the best K
measured at each offered load (`speculation.k_by_load`), read from storage like the rest."""

from __future__ import annotations

from dataclasses import replace

import optuna

from slotune.tuner.measure import Measurement
from slotune.tuner.study import TuneSpec, run_study
from tests.support.tuner import client, window


def _measure(config, progress=None, check=None):
    spec = config.speculative_config
    k = spec.num_speculative_tokens if spec else 0
    goodput = {0: 1.0, 2: 1.6, 4: 2.4}.get(k, 1.2)
    server = window(spec_decode_drafts=50.0, spec_decode_draft_tokens=50.0 * k, spec_decode_accepted_tokens=30.0 * k,
                    spec_decode_acceptance_rate=0.6, spec_decode_mean_acceptance_length=1 + 0.6 * k) if k else window()
    return Measurement(ok=True, goodput=goodput, client=replace(client(0.1, goodput), concurrency=1, rate=None),
                       server=server)


def _spec(tmp_path, enqueue):
    return TuneSpec(model="/models/tiny", input_len=32, output_len=16, slo="ttft_p95<=2s", trials=1 + len(enqueue),
                    storage=f"sqlite:///{tmp_path}/s.db", study_name="s", remeasure_top=0, max_remedies=0,
                    enqueue=enqueue)


def test_best_k_per_load_and_the_recommended_schedule(tmp_path):
    # max_num_seqs at vLLM's default (128 on CPU): a sampled one at or under the schedule's 2 would
    # make trial 2 the same server as no schedule, refused as a duplicate.
    ngram = {"speculative_method": "ngram", "prompt_lookup_min": 2, "prompt_lookup_max": 4, "max_num_seqs": None}
    result = run_study(_spec(tmp_path, [{**ngram, "num_speculative_tokens": 2},
                                        {**ngram, "num_speculative_tokens": 4, "spec_draft_max_batch": 2}]),
                       measure=_measure)
    spec = result.to_dict()["speculation"]
    assert spec["engine_applies_schedule"] is True and "scheduler.py" in spec["evidence"]
    assert spec["k_by_load"] == [{"concurrency": 1, "rate": None, "best_k": 4, "goodput": 2.4, "trial": 2,
                                  "met_slo": True}]
    # Each drafting trial keeps the server's spec-decode counters over its window; others keep none.
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db").get_trials()
    assert trials[0].user_attrs["spec_decode"] is None
    assert trials[2].user_attrs["spec_decode"] == {"drafts": 50.0, "draft_tokens": 200.0, "accepted_tokens": 120.0,
                                                   "acceptance_rate": 0.6, "mean_acceptance_length": 3.4}
    # The schedule is the recommended config's (the verdict decides which that is; none: no schedule).
    rec = result.recommended
    assert spec["schedule"] == ([[1, 2, 4], [3, 3, 0]] if rec and rec["trial"] == 2 else None)


def test_nothing_learnt_about_k_without_a_drafting_trial(tmp_path):
    result = run_study(_spec(tmp_path, []), measure=_measure)
    assert result.to_dict()["speculation"]["k_by_load"] == []
    assert result.to_dict()["speculation"]["schedule"] is None
