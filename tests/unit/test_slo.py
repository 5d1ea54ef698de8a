import math

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
        ("error_rate<=1", r"reads as 100%; write 1% \(or 0.01\)"),  # meant 1 %: no run could miss 100 %
        ("error_rate<=2.5", "write 2.5%"),
        ("ttft_p95<=1s,", "empty SLO target in 'ttft_p95<=1s,': a comma with no target"),
        ("ttft_p95<=1s,,e2e_p95<=2s", "empty SLO target"),
        ("ttft_p95<=1s,ttft_p95<=2s", "twice"),
        (",".join(["ttft_p95<=1s"] * 50_000), "over the limit of 2048"),  # 640 KB: took 11 s once
    ],
)
def test_bad_specs_are_clear_errors(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        SloSpec.parse(text)


def test_a_bare_fraction_and_a_percent_read_alike():
    assert SloSpec.parse("error_rate<=0.01").targets == SloSpec.parse("error_rate<=1%").targets


def test_every_distinct_target_fits_under_the_cap():
    from slotune.slo import LATENCY_METRICS, MAX_SPEC_CHARS, STATS

    every = ",".join([f"{m}_{s}<=1999.999ms" for m in LATENCY_METRICS for s in STATS] + ["error_rate<=99.999%"])
    assert len(every) <= MAX_SPEC_CHARS
    assert len(SloSpec.parse(every).targets) == len(LATENCY_METRICS) * len(STATS) + 1


def test_duplicates_are_found_in_one_pass():
    """Each target is checked against the ones before it by key (a dict), not by counting the list
    for each key: a spec of N targets costs N look-ups. The first repeat is the one named."""
    with pytest.raises(ConfigError, match="'e2e_p95' twice"):
        SloSpec.parse("ttft_p95<=1s,e2e_p95<=1s,e2e_p95<=2s,ttft_p95<=2s")


def test_a_huge_settings_file_is_refused_before_parsing(tmp_path):
    from slotune.settings import SETTINGS_MAX_BYTES, Settings

    big = tmp_path / "settings.yaml"
    big.write_text("slo: '" + "ttft_p95<=1s," * (SETTINGS_MAX_BYTES // 10) + "'\n")
    with pytest.raises(ConfigError, match=f"over the limit of {SETTINGS_MAX_BYTES} bytes"):
        Settings.load(big)


def test_an_interval_end_the_requests_cannot_bound_is_said_so_not_printed_as_zero():
    """A p95 over few requests has no lower bound (quantile_interval: 0) or no upper one (+inf); a
    new user read '[0 ms, 133 ms]' as a measured 0."""
    from slotune.slo import fmt_interval
    from slotune.tuner.confidence import quantile_interval

    few = quantile_interval([0.05 + i / 1000 for i in range(20)], 0.95)  # 20 requests: no upper bound
    assert few[1] == math.inf
    assert fmt_interval("tpot_p95", few) == f"[over {few[0] * 1000:.0f} ms: too few requests for an upper bound]"
    assert fmt_interval("ttft_p95", (0.0, 0.133)) == "[under 133 ms: too few requests for a lower bound]"
    assert fmt_interval("ttft_p95", (0.0, math.inf)) == "[unbounded: too few requests to bound it]"
    assert fmt_interval("ttft_p95", (0.775, 0.825)) == "[775 ms, 825 ms]"
    assert fmt_interval("error_rate", (0.0, 0.013)) == "[0.00%, 1.30%]"  # a share's 0 is a real bound
    assert fmt_interval("ttft_p95", None) == ""
