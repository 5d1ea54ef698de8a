"""The field-case pages (`../shared/field-cases/`, see its README): /metrics pages of other
deployments that slotune once misread or refused. Each test states the right reading."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from slotune.cli.main import main
from slotune.collectors.exposition import parse
from slotune.collectors.vllm_metrics import derive
from slotune.errors import TargetError
from tests.support.http_servers import page_server
from tests.support.paths import FIELD_CASES

LLAMA, OPT = "neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8", "facebook/opt-125m"


def read(name: str):
    return parse((FIELD_CASES / name).read_text(), url=name, timestamp=1.8e9)


def test_ray_serve_colon_spelling_reads_like_the_plain_page():
    """01: Ray Serve keeps vLLM's colon after its own `ray_` (`ray_vllm:NAME`)."""
    snap = derive(None, read("01-ray-serve-ray_vllm-colon.prom"), "t")
    assert snap.requests_finished == 1
    assert snap.ttft is not None and snap.ttft.p50 == pytest.approx(0.375)
    assert snap.itl is not None and snap.itl.count == 299  # V0's time_per_output_token: per step, i.e. ITL
    assert snap.kv_cache_usage == pytest.approx(5.9e-05, rel=0.01)
    assert snap.prompt_tokens_total == 58 and snap.generation_tokens_total == 300


def test_any_deployment_namespace_before_vllm_is_read():
    """The kind, not the file: whatever namespace an exporter puts before `vllm:` or `vllm_`."""
    text = (FIELD_CASES / "01-ray-serve-ray_vllm-colon.prom").read_text()
    for prefix in ("vllm:", "vllm_", "ray_vllm_", "myapp_vllm:", "team_ray_vllm_"):
        snap = derive(None, parse(text.replace("ray_vllm:", prefix), url="u"), "t")
        assert snap.requests_finished == 1 and snap.ttft is not None and snap.ttft.count == 1, prefix


def test_two_models_with_different_token_buckets_get_a_per_model_breakdown():
    """09: two models on one Ray node; vLLM sizes token-count buckets from each model's length."""
    snap = derive(None, read("09-ray-node-two-models-underscore.prom"), "t")
    # Sums where the layouts agree ...
    assert snap.requests_finished == 2
    assert snap.ttft is not None and snap.ttft.count == 2
    assert snap.prompt_tokens_total == 63 and snap.generation_tokens_total == 307
    # ... and the mismatched families left empty for the total, with a note naming them.
    assert snap.prompt_tokens is None and snap.output_tokens is None
    assert len(snap.notes) == 2 and all("bucket layouts differ" in n for n in snap.notes)
    assert snap.models == (OPT, LLAMA)
    opt, llama = snap.per_model[OPT], snap.per_model[LLAMA]
    assert opt.requests_finished == 1 and llama.requests_finished == 1
    assert opt.prompt_tokens is not None and opt.prompt_tokens.mean == 5
    assert opt.output_tokens is not None and opt.output_tokens.mean == 7
    assert llama.prompt_tokens is not None and llama.prompt_tokens.mean == 58
    assert llama.output_tokens is not None and llama.output_tokens.mean == 300
    assert opt.ttft is not None and opt.ttft.mean == pytest.approx(0.3133, abs=1e-4)
    assert llama.itl is not None and llama.itl.count == 299 and opt.itl is None
    assert opt.notes == () and llama.notes == ()


def test_two_model_page_round_trips_through_json():
    snap = derive(None, read("09-ray-node-two-models-underscore.prom"), "t")
    from slotune.collectors.snapshot import Snapshot

    back = Snapshot.from_dict(snap.to_dict())
    assert back.per_model[LLAMA].output_tokens == snap.per_model[LLAMA].output_tokens
    assert back.notes == snap.notes and back.models == snap.models


@pytest.mark.parametrize("name, cause", [
    ("07-v0-0.5.4-disable-log-stats-help-only.prom", "--disable-log-stats"),
    ("10-api-server-count-4-no-vllm-series.prom", "--api-server-count"),
])
def test_pages_without_vllm_samples_name_the_cause(name, cause):
    with pytest.raises(TargetError) as err:
        read(name)
    assert cause in str(err.value) and "is it a vLLM server" not in str(err.value)


def test_help_only_page_cause_also_names_an_engine_before_its_first_request():
    with pytest.raises(TargetError, match="first request"):
        read("07-v0-0.5.4-disable-log-stats-help-only.prom")


def test_a_page_that_is_not_vllm_at_all_still_asks():
    with pytest.raises(TargetError, match="is it a vLLM server"):
        parse("# TYPE python_gc_objects_collected_total counter\npython_gc_objects_collected_total 3\n")


@pytest.fixture()
def serve_file() -> Iterator[Callable[..., str]]:
    """A loopback HTTP server answering /metrics with field-case files: in turn, the last one from
    then on (a second scrape sees the next page)."""
    with ExitStack() as stack:
        yield lambda *names: stack.enter_context(
            page_server(*[(FIELD_CASES / n).read_text() for n in names], cycle=False)).url


def test_collect_prints_the_per_model_table_and_no_none(serve_file, capsys):
    url = serve_file("09-ray-node-two-models-underscore.prom")
    assert main(["collect", "--target", url, "--once"]) == 0
    out = capsys.readouterr().out
    assert "per model" in out and "bucket layouts differ" in out
    assert "None" not in out and "?" not in out.replace(url, "")


def test_collect_names_the_cause_for_an_http_only_page(serve_file, capsys):
    url = serve_file("10-api-server-count-4-no-vllm-series.prom")
    assert main(["collect", "--target", url, "--once"]) == 1
    err = capsys.readouterr().err
    assert "--api-server-count" in err and "Traceback" not in err


MEDUSA_A, MEDUSA_B = "04-v0-spec-medusa-k16-zero-accept-A.prom", "04-v0-spec-medusa-k16-zero-accept-B.prom"


def medusa_window():
    before = parse((FIELD_CASES / MEDUSA_A).read_text(), url="u", timestamp=1000.0)
    after = parse((FIELD_CASES / MEDUSA_B).read_text(), url="u", timestamp=1030.0)
    return derive(before, after, "t")


def test_v0_medusa_page_without_draft_counter_is_judged_none_accepted():
    """04: Medusa K=16 on vLLM 0.5: 0 of 8,784 drafted tokens accepted; drafts = 8,784 / 16 = 549."""
    from slotune.cli.diagnose import read_config
    from slotune.playbooks.engine import diagnose

    w = medusa_window()
    assert (w.spec_decode_draft_tokens, w.spec_decode_accepted_tokens) == (8784, 0)
    assert w.spec_decode_acceptance_rate == 0 and w.spec_decode_drafts is None  # no draft counter on V0
    d = diagnose([w], server_config=read_config(FIELD_CASES / "04-config-medusa.yaml"))
    f = next(x for x in d.findings if x.playbook == "spec_decode_no_speedup")
    assert f.cause == "none_accepted"
    ev = {e.field: e.value for e in f.evidence}
    assert ev["spec_drafts"] == 549 and ev["spec_k"] == 16
    # a condition the rule writes under two branches is cited once; figures read as figures
    assert len(f.evidence) == len(set(f.evidence)), [e.field for e in f.evidence]
    assert " 1 tokens" not in f.summary and "unknownx" not in f.summary, f.summary
    assert ev["spec_mean_acceptance_length"] == 1.0 and ev["spec_acceptance_rate"] == 0
    # 3 requests finished in the 30-s window: below the floor of 8 for a flag change (review 3) ...
    assert [r.config_delta for r in f.remedies if r.config_delta] == []
    assert "Too few requests to change a flag on: 3 finished" in f.summary, f.summary
    assert "None" not in f.summary and "?" not in f.summary
    # ... and with a caller's lower floor, switching drafting off comes first
    d = diagnose([w], server_config=read_config(FIELD_CASES / "04-config-medusa.yaml"), min_requests=3)
    f = next(x for x in d.findings if x.playbook == "spec_decode_no_speedup")
    assert f.remedies[0].config_delta == {"speculative_config": None}


def test_v0_medusa_page_without_its_config_still_fires_and_says_unknown():
    from slotune.playbooks.engine import diagnose

    d = diagnose([medusa_window()])
    f = next(x for x in d.findings if x.playbook == "spec_decode_no_speedup")
    assert f.cause == "none_accepted"
    assert "K=unknown" in f.summary and "None" not in f.summary and "?" not in f.summary


def test_diagnose_cli_on_the_medusa_pages(serve_file, capsys):
    url = serve_file(MEDUSA_A, MEDUSA_B)
    code = main(["diagnose", "--target", url, "--window", "1", "--json",
                 "--config", str(FIELD_CASES / "04-config-medusa.yaml")])
    assert code == 0
    import json

    d = json.loads(capsys.readouterr().out)
    f = next(x for x in d["findings"] if x["playbook"] == "spec_decode_no_speedup")
    assert f["cause"] == "none_accepted"
    assert {e["field"]: e["value"] for e in f["evidence"]}["spec_drafts"] == 549


@pytest.mark.parametrize("name, cause", [
    ("07-v0-0.5.4-disable-log-stats-help-only.prom", "--disable-log-stats"),
    ("10-api-server-count-4-no-vllm-series.prom", "--api-server-count"),
])
def test_sidecar_on_a_stat_less_page_is_up_with_a_warning_not_down(tmp_path, name, cause):
    """07/10 over real HTTP: every scrape answers 200 without vLLM's stats. The target is up; after
    `down_after` such answers a warning `no_vllm_stats` names the cause; never a `target_down`."""
    from sqlalchemy import select

    from slotune.sidecar.config import load_settings
    from slotune.sidecar.loop import NO_STATS, TARGET_DOWN
    from slotune.sidecar.runtime import Sidecar
    from slotune.store import Finding, open_store
    from tests.support.sidecar import Clock, ticks

    with page_server((FIELD_CASES / name).read_text()) as srv:
        clock = Clock()
        settings = load_settings(None, target=srv.url, data_dir=tmp_path, interval=10, down_after=2)
        sidecar = Sidecar(settings, store=open_store(f"sqlite:///{tmp_path / 'db.sqlite'}"), clock=clock)
        sidecar.start(threads=False)
        try:
            results = ticks(sidecar, clock, 4)
            assert srv.served == 4
            assert [r.new_findings for r in results] == [[], [NO_STATS], [], []]
            assert all(r.ok and r.window is None and cause in (r.error or "") for r in results)
            text = sidecar.metrics_text()[0].decode()
            assert f'slotune_target_up{{target="{srv.url}"}} 1.0' in text
            with sidecar.store.session() as s:
                rows = {f.playbook: f for f in s.scalars(select(Finding))}
            assert set(rows) == {NO_STATS} and TARGET_DOWN not in rows
            assert rows[NO_STATS].severity == "warning" and cause in rows[NO_STATS].summary
            d = sidecar.controller.fresh_diagnosis()
            assert d["status"] == NO_STATS and cause in d["error"]
            ready, _ = sidecar.ready()
            assert ready
        finally:
            sidecar.stop()
