"""Study mechanics on real Optuna RDB storage (SQLite), with a synthetic measurement: baseline first,
remedies next, then the sampler; infeasible trials never stop the study; constraints reach Optuna;
resume; verdict against noise; every trial in slotune_trials."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import select

from slotune.errors import ConfigError
from slotune.store import TrialRecord, TrialRowState, open_store
from slotune.tuner.measure import Measurement, client_seat
from slotune.tuner.report import summarize
from slotune.tuner.study import TuneSpec, run_study
from tests.support.tuner import FakeMeasure, run_workers

MODEL = "/models/tiny"


def spec(tmp_path, **kw) -> TuneSpec:
    base = {"model": MODEL, "input_len": 32, "output_len": 16, "slo": "ttft_p95<=500ms", "trials": 6,
            "storage": f"sqlite:///{tmp_path}/s.db", "study_name": "s", "remeasure_top": 0}
    if kw.get("max_remedies") == 0 and kw.get("trials") == 2 and "fixes" not in kw:
        # Studies of baseline + one sampled trial: that trial is a tuned config vLLM accepts (the space
        # holds combinations refused before launch, which would leave nothing to compare).
        kw["fixes"] = ["max_num_seqs=16", "max_num_batched_tokens=default"]
    return TuneSpec(**{**base, **kw})


def test_baseline_then_remedies_then_sampler(tmp_path):
    fm = FakeMeasure()
    result = run_study(spec(tmp_path), measure=fm)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db")
    trials = study.get_trials()
    origins = [t.user_attrs["origin"] for t in trials]
    assert origins[:3] == ["baseline", "remedy", "remedy"] and set(origins[3:]) == {"sampler"}
    assert fm.calls[0].tuned_params() == {}  # trial 0 is vLLM's default, exactly
    assert trials[1].params["enable_chunked_prefill"] is True
    assert trials[2].params["max_num_seqs"] == 64  # the remedy's 60, snapped to the space
    assert "high_ttft" in trials[1].user_attrs["remedy"]
    # Never re-measured (remeasure_top=0): however good a trial looked once, keep the defaults.
    assert result.baseline["feasible"] is False and result.best["feasible"] is True
    assert result.verdict.recommendation == "baseline" and "(not re-measured)" in result.verdict.message


def test_a_config_that_surely_meets_the_slo_the_default_surely_misses_wins(tmp_path):
    result = run_study(spec(tmp_path, remeasure_top=1), measure=FakeMeasure())
    v = result.verdict
    assert v.remeasured and v.recommendation == "tuned", v.message
    assert v.samples[0].slo["ttft_p95"].outcome == "missed" and v.samples[v.winner].slo["ttft_p95"].outcome == "met"


def test_no_config_meets_the_slos_so_nothing_is_measured_again(tmp_path):
    # Every config misses a 100 ms TTFT p95 (FakeMeasure: 0.3 s at best): with no candidate, the
    # baseline's re-measurement would compare it with nothing and cost a whole window.
    fm = FakeMeasure()
    result = run_study(spec(tmp_path, trials=3, slo="ttft_p95<=100ms", remeasure_top=1, prune_factor=None),
                       measure=fm)
    assert len(fm.calls) == 3  # the three trials; no re-measurement
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db")
    assert not [k for k in study.user_attrs if k.startswith("remeasure:")]
    assert result.verdict.message.startswith("keep vLLM's defaults (not re-measured): no tuned config met the SLOs")


def test_a_study_of_the_baseline_alone_measures_it_again(tmp_path):
    # `slotune demo --trials 1`: its re-measurement shows the defaults' run-to-run noise.
    fm = FakeMeasure()
    result = run_study(spec(tmp_path, trials=1, slo="ttft_p95<=100ms", remeasure_top=1, remeasure_repeats=1),
                       measure=fm)
    assert len(fm.calls) == 2 and len(result.baseline["goodput_samples"]) == 2
    assert result.verdict.message.startswith("keep vLLM's defaults: no tuned config was measured (default, 2 runs: "
                                             "goodput "), result.verdict.message
    # The report sets no "best tuned" beside it: there is none (summarize falls back to the baseline).
    import io

    from rich.console import Console

    from slotune.tuner.report import render

    out = io.StringIO()
    render(result, Console(file=out, width=100))
    assert "baseline: trial 0" in out.getvalue() and "best tuned" not in out.getvalue(), out.getvalue()


def test_a_failed_tuned_trial_is_not_a_measured_one(tmp_path):
    # A tuned trial that crashed (a worker killed: Optuna FAIL) measured nothing: the baseline is
    # measured again as in a study of the baseline alone, and no verdict says a tuned config missed.
    def measure(config, progress=None, check=None):
        if config.tuned_params():
            raise KeyboardInterrupt  # stands for a worker killed mid-trial
        return FakeMeasure()(config, progress)

    s = spec(tmp_path, trials=2, slo="ttft_p95<=100ms", remeasure_top=1, remeasure_repeats=1, max_remedies=1)
    with pytest.raises(KeyboardInterrupt):
        run_study(s, measure=measure)
    study = optuna.load_study(study_name="s", storage=s.storage)
    assert [t.state for t in study.get_trials()][:2] == [TrialState.COMPLETE, TrialState.FAIL]
    from slotune.tuner.verdict import decide, tuned_measured

    assert not tuned_measured(study.get_trials())
    assert "no tuned config met the SLOs" not in decide(study.get_trials(), study.user_attrs).message


def test_constraints_reach_optuna_and_infeasible_trials_do_not_stop_the_study(tmp_path):
    s = spec(tmp_path, trials=5, enqueue=[{"max_num_seqs": 256, "enable_chunked_prefill": True},
                                          {"max_num_batched_tokens": 512, "enable_chunked_prefill": False,
                                           "max_model_len": 2048}])
    run_study(s, measure=FakeMeasure())
    study = optuna.load_study(study_name="s", storage=s.storage)
    by_origin = [t for t in study.get_trials() if t.user_attrs["origin"] == "enqueued"]
    failed_start, rejected = by_origin
    assert failed_start.state is TrialState.PRUNED and failed_start.user_attrs["status"] == "kv_cache_too_small"
    assert rejected.state is TrialState.PRUNED and "chunked prefill disabled" in rejected.user_attrs["reason"]
    for t in by_origin:
        assert t.constraints["launch"] > 0
    base = study.get_trials()[0]
    assert base.constraints["slo:ttft_p95"] == pytest.approx(0.8 / 0.5 - 1)
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 5
    # Every trial, infeasible ones too, is in slotune's own table with its reason and log.
    store = open_store(s.storage)
    with store.session() as sess:
        recs = sess.scalars(select(TrialRecord).where(TrialRecord.study_name == "s")).all()
    assert sorted(r.trial_number for r in recs) == list(range(5))
    kv = next(r for r in recs if r.trial_number == failed_start.number)
    assert kv.state == "infeasible" and "kv_cache_too_small" in kv.reason and kv.log_path


def test_unexpected_error_in_slotune_reraises(tmp_path):
    def broken(config, progress=None):
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        run_study(spec(tmp_path), measure=broken)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db")
    assert study.get_trials()[0].state is TrialState.FAIL


def test_resume_counts_finished_trials_and_keeps_them(tmp_path):
    run_study(spec(tmp_path, trials=3), measure=FakeMeasure())
    fm = FakeMeasure()
    run_study(spec(tmp_path, trials=5), measure=fm)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db")
    spent = [t for t in study.get_trials() if t.user_attrs["state"] != "duplicate"]
    assert len(spent) == 5 and [t.number for t in study.get_trials()[:3]] == [0, 1, 2]
    # Only the two missing trials ran (one the sampler drew may be refused before launch; a config the
    # study measured already is a duplicate, not launched and not counted toward the 5).
    launched = [t for t in study.get_trials()[3:] if t.user_attrs["state"] not in ("infeasible", "duplicate")]
    assert len(fm.calls) == len(launched)
    assert all(c.tuned_params() for c in fm.calls)  # the baseline (no tuned flag) did not run again
    assert sum(t.user_attrs["origin"] == "baseline" for t in study.get_trials()) == 1


def test_a_resumed_study_does_not_draw_the_configs_it_already_drew(tmp_path):
    # A fresh sampler with the same seed replays the same random start-up draws: a study resumed one
    # trial at a time measured the same config again on every resume (bench_tune's false-wins study 0).
    for n in range(2, 5):
        run_study(spec(tmp_path, trials=n, max_remedies=0), measure=FakeMeasure())
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db")
    drawn = [json.dumps(t.params, sort_keys=True) for t in study.get_trials()[1:]]
    assert len(drawn) == 3 and len(set(drawn)) == 3, drawn


def test_resume_with_other_slo_is_refused(tmp_path):
    run_study(spec(tmp_path, trials=1), measure=FakeMeasure())
    with pytest.raises(ConfigError, match="was created with slo="):
        run_study(spec(tmp_path, trials=2, slo="ttft_p95<=1s"), measure=FakeMeasure())


def test_resume_with_another_space_is_one_line_not_a_sampler_crash(tmp_path):
    # A narrowed --space on a resume reached TPE, which raised ValueError ('512' not in (None, 1024)).
    from slotune.tuner.study import space_change
    from tests.support.tuner import space_yaml

    wide, narrow = tmp_path / "wide.yaml", tmp_path / "narrow.yaml"
    wide.write_text(space_yaml(max_num_batched_tokens="[default, 512, 1024]"))
    narrow.write_text(space_yaml(max_num_batched_tokens="[default, 1024]"))
    run_study(spec(tmp_path, trials=1, space_file=wide), measure=FakeMeasure())
    with pytest.raises(ConfigError) as err:
        run_study(spec(tmp_path, trials=2, space_file=narrow), measure=FakeMeasure())
    assert str(err.value) == (
        "study 's' was created with another search space (max_num_batched_tokens: choices [None, 512, 1024] "
        "then, [None, 1024] now): resume it with the same --space or pick another --study name")
    run_study(spec(tmp_path, trials=2, space_file=wide), measure=FakeMeasure())  # the same space resumes
    # A study stored no space before it was recorded (older slotune): nothing to compare, no refusal.
    assert space_change(None, [{"name": "max_num_seqs", "choices": [None, 8]}]) is None
    # A dimension fixed (or freed) on a resume is a parameter some trials lack, which the sampler takes.
    assert space_change([{"name": "max_num_seqs", "choices": [None, 8]}], [{"name": "max_num_seqs", "fixed": 8}]) is None


def _goodputs(base: list[float], tuned: list[float], log: list[str] | None = None):
    """A measure that hands out these goodputs in turn (every request good, TTFT well inside the
    SLO): `base` for vLLM's default config (its trial, then its re-measurements), `tuned` for any
    other. `log` gets 'base' or 'tuned' per call, in measuring order."""
    queues = {True: list(base), False: list(tuned)}

    def measure(config, progress=None):
        from tests.support.tuner import client, requests

        is_base = config.tuned_params() == {}
        g = queues[is_base].pop(0)
        if log is not None:
            log.append("base" if is_base else "tuned")
        return Measurement(ok=True, goodput=g, client=client(0.1, g), requests=requests(g, 0.1, good_share=1.0))

    return measure


def test_remeasurement_is_interleaved_and_stored_with_its_requests(tmp_path):
    log: list[str] = []
    s = spec(tmp_path, trials=2, max_remedies=0, slo="ttft_p95<=2s", remeasure_top=1, remeasure_repeats=3)
    result = run_study(s, measure=_goodputs([2.0, 2.0, 2.1, 1.9], [4.0, 4.0, 4.1, 3.9], log))
    assert log == ["base", "tuned"] + ["base", "tuned"] * 3
    assert result.verdict.recommendation == "tuned", result.verdict.message
    study = optuna.load_study(study_name="s", storage=s.storage)
    again = [e["round"] for e in study.user_attrs["remeasure:1"]]
    assert again == [1, 2, 3] and all(e["requests"]["good"] for e in study.user_attrs["remeasure:0"])
    store = open_store(s.storage)
    with store.session() as sess:
        rows = sess.scalars(select(TrialRecord).where(TrialRecord.state == TrialRowState.REMEASURE)).all()
        states = sorted(sess.scalars(select(TrialRecord.state)).all())
    assert len(rows) == 6 and all(r.metrics["requests"]["duration"] > 0 for r in rows)
    assert all(r.metrics["round"] in (1, 2, 3) and r.metrics["client"] for r in rows)
    # One writer, one vocabulary: the two trials and the six re-measurements.
    assert states == ["complete"] * 2 + ["remeasure"] * 6 and set(states) <= set(TrialRowState)
    # Resuming a finished study measures nothing again, and the verdict is the same from storage alone.
    log.clear()
    resumed = run_study(s, measure=_goodputs([], [], log))
    assert log == [] and resumed.verdict.to_dict() == result.verdict.to_dict()
    assert summarize(s.storage, "s").verdict.to_dict() == result.verdict.to_dict()


def test_resume_finishes_the_interrupted_rounds_only(tmp_path):
    s = spec(tmp_path, trials=2, max_remedies=0, slo="ttft_p95<=2s", remeasure_top=1, remeasure_repeats=2)
    calls: list[str] = []
    inner = _goodputs([2.0, 2.0, 2.0], [4.0, 4.0], calls)

    def dies_in_round_two(config, progress=None):
        if len(calls) == 4:  # trial 0, trial 1, round 1 (base, tuned): then round 2's baseline dies
            raise RuntimeError("killed")
        return inner(config, progress)

    with pytest.raises(RuntimeError):
        run_study(s, measure=dies_in_round_two)
    log: list[str] = []
    result = run_study(s, measure=_goodputs([2.1], [4.1], log))
    assert log == ["base", "tuned"]  # round 2 only
    # The baseline's own run and its 2 re-measurements; the candidate's 2 re-measurements only (its own
    # run, the one it was picked on, is left out: the winner's curse).
    assert [len(result.verdict.samples[n].goodputs) for n in (0, 1)] == [3, 2]


def test_winner_within_noise_keeps_the_baseline(tmp_path):
    # The tuned config is better on average (+0.35 req/s), but its runs and the default's spread so
    # far that the two goodput intervals overlap.
    result = run_study(spec(tmp_path, trials=2, remeasure_top=1, slo="ttft_p95<=2s", max_remedies=0),
                       measure=_goodputs([2.0, 2.3, 1.7], [2.35, 2.65, 2.05]))
    v = result.verdict
    assert v.remeasured and v.recommendation == "baseline", v.message
    assert v.gain == pytest.approx(0.35) and "does not clear the default's" in v.message
    assert result.to_dict()["recommendation"]["use"] == "baseline"


def test_clear_winner_beats_the_baseline(tmp_path):
    result = run_study(spec(tmp_path, trials=2, remeasure_top=1, slo="ttft_p95<=2s", max_remedies=0),
                       measure=_goodputs([2.0, 2.1, 1.9], [4.0, 4.1, 3.9]))
    assert result.verdict.recommendation == "tuned" and result.verdict.ratio == pytest.approx(2.0)
    assert len(result.best["goodput_samples"]) == 2 and len(result.baseline["goodput_samples"]) == 3


def test_load_generator_warnings_travel_with_the_trial(tmp_path):
    def measure(config, progress=None):
        from tests.support.tuner import client

        starved = config.tuned_params() == {}
        c = replace(client(0.1, 2.0), warnings=("requests left up to 250 ms late (p99)",) if starved else ())
        return Measurement(ok=True, goodput=2.0, client=c)

    result = run_study(spec(tmp_path, trials=2, slo="ttft_p95<=2s", max_remedies=0), measure=measure)
    assert result.baseline["measurement_warnings"] == ["requests left up to 250 ms late (p99)"]
    again = summarize(f"sqlite:///{tmp_path}/s.db", "s").to_dict()  # stored with the trial, not only in memory
    assert again["baseline"]["measurement_warnings"] == result.baseline["measurement_warnings"]
    # ... and the terminal says it (it was in summary.json only).
    import io

    from rich.console import Console

    from slotune.tuner.report import render

    out = io.StringIO()
    render(result, Console(file=out, width=80))
    lines = out.getvalue().splitlines()
    assert "trial 0 (!): load generator warning: requests left up to 250 ms late (p99)" in lines
    assert "trial 1 (!)" not in out.getvalue()
    # ... and its row in the trials table carries the mark the line refers to.
    row = next(line for line in lines if line.split()[:2] == ["0", "baseline"])
    assert "complete !" in row, row
    assert not any(line.split()[:2] == ["1", "sampler"] and "!" in line for line in lines)


def test_json_shape_and_report_from_storage(tmp_path, monkeypatch):
    # The platform's flags and environment fixed, whatever this host's are (best.yaml is checked below).
    from slotune import platforms

    here = platforms.detect()
    fixed = replace(here, default_flags={"dtype": "float32", "enforce_eager": True},
                    default_env={"VLLM_CPU_KVCACHE_SPACE": "4"})
    monkeypatch.setattr(platforms, "detect", lambda: fixed)
    s = spec(tmp_path, out_dir=tmp_path / "out", pareto=True)
    result = run_study(s, measure=FakeMeasure())
    d = json.loads(json.dumps(result.to_dict()))
    for key in ("baseline", "best"):
        assert {"params", "goodput", "slo", "ttft_p95", "command"} <= set(d[key])
        assert d[key]["slo"]["ttft_p95"]["threshold"] == 0.5
    assert d["baseline"]["params"] == {} and "vllm serve /models/tiny" in d["best"]["command"]
    assert d["pareto"] and all(p["ttft_p95"] is not None for p in d["pareto"])
    again = summarize(s.storage, "s").to_dict()
    assert again["best"] == d["best"] and again["baseline"] == d["baseline"]
    out = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"summary.json", "best.yaml", "best.sh", "history.png", "history.html", "pareto.png", "pareto.html"} <= out
    assert (tmp_path / "out" / "history.png").read_bytes()[:4] == b"\x89PNG"
    # best.yaml is the server best.sh starts, the platform's flags (--dtype float32 on this CPU, ...)
    # included: it once held the tuned flags only, a server several times slower than the one measured.
    import re

    import yaml

    script = (tmp_path / "out" / "best.sh").read_text()
    flag_file = (tmp_path / "out" / "best.yaml").read_text()
    in_file = {f"--{k}" for k in yaml.safe_load(flag_file) if k != "model"}
    assert {"--dtype", "--enforce-eager"} <= in_file == set(re.findall(r" (--[a-z-]+)", script))
    assert re.findall(r"\b(VLLM_[A-Z_]+=\S+)", script) == re.findall(r"# export (\S+)", flag_file) == [
        "VLLM_CPU_KVCACHE_SPACE=4"]


def test_the_measuring_thread_leaves_the_server_cores_and_gets_them_back() -> None:
    cores = os.sched_getaffinity(0)
    if len(cores) < 2:
        pytest.skip("needs two cores to split")
    server = (max(cores),)
    with client_seat(server):
        assert os.sched_getaffinity(0) == cores - {max(cores)}
    assert os.sched_getaffinity(0) == cores
    with client_seat(None):
        assert os.sched_getaffinity(0) == cores


def test_two_workers_on_one_study_never_measure_a_config_twice(tmp_path):
    # Two workers (threads here; processes in tests/integration/test_tuner_workers.py) share one
    # study. The sampler's first trials are random draws: were both workers seeded alike, each
    # would draw the same configs in the same order. TPE may draw a config again (a duplicate, not
    # measured), and the two may draw one at the same time (the second is a duplicate of the running one).
    import time

    measured: list[str] = []

    def measure(config, progress=None):
        from tests.support.tuner import client

        measured.append(json.dumps(config.model_dump(mode="json", exclude_none=True), sort_keys=True))
        time.sleep(0.05)  # long enough for the two workers to take turns
        g = 1.0 + (config.max_num_seqs or 256) / 256
        return Measurement(ok=True, goodput=g, client=client(0.1, g))

    run_workers([spec(tmp_path, trials=10, max_remedies=0, slo="ttft_p95<=2s", worker=n) for n in (0, 1)], measure)
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db").get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) >= 10 and len(finished) == len(trials)
    configs = [json.dumps(t.user_attrs["config"], sort_keys=True) for t in finished
               if t.user_attrs["state"] != "duplicate"]
    assert len(set(configs)) == len(configs), [c for c in configs if configs.count(c) > 1]
    # Each config measured once, by the trial that claimed it (infeasible ones never launch).
    assert len(set(measured)) == len(measured) and set(measured) <= set(configs), measured
