"""The demo's load sizing (slotune/cli/demo_size.py): probe figures in, sizes out, no server."""

from __future__ import annotations

import pytest

from slotune.cli import demo_size as ds
from slotune.cli.demo_size import Probe, Shape, size_demo, study_runs

# Mean lengths as the demo's seed draws them from ShareGPT at each cap (what demo_shapes measures).
SHAPES = [Shape(512, 128, 75, 112), Shape(256, 64, 57, 60), Shape(128, 32, 23, 32), Shape(64, 16, 23, 16)]
# An AVX2-only 2-core EPYC in bf16 (measured): 27 ms a prompt token, ~85 ms a step alone, 28 s a start.
SLOW = Probe(start_s=28, prefill_s_per_token=0.027, step_s=0.15, concurrency=4)
# A host four times faster.
FAST = Probe(start_s=20, prefill_s_per_token=0.0007, step_s=0.025, concurrency=4)


def test_study_runs_count_the_remeasurement_of_the_default_and_the_best():
    assert [study_runs(t) for t in (0, 1, 2, 3)] == [0, 2, 4, 5]


def test_a_slow_host_gets_shorter_replies_and_still_fits_the_budget():
    size = size_demo(SLOW, SHAPES, remaining_s=440)
    assert size.fits and size.total_s <= 440
    assert size.shape.output_cap < 128  # the full caps would take minutes a window there
    assert ds.MIN_REQUESTS <= size.num_requests <= ds.MAX_REQUESTS
    assert size.window_s <= ds.MAX_WINDOW_S
    assert size.trials >= 1


def test_a_fast_host_keeps_the_full_shape_and_the_most_requests():
    size = size_demo(FAST, SHAPES, remaining_s=440)
    assert size.shape == SHAPES[0] and size.num_requests == ds.MAX_REQUESTS and size.trials == ds.MAX_TRIALS
    assert size.fits


def test_slower_hosts_never_get_more_work():
    sizes = [size_demo(Probe(28, 0.0007 * k, 0.025 * k, 4), SHAPES, remaining_s=440) for k in (1, 2, 4, 8, 16)]
    work = [s.num_requests * s.shape.output_cap for s in sizes]
    assert work == sorted(work, reverse=True) and work[0] > work[-1]


def test_trials_drop_before_windows_get_too_short():
    # Expensive starts: three trials would leave each window under the minimum.
    size = size_demo(Probe(start_s=60, prefill_s_per_token=0.01, step_s=0.1, concurrency=4), SHAPES,
                     remaining_s=440)
    assert size.trials < ds.MAX_TRIALS
    assert ds.window_for(Probe(60, 0.01, 0.1, 4), size.trials, 440) >= ds.MIN_WINDOW_S


def test_explicit_requests_and_trials_are_kept():
    size = size_demo(SLOW, SHAPES, remaining_s=440, num_requests=6, trials=1)
    assert size.num_requests == 6 and size.trials == 1
    # with few requests a larger shape fits the window
    assert size.shape.output_cap >= size_demo(SLOW, SHAPES, remaining_s=440).shape.output_cap


def test_zero_trials_leave_the_whole_budget_to_the_demo_window():
    size = size_demo(SLOW, SHAPES, remaining_s=440, trials=0)
    assert size.trials == 0 and size.total_s == pytest.approx(size.window_s + ds.RUN_OVERHEAD_S + ds.TAIL_S)


def test_a_host_too_slow_for_the_budget_says_so_and_sends_the_floor():
    size = size_demo(Probe(start_s=120, prefill_s_per_token=0.5, step_s=3.0, concurrency=4), SHAPES,
                     remaining_s=440)
    assert not size.fits and size.shape == SHAPES[-1] and size.num_requests == ds.FLOOR_REQUESTS
    assert size.trials == 1


def test_a_single_offered_shape_is_the_one_sent():
    only = [Shape(1024, 256, 300, 200)]
    assert size_demo(SLOW, only, remaining_s=440).shape == only[0]


@pytest.mark.parametrize("bad", [Probe(28, 0.01, 0.0, 4), Probe(28, -1.0, 0.1, 4), Probe(28, 0.01, 0.1, 0)])
def test_bad_probe_figures_are_refused(bad):
    with pytest.raises(ValueError):
        size_demo(bad, SHAPES, remaining_s=440)


def test_no_shape_is_refused():
    with pytest.raises(ValueError):
        size_demo(SLOW, [], remaining_s=440)
