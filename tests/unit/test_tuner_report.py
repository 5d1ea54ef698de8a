"""Results a person reads at a glance: terminal tables at 80 (and 60) columns, one self-contained HTML
file with its PNGs, the cost per 1,000 output tokens, and `--cost-per-hour` refused when it is not a
price. A study is run on real Optuna storage (SQLite) with the synthetic measurement of tests.support.tuner;
the verdict's intervals and the K-by-load table are rendered both as today's data has them (absent)
and in the shapes the confidence and search-space work add (`goodput_ci`, per-SLO `ci`/`outcome`,
`k_by_load`), injected here because those producers land separately."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from slotune.cli.main import main
from slotune.tuner.html_report import fmt_value
from slotune.tuner.measure import RatePoint
from slotune.tuner.report import (
    StudyResult,
    cost_per_1k_tokens,
    fmt_usd,
    k_by_load_of,
    load,
    render,
    slo_outcomes,
    summarize,
    write_outputs,
)
from slotune.tuner.study import TuneSpec, run_study
from tests.support.paths import model_dir
from tests.support.tuner import FakeMeasure

SLO = "ttft_p95<=500ms,tpot_p95<=50ms"
# Long flags, so the flags column has something to wrap: the case that once wrapped one letter a line.
WIDE = {"max_num_seqs": 64, "enable_chunked_prefill": True, "enable_prefix_caching": True,
        "speculative_method": "ngram", "num_speculative_tokens": 4}


@dataclasses.dataclass
class TokenMeasure(FakeMeasure):
    """FakeMeasure plus an output-token throughput of 100 tokens/s per req/s of goodput."""

    def __call__(self, config, progress=None):
        m = super().__call__(config, progress)
        if not m.ok:
            return m
        return dataclasses.replace(m, client=dataclasses.replace(m.client, output_throughput=100.0 * m.goodput))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> TuneSpec:
    tmp = tmp_path_factory.mktemp("study")
    spec = TuneSpec(model="/models/tiny", input_len=32, output_len=16, slo=SLO, trials=5, rate=4.0,
                    storage=f"sqlite:///{tmp}/s.db", study_name="s", remeasure_top=1, enqueue=[WIDE])
    run_study(spec, measure=TokenMeasure())
    return spec


class ConfVerdict:
    """The verdict as the confidence work shapes it: every sample gains `goodput_ci`, `confidence`
    and per-SLO `{"estimate", "ci", "threshold", "outcome"}` (the rest delegates to the real one)."""

    def __init__(self, verdict: Any) -> None:
        self._v = verdict

    def __getattr__(self, name: str) -> Any:
        return getattr(self._v, name)

    def to_dict(self) -> dict[str, Any]:
        d = self._v.to_dict()
        for trial, s in d["samples"].items():
            lo = 0.5 + int(trial) / 100
            s.update(goodput_ci=[lo, lo + 0.25], confidence=0.95,
                     slo={"ttft_p95": {"estimate": 0.45, "ci": [0.41, 0.49], "threshold": 0.5, "outcome": "met"},
                          "tpot_p95": {"estimate": 0.05, "ci": [0.04, 0.06], "threshold": 0.05,
                                       "outcome": "inconclusive"}})
        return d


K_BY_LOAD = [{"concurrency": 1, "best_k": 4, "goodput": 1.5}, {"concurrency": 16, "best_k": 0, "goodput": 7.25}]


def with_conf(result: StudyResult) -> StudyResult:
    result.verdict = ConfVerdict(result.verdict)  # type: ignore[assignment]
    result.k_by_load = K_BY_LOAD  # type: ignore[attr-defined]  # as the search-space work adds it
    for r in result.rows:  # each trial's wall time, as the search-space work adds it
        r["wall_seconds"] = 1234.5 if r["trial"] == 0 else 98.0
    return result


def screen(result: StudyResult, width: int) -> list[str]:
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    render(result, console)
    return console.export_text().splitlines()


@pytest.mark.parametrize("width", [80, 60])
@pytest.mark.parametrize("conf", [False, True], ids=["today", "with-intervals"])
def test_tables_stay_readable_at_narrow_widths(study: TuneSpec, width: int, conf: bool) -> None:
    result = summarize(study.storage, "s")
    if conf:
        result = with_conf(result)
    lines = screen(result, width)
    command = (result.recommended or {}).get("command") or ""
    # The tables fit; the serve line is meant to be copied whole, and the verdict and the baseline's and
    # best's lines stay one line each (a log file kept them split at 80 columns, grep found half).
    prose = ("study s: ", "trials: ", "wall time: ", "verdict: ", "hint: ", "baseline: ", "best tuned: ", "cost (")
    assert all(len(line) <= width for line in lines if line != command and not line.startswith(prose))
    assert [ln for ln in lines if ln.startswith("verdict: ")] == [f"verdict: {result.verdict.message}"]
    assert next(ln for ln in lines if ln.startswith("trials: ")).endswith(" running, 0 waiting")  # one line
    assert not any("…" in line for line in lines), "a header or figure was cut"
    rows = {r["trial"]: r for r in result.rows}
    for trial, r in rows.items():
        # the figures of a trial stay on one line: number, origin, state, SLO outcome
        slo = "met" if r["feasible"] else "missed"
        ws = r.get("wall_seconds")  # the column appears once trials were timed (the tuner times every trial)
        wall = rf"\s+{ws:.0f}" if isinstance(ws, (int, float)) else ""
        assert any(re.match(rf"^\s*{trial}\s+{r['origin']}\s+{r['state']}\b.*\b{slo}{wall}\s*$", ln)
                   for ln in lines), trial
        # every flag=value pair is whole on one line (never split letter by letter)
        for k, v in r["params"].items():
            pair = f"{k}=" + (f"{v['method']}/K={v['num_speculative_tokens']}" if isinstance(v, dict) else str(v))
            assert any(pair in ln for ln in lines), (pair, width)
    # The baseline's SLOs in the verdict's words (its own run said "SLO met" where the verdict, on
    # the same p95, said "inconclusive"): TTFT p95 0.8 s misses 500 ms, TPOT 20 ms meets 50 ms.
    text = " ".join(" ".join(lines).split())
    outcomes = "ttft_p95 met, tpot_p95 inconclusive" if conf else "ttft_p95 missed, tpot_p95 met"
    assert f"(3 runs: 3, 3, 3), SLO at 95%: {outcomes} best tuned: trial 1" in text, text
    # What it tuned for, before the tables (the HTML's header line says it too).
    assert lines[0] == f"study s: model /models/tiny, workload fixed:32x16, SLO {SLO}, offered rate 4 req/s, " \
                       "40 requests a trial", lines[0]
    if conf:
        assert any("[0.5, 0.75] at 95%" in ln for ln in lines)
        assert any(re.match(r"^\s*concurrency 16\s+off\s+7\.25\s*$", ln) for ln in lines)  # the K-by-load table


@pytest.mark.parametrize(("interval", "feasible", "text"), [
    ({}, True, "SLO met on its run"),  # not judged by the verdict (stored without its requests)
    ({"slo": {}}, False, "SLO missed on its run"),
    ({"confidence": 0.95, "slo": {"a": {"outcome": "met"}, "b": {"outcome": "met"}}}, False, "every SLO met at 95%"),
    ({"confidence": 0.95, "slo": {"a": {"outcome": "met"}, "b": {"outcome": "inconclusive"}}}, True,
     "SLO at 95%: a met, b inconclusive"),
])
def test_a_trials_slos_read_as_the_verdict_judged_them(interval, feasible, text):
    assert slo_outcomes(interval, feasible) == text


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.refs += [(tag, k, v or "") for k, v in attrs if k in ("src", "href", "srcset", "data")]


def write(study: TuneSpec, out: Path, *, conf: bool, cost: float | None = None) -> tuple[StudyResult, str]:
    result = summarize(study.storage, "s")
    if conf:
        result = with_conf(result)
    result.cost_per_hour = cost
    write_outputs(result, load(study.storage, "s"), out)
    return result, (out / "report.html").read_text(encoding="utf-8")


def test_the_html_report_is_one_self_contained_file_with_its_pngs(study: TuneSpec, tmp_path: Path) -> None:
    _, page = write(study, tmp_path, conf=True)
    parser = Links()
    parser.feed(page)
    assert parser.refs, "the page embeds its figures"
    for tag, attr, value in parser.refs:
        assert value.startswith("data:image/png;base64,"), (tag, attr, value[:80])
    assert "link" not in parser.tags and "script" not in parser.tags  # no style sheet or script to fetch
    assert not re.search(r"(https?:)?//[^\s\"'<>]+\.(js|css|png|svg|woff2?)\b", page)
    embedded = [v for _, _, v in parser.refs]
    for name in ("baseline_vs_best", "slo_targets", "goodput_vs_rate", "history"):
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert any(v.endswith(base64.b64encode(png.read_bytes()).decode()) for v in embedded), name


def test_the_html_report_shows_intervals_slos_and_the_serve_line(study: TuneSpec, tmp_path: Path) -> None:
    result, page = write(study, tmp_path, conf=True)
    text = html.unescape(page)
    base, best = result.baseline, result.best
    assert base and best and base["trial"] != best["trial"]
    for e in (base, best):
        lo = 0.5 + e["trial"] / 100
        assert f"[{lo:.3g}, {lo + 0.25:.3g}] at 95 %" in text, e["trial"]  # each one's goodput interval
    for key, threshold in (("ttft_p95", "500 ms"), ("tpot_p95", "50 ms")):
        assert re.search(rf"<td>{key}</td><td class=\"num\">{threshold}</td>", text), key  # target and threshold
    assert "450 ms [410 ms, 490 ms]: met" in text and "50 ms [40 ms, 60 ms]: inconclusive" in text
    # Each side's SLOs as the verdict judged them (the cell said "met" from the trial's own run).
    assert text.count('<td class="inconclusive">SLO at 95%: ttft_p95 met, tpot_p95 inconclusive</td>') == 2
    assert "<th>best tuned</th>" in text
    assert "vllm serve /models/tiny" in best["command"] and best["command"] in text
    assert "best K" in text and "7.25" in text  # the K-by-load table
    assert "USD per 1,000" not in text  # no price given: no cost column


class BareVerdict(ConfVerdict):
    """A verdict without intervals (a study stored before they were computed, or runs kept no requests)."""

    def to_dict(self) -> dict[str, Any]:
        d = self._v.to_dict()
        for s in d["samples"].values():
            for key in ("goodput_ci", "confidence", "slo"):
                s.pop(key, None)
        return d


def test_the_html_report_renders_a_verdict_without_intervals(study: TuneSpec, tmp_path: Path) -> None:
    result = summarize(study.storage, "s")
    result.verdict = BareVerdict(result.verdict)  # type: ignore[assignment]
    write_outputs(result, load(study.storage, "s"), tmp_path)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    text = html.unescape(page)
    assert "none computed" in text
    assert "800 ms: missed" in text and "300 ms: met" in text  # each trial's own SLO figure and outcome
    # the K table appears exactly when the study learnt something about K (some trial drafted)
    assert "500 ms" in text and ("best K" in text) == bool(k_by_load_of(result))
    assert (result.recommended or {})["command"] in text


def test_cost_per_1000_output_tokens(study: TuneSpec, tmp_path: Path) -> None:
    assert cost_per_1k_tokens(3.6, 1000.0) == pytest.approx(0.001)  # $3.6/h at 1,000 tokens/s: $1 per 1M tokens
    assert cost_per_1k_tokens(3.6, 0.0) is None and cost_per_1k_tokens(3.6, None) is None
    result, page = write(study, tmp_path, conf=False, cost=3.5)
    d = result.to_dict()["cost"]
    text = html.unescape(page)
    for side in ("baseline", "recommended"):
        tps = d[side]["output_tokens_per_s"]
        expected = 3.5 / (tps * 3600) * 1000
        assert d[side]["usd_per_1k_output_tokens"] == pytest.approx(expected)
        assert fmt_usd(expected) in text
        assert any(fmt_usd(expected) in ln for ln in screen(result, 80))
    assert "USD per 1,000 output tokens" in text


def test_report_cli_writes_the_html_and_cost_from_storage(study: TuneSpec, tmp_path: Path, capsys) -> None:
    rc = main(["report", "--study", "s", "--storage", study.storage, "--out", str(tmp_path),
               "--cost-per-hour", "2", "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["cost"]["usd_per_hour"] == 2.0 and d["cost"]["recommended"]["usd_per_1k_output_tokens"] > 0
    assert (tmp_path / "report.html").exists() and (tmp_path / "slo_targets.png").exists()


@pytest.mark.parametrize("bad", ["-1", "nan", "inf", "cheap", ""])
@pytest.mark.parametrize("command", ["report", "tune"])
def test_a_bad_cost_per_hour_is_one_line_and_non_zero(study: TuneSpec, bad: str, command: str, tmp_path: Path,
                                                      capsys) -> None:
    # the model is a directory that exists: a missing one would be refused first (test_cli_basics)
    args = {"report": ["report", "--study", "s", "--storage", study.storage],
            "tune": ["tune", "--model", str(model_dir(tmp_path)), "--slo", SLO, "--input-len", "8", "--output-len", "8",
                     "--storage", study.storage, "--study", "never-run"]}[command]
    rc = main([*args, "--cost-per-hour", bad])
    err = capsys.readouterr().err
    assert rc != 0
    assert err.count("\n") == 1 and err.startswith("error: ") and "--cost-per-hour" in err, err


def test_slo_figures_read_in_their_unit() -> None:
    assert fmt_value("ttft_p95", 0.5) == "500 ms" and fmt_value("e2e_p95", 2.5) == "2.50 s"
    assert fmt_value("error_rate", 0.01) == "1.00%" and fmt_value("ttft_p95", None) == "-"


@dataclasses.dataclass
class SweepMeasure(TokenMeasure):
    """Capacity mode: each config's sweep tried 1, 2 and 4 req/s and met the SLOs up to 2."""

    def __call__(self, config, progress=None):
        m = super().__call__(config, progress)
        if not m.ok:
            return m
        scale = m.goodput / 2
        sweep = tuple(RatePoint(rate=r, met=r <= 2, goodput=round(min(r, 2) * scale, 3), request_throughput=r)
                      for r in (4.0, 1.0, 2.0))
        return dataclasses.replace(m, rate=2.0, sweep=sweep)


def test_capacity_mode_draws_every_rate_of_the_sweep(tmp_path: Path) -> None:
    spec = TuneSpec(model="/models/tiny", input_len=32, output_len=16, slo=SLO, trials=3, mode="capacity",
                    storage=f"sqlite:///{tmp_path}/c.db", study_name="c", remeasure_top=0, out_dir=tmp_path / "out")
    result = run_study(spec, measure=SweepMeasure())
    assert [p["rate"] for p in result.baseline["sweep"]] == [4.0, 1.0, 2.0]  # stored with the trial
    text = html.unescape((tmp_path / "out" / "report.html").read_text(encoding="utf-8"))
    rates = re.findall(r"<tr><th>(baseline|best)</th><td class=\"num\">\d+</td>\s*<td class=\"num\">([\d.]+)</td>", text)
    assert [r for label, r in rates if label == "baseline"] == ["1", "2", "4"]  # every rate, in order
    assert "Capacity mode" in text and (tmp_path / "out" / "goodput_vs_rate.png").exists()


def test_pareto_mode_shows_the_front(tmp_path: Path) -> None:
    spec = TuneSpec(model="/models/tiny", input_len=32, output_len=16, slo=SLO, trials=4, pareto=True,
                    storage=f"sqlite:///{tmp_path}/p.db", study_name="p", remeasure_top=0, out_dir=tmp_path / "out")
    result = run_study(spec, measure=TokenMeasure())
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert result.pareto and "Pareto front" in page
    front = page[page.index("Pareto front"):]
    for p in result.pareto:
        assert f'<td class="num">{p["trial"]}</td><td class="num">{p["goodput"]:.3g}</td>' in front
    png = base64.b64encode((tmp_path / "out" / "pareto.png").read_bytes()).decode()
    assert png in front  # the front's figure, embedded
    _, plain = write(study_spec_offered(tmp_path), tmp_path / "plain", conf=False)
    assert "Pareto front" not in plain  # only with --pareto


def test_a_used_output_folder_keeps_no_earlier_studys_outputs(tmp_path: Path) -> None:
    # A --pareto study writes its front into the folder, then a plain one reports into the same
    # folder: pareto.png/html would read as the plain study's. The user's own files stay.
    out = tmp_path / "out"
    spec = TuneSpec(model="/models/tiny", input_len=32, output_len=16, slo=SLO, trials=4, pareto=True,
                    storage=f"sqlite:///{tmp_path}/p.db", study_name="p", remeasure_top=0, out_dir=out)
    run_study(spec, measure=TokenMeasure())
    assert (out / "pareto.png").exists() and (out / "pareto.html").exists()
    (out / "notes.txt").write_text("mine")
    plain = study_spec_offered(tmp_path)
    run_study(plain.model_copy(update={"out_dir": out}), measure=TokenMeasure())
    assert not (out / "pareto.png").exists() and not (out / "pareto.html").exists()
    assert (out / "notes.txt").read_text() == "mine" and (out / "report.html").exists()


def study_spec_offered(tmp_path: Path) -> TuneSpec:
    spec = TuneSpec(model="/models/tiny", input_len=32, output_len=16, slo=SLO, trials=2, rate=4.0,
                    storage=f"sqlite:///{tmp_path}/o.db", study_name="s", remeasure_top=0)
    run_study(spec, measure=TokenMeasure())
    return spec


def test_a_speculation_schedule_reads_as_k_by_batch_size(study: TuneSpec, tmp_path: Path) -> None:
    from slotune.tuner.labels import fmt_params as _fmt_params

    sched = [[1, 4, 4], [5, 256, 0]]
    flags = _fmt_params({"speculative_config": {"method": "ngram", "num_speculative_tokens": 4,
                                                "num_speculative_tokens_per_batch_size": sched}})
    assert flags == "speculative_config=ngram/K=4/batch:1-4:K4,5-256:K0"
    result = summarize(study.storage, "s")
    assert result.best
    result.best["params"] = {"speculative_config": {"method": "ngram", "num_speculative_tokens": 4,
                                                    "num_speculative_tokens_per_batch_size": sched}}
    write_outputs(result, load(study.storage, "s"), tmp_path)
    text = html.unescape((tmp_path / "report.html").read_text(encoding="utf-8"))
    assert "K by batch size" in text
    assert '<td class="num">1-4</td><td class="num">4</td>' in text
    assert '<td class="num">5-256</td><td class="num">off (0)</td>' in text


def test_a_study_with_nothing_measured_still_reads(tmp_path: Path) -> None:
    def refuse(config, progress=None):
        from slotune.tuner.measure import Measurement

        return Measurement(ok=False, status="kv_cache_too_small", reason="kv_cache_too_small: fake")

    spec = TuneSpec(model="/models/tiny", input_len=32, output_len=16, slo=SLO, trials=2, remeasure_top=0,
                    storage=f"sqlite:///{tmp_path}/n.db", study_name="n", out_dir=tmp_path / "out")
    result = run_study(spec, measure=refuse)
    result.cost_per_hour = 1.0
    text = html.unescape((tmp_path / "out" / "report.html").read_text(encoding="utf-8"))
    assert "No config to recommend" in text and "kv_cache_too_small: fake" in text
    assert any("kv_cache_too_small" in ln for ln in screen(result, 60))


def test_intervals_that_are_not_two_numbers_are_shown_as_none(study: TuneSpec, tmp_path: Path) -> None:
    result = summarize(study.storage, "s")

    class Odd(ConfVerdict):
        def to_dict(self) -> dict[str, Any]:
            d = super().to_dict()
            for s in d["samples"].values():
                s["goodput_ci"] = [None, float("nan")]
                s["slo"]["ttft_p95"]["ci"] = None
                s["slo"]["tpot_p95"]["estimate"] = None
            return d

    result.verdict = Odd(result.verdict)  # type: ignore[assignment]
    write_outputs(result, load(study.storage, "s"), tmp_path)
    text = html.unescape((tmp_path / "report.html").read_text(encoding="utf-8"))
    assert "none computed" in text and "450 ms: met" in text and "- [40 ms, 60 ms]: inconclusive" in text
    assert not any("nan" in ln for ln in screen(result, 80))


def test_tune_carries_the_price_to_its_outputs(tmp_path: Path) -> None:
    spec = TuneSpec(model="/models/tiny", input_len=32, output_len=16, slo=SLO, trials=2, remeasure_top=0,
                    storage=f"sqlite:///{tmp_path}/t.db", study_name="t", out_dir=tmp_path / "out", cost_per_hour=7.2)
    result = run_study(spec, measure=TokenMeasure())
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["cost"] == result.to_dict()["cost"] and summary["cost"]["usd_per_hour"] == 7.2
    assert "USD per 1,000 output tokens" in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")


def test_k_by_load_in_the_speculation_block_by_rate(study: TuneSpec, tmp_path: Path) -> None:
    result = summarize(study.storage, "s")
    # the search-space work's shape: `speculation.k_by_load`, a load being a concurrency or a rate
    result.speculation = {"k_by_load": [{"concurrency": None, "rate": 2.0, "best_k": 3, "goodput": 1.9,  # type: ignore[attr-defined]
                                         "trial": 1}]}
    write_outputs(result, load(study.storage, "s"), tmp_path)
    text = html.unescape((tmp_path / "report.html").read_text(encoding="utf-8"))
    assert '<td class="num">2 req/s</td><td class="num">3</td>' in text
    assert any(re.match(r"^\s*2 req/s\s+3\s+1\.9\s*$", ln) for ln in screen(result, 60))


def test_a_queued_trial_shows_the_flags_it_will_try(study: TuneSpec, tmp_path: Path) -> None:
    """A remedy queued but not yet run once read "(vLLM defaults)": its flags are set only when it runs."""
    import sqlite3

    import optuna

    from slotune.tuner.report import summarize

    db = tmp_path / "q.db"
    # SQLite's backup API: a plain file copy would miss what is still in the study's write-ahead log.
    with sqlite3.connect(study.storage.removeprefix("sqlite:///")) as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    url = f"sqlite:///{db}"
    optuna.load_study(study_name="s", storage=url).enqueue_trial(
        {"max_num_seqs": 8, "max_num_batched_tokens": None}, user_attrs={"origin": "remedy"})
    result = summarize(url, "s")
    queued = [r for r in result.rows if r["state"] == "waiting"]
    assert len(queued) == 1 and queued[0]["queued_params"] == {"max_num_seqs": 8}, queued
    lines = screen(result, 80)
    mine = [ln for ln in lines if "queued:" in ln]
    assert len(mine) == 1 and "max_num_seqs=8" in mine[0] and mine[0].split()[0] == str(queued[0]["trial"]), lines


@pytest.mark.parametrize("command", [
    "VLLM_CPU_KVCACHE_SPACE=1 vllm serve /models/m --max-num-seqs 8",
    "vllm serve /models/m --speculative-config '{\"method\": \"ngram\", \"num_speculative_tokens\": 4}'",
])
def test_best_sh_runs_the_serve_line_with_its_environment(command: str, tmp_path: Path) -> None:
    """`best.sh` once said `exec VLLM_CPU_KVCACHE_SPACE=1 vllm serve ...`: sh took the assignment for the
    program (exit 127). Run it with a `vllm` on PATH that prints what it got."""
    import os
    import subprocess

    from slotune.tuner.report import serve_script

    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "vllm"
    fake.write_text('#!/bin/sh\necho "space=${VLLM_CPU_KVCACHE_SPACE:-unset}"\nfor a in "$@"; do echo "arg=$a"; done\n')
    fake.chmod(0o755)
    script = tmp_path / "best.sh"
    script.write_text(serve_script(command, "trial 3 beats vLLM's defaults:\nx1.5"))
    env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}
    run = subprocess.run(["sh", str(script)], capture_output=True, text=True, env={**env, "PATH": f"{bindir}:{env['PATH']}"},
                         check=False, timeout=30)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == ("space=1" if command.startswith("VLLM_CPU") else "space=unset")
    assert lines[1:3] == ["arg=serve", "arg=/models/m"]
    if "speculative" in command:
        assert lines[-1] == 'arg={"method": "ngram", "num_speculative_tokens": 4}'
    assert script.read_text().count("\n") == 3  # shebang, one comment line, the command


def test_goodput_against_rate_draws_the_best_tuned_config_too(tmp_path: Path, monkeypatch) -> None:
    # Its legend had the baseline alone: the plot looked for a side labelled "best", and the report's
    # sides are "baseline" and "best tuned".
    import matplotlib.axes

    from slotune.tuner.html_report import _plot_rate

    drawn: list[str] = []
    original = matplotlib.axes.Axes.plot

    def plot(self, *args, **kw):
        drawn.append(kw.get("label"))
        return original(self, *args, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    points = [{"label": "baseline", "trial": 0, "rate": 2.0, "goodput": 1.5, "measured_rate": 2.0, "met": False},
              {"label": "best tuned", "trial": 3, "rate": 2.0, "goodput": 1.9, "measured_rate": 2.0, "met": True}]
    assert _plot_rate(points, "offered", tmp_path / "rate.png")
    assert "baseline" in drawn and "best tuned" in drawn


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
@pytest.mark.filterwarnings("ignore:optuna.storages._heartbeat.fail_stale_trials is experimental")
@pytest.mark.parametrize("killed", [True, False], ids=["worker killed", "worker alive"])
def test_a_trial_whose_worker_was_killed_reads_as_stale_not_running(study: TuneSpec, killed: bool,
                                                                   tmp_path: Path) -> None:
    """A SIGKILLed `slotune tune` leaves its trial RUNNING in storage (nothing ran to end it); its
    heartbeat stops. The report said '1 running' for good; it now says the worker stopped, from the
    heartbeat's age (a worker's last heartbeat set 10 minutes back stands in for the kill)."""
    import sqlite3

    import optuna

    from slotune.tuner.storage import open_storage

    db = tmp_path / "k.db"
    with sqlite3.connect(study.storage.removeprefix("sqlite:///")) as src, sqlite3.connect(db) as dst:
        src.backup(dst)  # the study's file may hold part of its data in its WAL: a file copy would miss it
    url = f"sqlite:///{db}"
    s = optuna.load_study(study_name="s", storage=open_storage(url))
    running = s.ask()  # a worker's trial, mid-measurement
    s._storage.record_heartbeat(running._trial_id)
    if killed:
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-10 minutes')")
    result = summarize(url, "s")
    r = next(r for r in result.rows if r["trial"] == running.number)
    lines = screen(result, 100)
    counts = next(ln for ln in lines if ln.startswith("trials: "))
    if killed:
        assert r["state"] == "stale" and "no heartbeat for over 60 s: its worker stopped" in r["reason"]
        assert counts.endswith(" 1 running (1 of them stale: its worker stopped), 0 waiting"), counts
        # The next worker fails it and queues its config again (Optuna's retry callback): both rows say so.
        optuna.storages.fail_stale_trials(s)
        result = summarize(url, "s")
        failed = next(r for r in result.rows if r["trial"] == running.number)
        retry = next(r for r in result.rows if r["trial"] > running.number)
        assert failed["state"] == "fail" and failed["reason"] == (
            "its worker stopped (no heartbeat): failed by the next worker on the study; "
            f"its config ran again as trial {retry['trial']}")
        assert retry["state"] == "waiting" and retry["why_tried"].endswith(
            f"retry of trial {running.number}, whose worker stopped"), retry["why_tried"]
    else:
        assert r["state"] == "running" and not r["reason"]
        assert counts.endswith(" 1 running, 0 waiting"), counts


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
@pytest.mark.parametrize(("minutes", "stale"), [(8, False), (12, True)])
def test_staleness_is_judged_by_the_studys_own_heartbeat(tmp_path: Path, minutes: int, stale: bool) -> None:
    """Workers run with `--heartbeat 300` fail a trial after 600 s without one; the report judged it
    by the default 30 s (stale after 60 s) and called a live worker's trial stale."""
    import sqlite3

    import optuna

    from slotune.tuner.storage import open_storage

    spec = TuneSpec(model="/models/tiny", input_len=32, output_len=16, slo=SLO, trials=1, rate=4.0,
                    storage=f"sqlite:///{tmp_path}/h.db", study_name="h", remeasure_top=0, heartbeat_interval=300)
    run_study(spec, measure=TokenMeasure())
    s = optuna.load_study(study_name="h", storage=open_storage(spec.storage, heartbeat_interval=300))
    assert s.user_attrs["heartbeat_interval"] == 300
    running = s.ask()
    s._storage.record_heartbeat(running._trial_id)
    with sqlite3.connect(tmp_path / "h.db") as conn:
        conn.execute(f"UPDATE trial_heartbeats SET heartbeat = datetime('now', '-{minutes} minutes')")
    r = next(r for r in summarize(spec.storage, "h").rows if r["trial"] == running.number)
    assert r["state"] == ("stale" if stale else "running"), r
    if stale:
        assert "no heartbeat for over 600 s" in r["reason"]
