"""The sidecar's own cost. Two figures, printed (not asserted):

1. Scrape rate: how many targets one sidecar can scrape per second. One full loop tick per target
   (HTTP GET of a real ~55 KB vLLM /metrics page, parse, window, SLO figures, playbooks, SQLite
   write), back to back for `--rate-seconds`, against a local HTTP server serving a real capture
   from /work/shared/fixtures. Also the bare scrape+parse rate.
2. Footprint: a real `slotune sidecar` process scraping one target every second for `--minutes`:
   its CPU (share of one core, from /proc utime+stime) and resident memory, sampled every 10 s,
   with the RSS trend over the second half (flat = no leak). Target: under 2 % of a core.
   The target is the capture server, or `--target URL` (e.g. a real vLLM), or `--vllm` to start the
   tiny-model vLLM here under a light load (run it under `flock /tmp/slotune/vllm.lock`).

    .venv/bin/python bench/bench_sidecar.py --minutes 10 [--target URL | --vllm]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from slotune.server import free_port

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the testing package (tests.support) is not installed: read it from the checkout
from tests.support.http_servers import page_server  # noqa: E402
from tests.support.pages import SPEC_AFTER, SPEC_UNDER, page  # noqa: E402
from tests.support.paths import CACHE  # noqa: E402
from tests.support.sidecar_process import SidecarProcess  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def scrape_rate(target: str, seconds: float) -> tuple[float, float]:
    """(full ticks per second, bare scrape+parse per second) against `target`."""
    from slotune.collectors.exposition import parse
    from slotune.sidecar.config import load_settings
    from slotune.sidecar.runtime import Sidecar
    from slotune.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(None, target=target, data_dir=tmp, windows=10)
        sc = Sidecar(settings, store=open_store(f"sqlite:///{tmp}/bench.db"))
        sc.start(threads=False)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            sc.controller.tick()
            n += 1
        ticks = n / (time.perf_counter() - t0)
        sc.stop()
    with httpx.Client() as client:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            parse(client.get(f"{target}/metrics").text, url=target)
            n += 1
        bare = n / (time.perf_counter() - t0)
    return ticks, bare


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def footprint(target: str, minutes: float, workdir: Path) -> dict[str, object]:
    sidecar = SidecarProcess({"target": target, "host": "127.0.0.1", "port": free_port(), "interval": 1,
                              "data_dir": str(workdir / "data"), "log_level": "warning"}, workdir)
    try:
        try:
            proc = sidecar.start(timeout=60).proc
        except AssertionError as exc:
            raise SystemExit(f"sidecar did not start; see {sidecar.log_path}") from exc
        assert proc is not None
        time.sleep(5)  # past start-up (imports, first scrape)
        samples: list[tuple[float, float, float]] = []  # (wall, cpu s, rss MiB)
        end = time.monotonic() + minutes * 60
        while True:
            samples.append((time.monotonic(), _cpu_seconds(proc.pid), _rss_mib(proc.pid)))
            if time.monotonic() >= end:
                break
            time.sleep(min(10.0, max(end - time.monotonic(), 0.1)))
        metrics = httpx.get(f"{sidecar.url}/metrics", timeout=5).text
    finally:
        sidecar.stop()
    wall = samples[-1][0] - samples[0][0]
    cpu = samples[-1][1] - samples[0][1]
    rss = [s[2] for s in samples]
    half = samples[len(samples) // 2:]
    slope = 0.0
    if len(half) >= 2 and half[-1][0] > half[0][0]:
        slope = (half[-1][2] - half[0][2]) / ((half[-1][0] - half[0][0]) / 60)
    scrapes = next((float(ln.split()[-1]) for ln in metrics.splitlines() if ln.startswith("slotune_scrapes_total{")), 0)
    errors = next((float(ln.split()[-1]) for ln in metrics.splitlines()
                   if ln.startswith("slotune_scrape_errors_total{")), 0)
    return {"wall_s": wall, "cpu_core_pct": 100 * cpu / wall if wall else float("nan"), "rss_start_mib": rss[0],
            "rss_end_mib": rss[-1], "rss_max_mib": max(rss), "rss_median_mib": statistics.median(rss),
            "rss_slope_second_half_mib_per_min": slope, "scrapes": scrapes, "scrape_errors": errors,
            "samples": len(samples)}


class _LightLoad:
    """One completion at a time, with a pause: windows carry data without loading the host."""

    def __init__(self, base_url: str) -> None:
        self.base_url, self.stop = base_url, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=60) as c:
            while not self.stop.wait(1.0):
                with contextlib.suppress(httpx.HTTPError):
                    c.post("/v1/completions", json={"model": "tiny", "prompt": "hello " * 20, "max_tokens": 16})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the footprint run")
    ap.add_argument("--rate-seconds", type=float, default=10.0, help="length of the scrape-rate run")
    ap.add_argument("--target", help="scrape this URL in the footprint run instead of the capture server")
    ap.add_argument("--vllm", action="store_true", help="start the tiny-model vLLM here as the footprint target")
    args = ap.parse_args()

    with page_server(page(SPEC_UNDER), page(SPEC_AFTER)) as busy:
        # Alternating two captures: every window holds requests (the second page of each pair reads
        # as a restart, so its window is the whole since-start history), so the SLO figures and the
        # playbooks have real data to judge: the heavy case.
        busy_ticks, _ = scrape_rate(busy.url, args.rate_seconds)
    with page_server(page(SPEC_UNDER)) as capture, tempfile.TemporaryDirectory() as tmp:
        ticks, bare = scrape_rate(capture.url, args.rate_seconds)
        print(f"scrape rate (one process, real capture pages of {len(page(SPEC_UNDER)) // 1024} KB over local HTTP):")
        print(f"  full loop ticks, windows with data : {busy_ticks:7.1f} targets/s  ({1000 / busy_ticks:.1f} ms per tick)")
        print(f"  full loop ticks, idle target       : {ticks:7.1f} targets/s  ({1000 / ticks:.1f} ms per tick)")
        print(f"  scrape+parse only                  : {bare:7.1f} pages/s    ({1000 / bare:.1f} ms per page)")
        server = None
        load = None
        target, what = capture.url, "capture server (static real vLLM page)"
        if args.target:
            target, what = args.target, f"--target {args.target}"
        elif args.vllm:
            from slotune.model import build_tiny_model
            from slotune.server import ManagedServer
            from slotune.vllm_config import VllmConfig

            model = build_tiny_model(CACHE / "models" / "tiny-llama")
            server = ManagedServer(VllmConfig(model=str(model), served_model_name="tiny"), log_dir=Path(tmp))
            result = server.start()
            if not result.ok:
                raise SystemExit(f"vLLM did not start: {result.message}")
            target, what = server.base_url, "real vLLM (tiny model, one request per second)"
            load = _LightLoad(target)
            load.thread.start()
        try:
            fp = footprint(target, args.minutes, Path(tmp))
        finally:
            if load is not None:
                load.stop.set()
            if server is not None:
                server.stop()
    print(f"footprint: `slotune sidecar`, interval 1 s, {args.minutes:g} min, target: {what}")
    print(f"  CPU     : {fp['cpu_core_pct']:.2f} % of one core (target < 2 %)")
    print(f"  RSS     : start {fp['rss_start_mib']:.1f} MiB, median {fp['rss_median_mib']:.1f}, "
          f"max {fp['rss_max_mib']:.1f}, end {fp['rss_end_mib']:.1f}")
    print(f"  RSS trend (second half): {fp['rss_slope_second_half_mib_per_min']:+.3f} MiB/min")
    print(f"  scrapes {fp['scrapes']:.0f}, scrape errors {fp['scrape_errors']:.0f}, samples {fp['samples']}")


if __name__ == "__main__":
    main()
