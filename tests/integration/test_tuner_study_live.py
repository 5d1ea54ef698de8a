"""A short study on a real vLLM (tiny model): baseline first, a rejected combination (never
launched) and a start-up failure (launched, refused by vLLM) recorded as infeasible without stopping
the study, a best config whose `vllm serve` line, parsed back, starts a server that answers."""

from __future__ import annotations

import html
import re

import httpx
import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import select

from slotune.server import ManagedServer, as_served
from slotune.store import TrialRecord, open_store
from slotune.tuner.command import parse_serve_command
from slotune.tuner.study import TuneSpec, run_study
from slotune.vllm_config import VllmConfig

pytestmark = pytest.mark.integration


def test_short_study_survives_infeasible_configs_and_its_best_line_serves(tiny_model, tmp_path):
    space = tmp_path / "space.yaml"
    # 8192 is beyond the tiny model's 4096 positions: vLLM refuses it at start-up (a real failure).
    space.write_text("max_num_seqs: [null, 4, 16]\nmax_num_batched_tokens: [null, 2048]\n"
                     "max_model_len: [null, 2048, 8192]\nenable_chunked_prefill: [null, true, false]\n"
                     "enable_prefix_caching: [null, false]\nspeculative_method: null\n")
    url = f"sqlite:///{tmp_path}/tune.db"
    spec = TuneSpec(
        model=str(tiny_model), input_len=48, output_len=16, slo="ttft_p95<=5s,e2e_p95<=20s", trials=5,
        concurrency=4, num_requests=20, warmup_requests=2, storage=url, study_name="live", space_file=space,
        remeasure_top=0, max_remedies=0, out_dir=tmp_path / "out", startup_timeout=180,
        enqueue=[{"max_model_len": 8192, "max_num_seqs": 4, "max_num_batched_tokens": None,
                  "enable_chunked_prefill": None, "enable_prefix_caching": None},
                 # A 2048-token budget cannot schedule an 8192-token prompt without chunked prefill.
                 {"max_model_len": 8192, "max_num_batched_tokens": 2048, "enable_chunked_prefill": False,
                  "enable_prefix_caching": None, "max_num_seqs": None},
                 {"max_model_len": 2048, "max_num_batched_tokens": 2048, "enable_chunked_prefill": None,
                  "enable_prefix_caching": None, "max_num_seqs": 16}],
    )
    stages: list[tuple[int, str]] = []
    result = run_study(spec, events=lambda n, s: stages.append((n, s)))

    study = optuna.load_study(study_name="live", storage=url)
    trials = study.get_trials()
    assert len(trials) == 5 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    base, too_long, rejected, ok = trials[0], trials[1], trials[2], trials[3]
    assert base.user_attrs["origin"] == "baseline" and base.state is TrialState.COMPLETE
    assert base.user_attrs["params"] == {} and base.user_attrs["goodput"] > 0
    assert base.user_attrs["client"]["completed"] == 20
    # Each request's figures are kept with the trial (what the verdict's intervals come from), and
    # a study never re-measured keeps vLLM's defaults.
    kept = base.user_attrs["requests"]
    assert len(kept["ok"]) == 20 and sum(kept["good"]) / kept["duration"] == pytest.approx(base.user_attrs["goodput"])
    assert result.verdict.recommendation == "baseline" and "(not re-measured)" in result.verdict.message
    assert too_long.state is TrialState.PRUNED and too_long.user_attrs["status"] == "invalid_config"
    assert too_long.user_attrs["log_path"] and too_long.constraints["launch"] > 0
    # The rejected combination: recorded as infeasible with its reason, never launched (no log, no
    # start-up stage), in Optuna and in slotune's own table.
    assert rejected.state is TrialState.PRUNED and rejected.user_attrs["status"] == "invalid_config"
    assert "chunked prefill disabled" in rejected.user_attrs["reason"] and rejected.constraints["launch"] > 0
    assert rejected.user_attrs["log_path"] is None
    # Its progress: what it serves, then its outcome with its wall time (no start-up stage between).
    said = [s for n, s in stages if n == rejected.number]
    assert len(said) == 2 and said[0].startswith("enqueued: ") and "enable_chunked_prefill=False" in said[0], said
    assert re.fullmatch(r"infeasible \(not launched\) \(\d+ s\)", said[1]), said
    store = open_store(url)
    with store.session() as sess:
        rec = sess.scalars(select(TrialRecord).where(TrialRecord.study_name == "live",
                                                     TrialRecord.trial_number == rejected.number)).one()
        assert rec.state == "infeasible" and "chunked prefill disabled" in rec.reason and rec.log_path is None
        assert rec.params["max_num_batched_tokens"] == 2048 and rec.params["enable_chunked_prefill"] is False
    store.dispose()
    assert ok.state is TrialState.COMPLETE and ok.user_attrs["params"]["max_num_seqs"] == 16
    assert any(s.startswith("running the workload") for _, s in stages)

    d = result.to_dict()
    assert d["baseline"]["trial"] == 0 and d["best"]["feasible"]
    assert d["baseline"]["slo"]["ttft_p95"]["value"] > 0
    assert (tmp_path / "out" / "best.yaml").exists() and (tmp_path / "out" / "history.png").exists()
    # The HTML report from a real study: its serve line, and output tokens/s measured for the cost figure.
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    rec = d["recommendation"]["command"]  # the page's serve line is the recommended config's (defaults when kept)
    assert rec and rec in html.unescape(page) and (tmp_path / "out" / "goodput_vs_rate.png").exists()
    assert d["baseline"]["output_throughput"] > 0

    # The printed line, pasted back: it starts a vLLM that answers.
    config = parse_serve_command(d["best"]["command"])
    # ... with the platform's flags and environment the trial's server ran with (on this CPU: fp32, eager).
    assert config == as_served(VllmConfig.model_validate(trials[d["best"]["trial"]].user_attrs["config"]))
    with ManagedServer(config.with_changes(served_model_name="best"), log_dir=tmp_path / "logs") as server:
        r = httpx.post(f"{server.base_url}/v1/completions",
                       json={"model": "best", "prompt": "the model", "max_tokens": 4}, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] is not None
