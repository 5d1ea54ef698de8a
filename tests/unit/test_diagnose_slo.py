"""A diagnosis states each SLO target's outcome, and a target surely missed is never "healthy":
with no playbook firing, the status is `slo_missed`. A figure inside the bucket that straddles the
threshold stays inconclusive (not missed), as in `slotune collect --slo`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slotune.cli.main import main
from slotune.collectors.exposition import parse
from slotune.collectors.vllm_metrics import derive
from slotune.playbooks.engine import diagnose
from slotune.slo import SloSpec
from slotune.vllm_config import VllmConfig
from tests.support.http_servers import page_server
from tests.support.pages import AFTER, UNDER, page
from tests.support.paths import FIELD_CASES


def window(fixtures_dir: Path, before: str = UNDER, after: str = AFTER):
    b = parse((fixtures_dir / before).read_text(), timestamp=1000.0)
    a = parse((fixtures_dir / after).read_text(), timestamp=1001.0)
    return derive(b, a, target="t")


@pytest.mark.parametrize("spec, status, outcome", [
    ("e2e_p95<=1s", "slo_missed", "missed"),  # p95 1.5 s in the (1, 1.5] bucket: wholly over 1 s
    ("e2e_p95<=1.2s", "healthy", "inconclusive at this resolution"),  # the bucket straddles 1.2 s
    ("e2e_p95<=1.5s", "healthy", "met"),
])
def test_a_surely_missed_target_is_not_healthy(fixtures_dir: Path, spec: str, status: str, outcome: str) -> None:
    # 40 requests, e2e p95 1.5 s: no playbook fires on this window (fast steps, little load).
    d = diagnose([window(fixtures_dir)], slo=SloSpec.parse(spec)).to_dict()
    assert d["findings"] == []
    assert d["status"] == status, d["notes"]
    assert [(r["target"], r["status"]) for r in d["slo"]] == [(spec, outcome)]
    assert any("SLO missed" in n for n in d["notes"]) == (status == "slo_missed")


def test_findings_take_precedence_and_the_slo_is_still_listed(fixtures_dir: Path) -> None:
    w = window(fixtures_dir, "vllm-0.32-cpu-specdecode-under-load.prom", "vllm-0.32-cpu-specdecode-after-load.prom")
    d = diagnose([w], server_config=VllmConfig(model="tiny", max_num_seqs=8, max_num_batched_tokens=512)).to_dict()
    assert d["status"] == "findings" and d["findings"]
    assert {r["key"]: r["status"] for r in d["slo"]}["ttft_p95"] == "missed"


def test_field_case_ray_serve_e2e_far_over_the_default_target() -> None:
    """01: one request, e2e p95 19.75 s against the default 2 s; TTFT is met."""
    page01 = parse((FIELD_CASES / "01-ray-serve-ray_vllm-colon.prom").read_text(), url="u", timestamp=1.8e9)
    d = diagnose([derive(None, page01, "t")]).to_dict()
    assert d["status"] == "slo_missed"
    assert {r["key"]: r["status"] for r in d["slo"]} == {"ttft_p95": "met", "e2e_p95": "missed"}


def test_diagnose_cli_prints_the_slo_outcome(capsys: pytest.CaptureFixture[str]) -> None:
    for as_json in (True, False):
        with page_server(page(UNDER), page(AFTER), cycle=False) as srv:
            args = ["diagnose", "--target", srv.url, "--window", "1", "--slo", "e2e_p95<=1s"]
            assert main([*args, "--json"] if as_json else args) == 0
        out = capsys.readouterr().out
        if as_json:
            d = json.loads(out)
            assert d["status"] == "slo_missed"
            assert d["slo"][0]["status"] == "missed" and d["slo"][0]["value"] == 1.5
        else:
            assert "healthy" not in out
            assert "SLO missed" in out
            assert "SLO e2e_p95<=1s: missed (1500.0 ms, in the 1000-1500 ms bucket)" in out
