"""Server-side quantiles that say how precise they are, SLO thresholds as bucket bounds, and the
one definition of the error-rate SLO and of requests in flight."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from slotune.cli.main import main
from slotune.collectors.exposition import parse
from slotune.collectors.histogram import Histogram, locate, summarize
from slotune.collectors.snapshot import Quantiles, Snapshot, quantile_text
from slotune.collectors.vllm_metrics import derive
from slotune.metric_names import DEFAULT_BUCKETS
from slotune.playbooks.engine import diagnose
from slotune.playbooks.facts import build_facts
from slotune.slo import ERROR_FINISH_REASONS, INCONCLUSIVE, SloSpec
from slotune.slo_buckets import (
    flag_for,
    slo_buckets,
    unbounded_targets,
    warnings,
    with_slo_buckets,
)
from slotune.vllm_config import VllmConfig
from tests.support.pages import AFTER, UNDER, page
from tests.support.paths import FIELD_CASES

INF = math.inf
TTFT = DEFAULT_BUCKETS["time_to_first_token"]


def hist(bounds: tuple[float, ...], per_bucket: tuple[float, ...]) -> Histogram:
    counts, c = [], 0.0
    for n in per_bucket:
        c += n
        counts.append(c)
    return Histogram(bounds, tuple(counts), math.nan, c)


# -- where a quantile lies -------------------------------------------------------------------------

def test_locate_gives_the_bucket_the_estimate_was_interpolated_in():
    bounds = (0.3, 0.5, 1.0, INF)
    assert locate(0.5, bounds, (10, 10, 10, 10)) == (0.15, 0.0, 0.3)  # first bucket: from 0
    assert locate(0.5, bounds, (0, 10, 10, 10)) == (0.4, 0.3, 0.5)
    assert locate(0.99, bounds, (0, 0, 0, 10)) == (1.0, 1.0, INF)  # past the last bound


def test_queue_time_in_the_first_bucket_reads_as_under_300_ms():
    """The demo's "queue p50 150 ms / p95 285 ms (mean 0.0 ms)": every queue time lay in (0, 0.3]."""
    snap = derive(parse(page(UNDER), timestamp=1000.0), parse(page(AFTER), timestamp=1010.0), "t")
    q = snap.queue
    assert q is not None and q.p50 == pytest.approx(0.15) and q.bucket("p50") == (0.0, 0.3)
    assert q.coarse("p50") and q.coarse("p95")
    assert quantile_text(q, "p50") == "< 300" and quantile_text(q, "p95") == "< 300"
    d = snap.to_dict()["queue_seconds"]
    assert d["buckets"]["p95"] == [0.0, 0.3] and "p95" in d["coarse"]  # the JSON says so too
    assert Snapshot.from_dict(json.loads(json.dumps(snap.to_dict()))).queue == q


def test_a_figure_in_a_bucket_wider_than_itself_shows_the_bounds():
    q = summarize(hist((0.01, 0.1, 1.0, INF), (0, 10, 0, 0)))  # all in (10 ms, 100 ms]
    assert q is not None and q.coarse("p50") and quantile_text(q, "p50") == "10-100"
    fine = summarize(hist((1.0, 1.1, 2.0, INF), (0, 10, 0, 0)))  # (1.0, 1.1]: 100 ms wide at ~1 s
    assert fine is not None and not fine.coarse("p50") and quantile_text(fine, "p50") == "1050.0"
    over = summarize(hist((0.1, 1.0, INF), (0, 0, 5)))
    assert over is not None and quantile_text(over, "p50") == "> 1000"


def test_collect_table_shows_bucket_bounds_not_invented_figures(capsys):
    from rich.console import Console

    from slotune.cli.collect import render

    snap = derive(parse(page(UNDER), timestamp=1000.0), parse(page(AFTER), timestamp=1010.0), "t")
    console = Console(width=200, record=True)
    console.print(render(snap))
    queue_row = next(line for line in console.export_text().splitlines() if line.startswith("│ queue"))
    assert "< 300" in queue_row and "150.0" not in queue_row


# -- SLO checks never decided inside the straddling bucket ----------------------------------------

def figures(bucket: tuple[float, float | None], value: float) -> dict:
    return {"ttft_seconds": {"p95": value, "buckets": {"p95": list(bucket)}}}


@pytest.mark.parametrize(("bucket", "value", "status"), [
    ((0.25, 0.5), 0.2875, INCONCLUSIVE),  # 0.3 inside (0.25, 0.5]: the buckets cannot tell
    ((0.25, 0.5), 0.45, INCONCLUSIVE),
    ((0.1, 0.25), 0.2, "met"),  # the whole bucket is under the target
    ((0.5, 0.75), 0.6, "missed"),  # the whole bucket is over it
    ((0.25, 0.3), 0.29, "met"),  # the threshold is the bucket's upper bound: decided
])
def test_slo_check_is_inconclusive_only_inside_the_straddling_bucket(bucket, value, status):
    (r,) = SloSpec.parse("ttft_p95<=300ms").evaluate(figures(bucket, value))
    assert r.status == status
    assert r.met is (None if status == INCONCLUSIVE else status == "met")
    assert r.to_dict()["status"] == status


def test_playbooks_do_not_judge_a_target_inside_its_bucket():
    snap = Snapshot("t", 0.0, 10.0, requests_finished=10, ttft=Quantiles(
        p50=0.3, p95=0.45, p99=0.49, mean=0.3, count=10, buckets={"p95": (0.25, 0.5)}))
    slo = SloSpec.parse("ttft_p95<=300ms")
    assert build_facts(snap, slo=slo)["ttft_at_slo"] is None
    d = diagnose([snap], slo=slo)
    assert "high_ttft" not in [f.playbook for f in d.findings]
    (note,) = [n for n in d.notes if INCONCLUSIVE in n]
    assert "ttft_p95" in note and "--custom-histogram-buckets" in note and "0.25" in note
    # The same figure against a target at a bound is judged as before.
    assert "high_ttft" in [f.playbook for f in diagnose([snap], slo=SloSpec.parse("ttft_p95<=250ms")).findings]


def test_sidecar_window_figure_is_inconclusive_inside_the_bucket():
    from slotune.sidecar.windows import slo_figures

    before, after = parse(page(UNDER), timestamp=1000.0), parse(page(AFTER), timestamp=1010.0)
    snap = derive(before, after, "t")
    bucket = snap.e2e.bucket("p95")
    assert bucket == (1.0, 1.5)
    (straddled, decided) = slo_figures(SloSpec.parse("e2e_p95<=1200ms,e2e_p99<=1500ms"), before, after, snap)
    assert straddled.inconclusive and straddled.met is None
    assert not decided.inconclusive and decided.met is False  # p99 in (1.5, 2.0]: over 1.5 s, decided


# -- thresholds as bucket bounds -------------------------------------------------------------------

def test_slotune_adds_the_slo_thresholds_to_vllms_default_buckets():
    slo = SloSpec.parse("ttft_p95<=300ms,e2e_p99<=2s,tpot_p95<=30ms,error_rate<=1%")
    buckets = slo_buckets(slo)
    assert buckets["time_to_first_token"] == sorted({*TTFT, 0.3})
    assert 0.03 in buckets["inter_token_latency"]
    assert "request_latency" not in buckets  # 2 s is a default bound already
    assert [str(t) for t in unbounded_targets(slo)] == ["ttft_p95<=300ms", "tpot_p95<=30ms"]
    assert flag_for(SloSpec.parse("ttft_p95<=500ms")) is None and warnings(SloSpec.parse("ttft_p95<=500ms")) == []


def test_the_flag_is_what_vllm_0_32_accepts():
    from vllm.config.observability import ObservabilityConfig
    from vllm.v1.metrics.buckets import histogram_buckets

    cfg = with_slo_buckets(VllmConfig(model="m"), SloSpec.parse("ttft_p95<=300ms,itl_p99<=30ms"))
    args = cfg.flag_args()
    value = json.loads(args[args.index("--custom-histogram-buckets") + 1])
    checked = ObservabilityConfig(custom_histogram_buckets=value).custom_histogram_buckets
    assert 0.3 in histogram_buckets("time_to_first_token", overrides=checked)
    assert 0.03 in histogram_buckets("inter_token_latency", overrides=checked)
    # The defaults copied into slotune are vLLM's own.
    for family, bounds in DEFAULT_BUCKETS.items():
        assert tuple(histogram_buckets(family)) == bounds


def test_a_users_own_buckets_are_kept_and_extended():
    cfg = VllmConfig(model="m", custom_histogram_buckets={"time_to_first_token": [0.1, 1.0]})
    out = with_slo_buckets(cfg, SloSpec.parse("ttft_p95<=300ms"))
    assert out.custom_histogram_buckets == {"time_to_first_token": [0.1, 0.3, 1.0]}
    with pytest.raises(Exception, match="strictly increasing"):
        VllmConfig(model="m", custom_histogram_buckets={"time_to_first_token": [1.0, 0.1]})


def test_managed_server_starts_vllm_with_the_slo_bounds(tmp_path: Path):
    from slotune.server import ManagedServer

    server = ManagedServer(VllmConfig(model="m"), log_dir=tmp_path, slo=SloSpec.parse("ttft_p95<=300ms"),
                           apply_platform_defaults=False)
    assert "0.3" in server.effective_config().serve_command()
    plain = ManagedServer(VllmConfig(model="m"), log_dir=tmp_path, apply_platform_defaults=False)
    assert "--custom-histogram-buckets" not in plain.effective_config().serve_command()


def test_rules_say_the_threshold_is_no_bound_and_count_exactly_where_it_is(tmp_path: Path, capsys):
    out = tmp_path / "slo.yml"
    assert main(["rules", "--slo", "ttft_p95<=300ms", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "0.3 s is not a bucket bound" in err and "--custom-histogram-buckets" in err
    text = out.read_text()
    assert 'le=~"0\\\\.30*"' in text and 'le=~"0\\\\.50*"' in text  # exact bound first, lenient fallback
    assert main(["rules", "--slo", "ttft_p95<=500ms", "--out", str(out)]) == 0
    assert "not a bucket bound" not in capsys.readouterr().err


@pytest.mark.parametrize("spec, fragment", [
    ("e2e_mean<=1s", "no burn-rate alert for e2e_mean<=1s"),
    ("error_rate<=0%", "a zero error budget cannot burn"),
    ("itl_p50<=1s", "the 1h/5m tier (14.4x) would need more than 100 % bad requests; omitted"),
])
def test_rules_say_on_stderr_what_they_cannot_alert_on(spec: str, fragment: str, tmp_path: Path, capsys):
    assert main(["rules", "--slo", spec, "--out", str(tmp_path / "slo.yml")]) == 0
    assert fragment in capsys.readouterr().err


# -- one definition per fact -----------------------------------------------------------------------

def test_error_rate_is_one_definition_in_collectors_rules_and_sidecar():
    from slotune import rules
    from slotune.sidecar.windows import slo_figures

    assert ERROR_FINISH_REASONS == ("error",)
    text = (page(AFTER).replace('finished_reason="abort",model_name="tiny-llama"} 0.0',
                                'finished_reason="abort",model_name="tiny-llama"} 3.0')
            .replace('finished_reason="error",model_name="tiny-llama"} 0.0',
                     'finished_reason="error",model_name="tiny-llama"} 2.0'))
    after = parse(text, timestamp=10.0)
    snap = derive(None, after, "t")
    aborts, errors = snap.finished_by_reason["abort"], snap.finished_by_reason["error"]
    assert (aborts, errors) == (3, 2)
    assert snap.error_rate == pytest.approx(errors / snap.requests_finished)  # aborts not counted
    (fig,) = slo_figures(SloSpec.parse("error_rate<=1%"), None, after, snap)
    assert fig.bad == pytest.approx(errors)
    expr = rules.bad_ratio_expr(SloSpec.parse("error_rate<=1%").targets[0], "5m")
    assert 'finished_reason="error"' in expr and "abort" not in expr


def test_requests_in_flight_are_bounded_by_the_window_and_the_gauges():
    text = (FIELD_CASES / "01-ray-serve-ray_vllm-colon.prom").read_text()
    before = parse(text.replace("request_success_total", "x_total").replace("e2e_request_latency", "y"), timestamp=0.0)
    after = parse(text, timestamp=7.0)
    snap = derive(before, after, "t")  # one 16.4 s request finished in a 7 s window
    assert snap.in_flight_cap == pytest.approx(1.0)
    assert build_facts(snap)["mean_concurrency"] == pytest.approx(1.0)  # Little's law alone: 2.35


def test_requests_in_flight_are_bounded_by_the_gauges_under_steady_load():
    before, after = parse(page(UNDER), timestamp=1000.0), parse(page(AFTER), timestamp=1010.0)
    little = build_facts(derive(before, after, "t"))["mean_concurrency"]
    assert little == pytest.approx(5.83, abs=0.01)  # the after-page had drained (0 running): no gauge bound

    def running(text: str, n: int) -> str:
        import re

        return re.sub(r'(vllm:num_requests_running\{engine="0",model_name="tiny-llama"\}) \S+', rf"\1 {n}.0", text)

    b, a = parse(running(page(UNDER), 2), timestamp=1000.0), parse(running(page(AFTER), 2), timestamp=1010.0)
    snap = derive(b, a, "t")
    assert snap.in_flight_cap == 2 and build_facts(snap)["mean_concurrency"] == 2


# -- the advice never reads "None" (docs/collectors.md) ---------------------------------------------

def _without_e2e_bound(text: str, le: str) -> str:
    """The page as a server without that e2e bound writes it (an older vLLM, or custom buckets)."""
    return "\n".join(ln for ln in text.splitlines()
                     if not ("e2e_request_latency_seconds_bucket{" in ln and f'le="{le}"' in ln)) + "\n"


def test_collect_on_an_older_servers_buckets_names_its_bounds_never_none(capsys):
    """01 (vLLM 0.6 under Ray Serve): its e2e buckets lack 2 s, vLLM 0.32's defaults have it."""
    from tests.support.http_servers import page_server

    with page_server((FIELD_CASES / "01-ray-serve-ray_vllm-colon.prom").read_text()) as srv:
        assert main(["collect", "--target", f"{srv.url}/metrics", "--once", "--slo", "e2e_p95<=2s"]) == 0
    err = capsys.readouterr().err
    assert "None" not in err
    assert "e2e_p95<=2s: 2 s is not a bucket bound of this server's request_latency histogram " \
           "(between the bounds 1 s and 2.5 s)" in err
    advice = next(ln for ln in err.splitlines() if "make the thresholds bucket bounds" in ln)
    flag = json.loads(advice.split("--custom-histogram-buckets '")[1].split("'")[0])
    assert flag == {"request_latency": [1.0, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0]}  # its own + 2 s
    assert "older vLLM" in advice


def test_a_straddled_default_bound_is_explained_never_none(fixtures_dir):
    """The window's e2e buckets lack 1.5 s (vLLM 0.32's defaults have it): p95 lies in (1, 2], the
    target is inconclusive, and the note says why instead of printing a flag of None."""
    pages = [_without_e2e_bound((fixtures_dir / n).read_text(), "1.5") for n in (UNDER, AFTER)]
    snap = derive(parse(pages[0], timestamp=1000.0), parse(pages[1], timestamp=1010.0), "t")
    d = diagnose([snap], slo=SloSpec.parse("e2e_p95<=1.5s"))
    note = next(n for n in d.notes if "inconclusive" in n)
    assert "None" not in note and "older vLLM" in note and "1.5 s" in note
    assert all("None" not in ln for ln in warnings(SloSpec.parse("e2e_p95<=1.5s"),
                                                   {"e2e": [0.3, 0.5, 0.8, 1.0, 2.0, 2.5, 5.0]}))
