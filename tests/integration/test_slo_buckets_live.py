"""A managed vLLM started for an SLO gets the SLO's thresholds as histogram bucket bounds
(`--custom-histogram-buckets`), so server-side attainment is exact (real vLLM, tiny model)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from slotune.collectors.exposition import parse
from slotune.collectors.vllm_metrics import derive
from slotune.loadgen.runner import run_load
from slotune.loadgen.workload import Workload
from slotune.server import ManagedServer
from slotune.sidecar.windows import slo_figures
from slotune.slo import SloSpec
from slotune.vllm_config import VllmConfig

pytestmark = pytest.mark.integration

SLO = SloSpec.parse("ttft_p95<=300ms")
# The client's TTFT adds the HTTP round trip and its own scheduling to the server's: a request the
# client saw under 300 ms was under it on the server; one the server saw under it reached the client
# within this much more (generous for a busy 2-core host).
CLIENT_SLACK_S = 0.1


def test_managed_server_for_ttft_300ms_has_the_bound_and_exact_attainment(tiny_model: Path, tmp_path: Path) -> None:
    server = ManagedServer(VllmConfig(model=str(tiny_model), served_model_name="tiny"), log_dir=tmp_path,
                           startup_timeout=400.0, slo=SLO)
    result = server.start()
    assert result.ok, f"vLLM did not start: {result.status.value}: {result.message}"
    try:
        url = server.base_url
        before = parse(httpx.get(url + "/metrics", timeout=10).text, url=url)
        (ttft,) = before.histograms["ttft"].values()
        assert 0.3 in ttft.bounds and 0.25 in ttft.bounds and 0.5 in ttft.bounds  # added, defaults kept
        load = run_load(url, "tiny", Workload.fixed(256, 8), concurrency=6, num_requests=30, seed=3)
        after = parse(httpx.get(url + "/metrics", timeout=10).text, url=url)
    finally:
        server.stop()
    assert load.completed == 30
    snap = derive(before, after, url)
    (fig,) = slo_figures(SLO, before, after, snap)
    assert fig.total == 30 and not fig.inconclusive
    server_good = fig.total - fig.bad
    client = [r.ttft for r in load.records if r.ok and r.ttft is not None]
    under = sum(1 for t in client if t <= 0.3)
    near = sum(1 for t in client if t <= 0.3 + CLIENT_SLACK_S)
    assert under <= server_good <= near, (sorted(client), fig)
    assert fig.attainment == pytest.approx(server_good / 30)
