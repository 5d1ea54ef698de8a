import pytest

from slotune.errors import ConfigError
from slotune.slo import SloSpec


def test_parse_and_print_round_trip():
    spec = SloSpec.parse("ttft_p95<=500ms, tpot_p95<=50ms,e2e_p99<=2s,error_rate<=1%")
    assert [t.key for t in spec.targets] == ["ttft_p95", "tpot_p95", "e2e_p99", "error_rate"]
    assert spec.get("ttft").threshold == pytest.approx(0.5)
    assert spec.get("error_rate").threshold == pytest.approx(0.01)
    assert SloSpec.parse(str(spec)) == spec


def test_request_thresholds_take_the_highest_percentile_per_metric():
    spec = SloSpec.parse("ttft_p50<=200ms,ttft_p99<=1s,tpot_p95<=50ms")
    assert spec.request_thresholds() == pytest.approx({"ttft": 1.0, "tpot": 0.05})
    assert spec.vllm_goodput_args() == ["ttft:1000", "tpot:50"]


def test_evaluate_against_collector_json():
    spec = SloSpec.parse("ttft_p95<=500ms,e2e_p95<=2s")
    res = spec.evaluate({"ttft_seconds": {"p95": 0.7}, "e2e_seconds": None})
    assert [(r.target.key, r.met) for r in res] == [("ttft_p95", False), ("e2e_p95", None)]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        ("ttft<=500ms", "statistic"),
        ("ttft_p95<500ms", "bad SLO target"),
        ("latency_p95<=1s", "unknown metric"),
        ("ttft_p95<=500", "unit"),
        ("error_rate<=150%", "between"),
        ("ttft_p95<=1s,ttft_p95<=2s", "twice"),
    ],
)
def test_bad_specs_are_clear_errors(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        SloSpec.parse(text)
