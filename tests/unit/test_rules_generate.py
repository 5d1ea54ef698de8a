"""The rule generator (slotune.rules), the committed rule files, and `slotune rules`."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from slotune import rules
from slotune.cli.main import main
from slotune.errors import ConfigError
from slotune.slo import DEFAULT_SLO, SloSpec
from tests.support.paths import FIXTURES, REPO

RULES_DIR = REPO / "deploy" / "prometheus" / "rules"


def test_committed_rule_files_are_up_to_date() -> None:
    """The files Prometheus loads are exactly what the generator writes (for DEFAULT_SLO)."""
    for name, render in rules.RULE_FILES.items():
        assert (RULES_DIR / name).read_text() == render(), (
            f"{name} is stale: run `slotune rules --write-dir deploy/prometheus/rules`")
    assert f"# SLO: {SloSpec.parse(DEFAULT_SLO)}" in (RULES_DIR / "slo.yml").read_text()


def test_bucket_table_matches_real_vllm_histograms() -> None:
    """The `le` bounds the generator picks from are the ones vLLM 0.32 exposes."""
    page = (FIXTURES / "vllm-0.32-cpu-after-load.prom").read_text()
    for sli, hist in rules.HISTOGRAMS.items():
        les = re.findall(rf'^{re.escape(hist)}_bucket{{[^}}]*le="([^"]+)"', page, re.MULTILINE)
        bounds = sorted({float(x) for x in les if x != "+Inf"})
        assert tuple(bounds) == rules.BUCKETS[sli], sli


@pytest.mark.parametrize(("sli", "threshold", "bound"), [
    ("ttft", 0.5, 0.5),  # exactly a bound
    ("ttft", 0.3, 0.5),  # between bounds: the next one up
    ("ttft", 0.0005, 0.001),
    ("e2e", 2.0, 2.0),
    ("tpot", 0.03, 0.05),
])
def test_pick_bucket_at_or_above(sli: str, threshold: float, bound: float) -> None:
    assert rules.pick_bucket(sli, threshold) == bound


def test_pick_bucket_beyond_the_largest_bound_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no ttft histogram bucket"):
        rules.pick_bucket("ttft", 5000)


@pytest.mark.parametrize(("bound", "matches", "not_matches"), [
    (2.0, ["2", "2.0", "2.00"], ["20", "2.5", "12"]),
    (0.5, ["0.5", "0.50"], ["0.05", "0.25", "5"]),
    (0.001, ["0.001"], ["0.0015", "0.01"]),
])
def test_le_matcher_accepts_both_float_spellings(bound: float, matches: list[str], not_matches: list[str]) -> None:
    # The matcher is written for a PromQL string literal: undo its escaping, then anchor as Prometheus does.
    regex = re.compile(rules.le_matcher(bound).replace("\\\\", "\\"))
    assert all(regex.fullmatch(m) for m in matches)
    assert not any(regex.fullmatch(m) for m in not_matches)


def test_burn_alerts_follow_the_sre_table() -> None:
    groups, notes = rules.slo_rules(SloSpec.parse("ttft_p99<=1s,error_rate<=1%"))
    alerts = groups[1]["rules"]
    got = {(a["labels"]["slo"], a["labels"]["long_window"], a["labels"]["short_window"], a["labels"]["severity"],
            a["for"]) for a in alerts}
    table = {(w.long, w.short, w.severity, w.for_) for w in rules.SRE_WINDOWS}
    assert got == {(slo, *row) for slo in ("ttft_p99", "error_rate") for row in table}
    for a in alerts:
        assert set(a["annotations"]) == {"summary", "description", "runbook_url"}
    fast = next(a for a in alerts if a["labels"]["slo"] == "ttft_p99" and a["labels"]["long_window"] == "1h")
    assert "ratio_rate1h" in fast["expr"] and "ratio_rate5m" in fast["expr"] and "(14.4 * 0.01)" in fast["expr"]
    assert notes == []
    err = next(r for r in groups[0]["rules"] if r["labels"]["slo"] == "error_rate" and r["record"].endswith("rate5m"))
    assert 'finished_reason="error"' in err["expr"]


def test_unreachable_tiers_and_means_are_left_out_with_a_note() -> None:
    groups, notes = rules.slo_rules(SloSpec.parse("ttft_p50<=1s,tpot_mean<=50ms"))
    tiers = {(a["labels"]["long_window"]) for a in groups[1]["rules"]}
    assert tiers == {"3d"}  # 50 % budget: only the 1x tier is below 100 % bad requests
    assert any("tpot_mean" in n and "mean" in n for n in notes)
    assert sum("omitted" in n for n in notes) == 3


def test_every_alert_has_annotations_and_severity() -> None:
    for name in rules.RULE_FILES:
        for group in yaml.safe_load((RULES_DIR / name).read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert rule["labels"]["severity"] in {"page", "ticket"}
                    assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])
                else:
                    assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]


def test_cli_prints_and_writes(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["rules", "--slo", "ttft_p95<=1ms"]) == 0
    out = capsys.readouterr().out
    assert out == rules.render_slo("ttft_p95<=1ms")
    assert main(["rules", "--slo", DEFAULT_SLO, "--write-dir", str(tmp_path / "r"), "--out", str(tmp_path / "s.yml")]) == 0
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == sorted(rules.RULE_FILES)
    assert (tmp_path / "s.yml").read_text() == (RULES_DIR / "slo.yml").read_text()


def test_cli_bad_spec_is_one_line_error(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["rules", "--slo", "ttft_p95<=5000s"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no ttft histogram bucket") and err.count("\n") == 1
    assert main(["rules", "--slo", "nonsense"]) == 1


needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (make system-packages)")


@needs_promtool
def test_promtool_checks_every_rule_file_and_the_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Also a non-default spec, so the generator is checked beyond the committed file.
    extra = tmp_path / "extra.yml"
    extra.write_text(rules.render_slo("ttft_p99<=300ms,tpot_p95<=50ms,itl_p99<=100ms,e2e_p50<=4s,error_rate<=0.5%"))
    files = [str(p) for p in sorted(RULES_DIR.glob("*.yml"))] + [str(extra)]
    proc = subprocess.run(["promtool", "check", "rules", *files], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run(["promtool", "check", "config", str(REPO / "deploy/prometheus/prometheus.yml")],
                          check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
@pytest.mark.parametrize("test_file", sorted((REPO / "deploy/prometheus/tests").glob("*.yaml")), ids=lambda p: p.name)
def test_promtool_rule_unit_tests(test_file) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.run(["promtool", "test", "rules", str(test_file)], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
