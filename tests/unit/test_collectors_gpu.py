"""The NVML collector. There is no GPU or NVIDIA driver on this host, so a small fake NVML module
stands in for one (the only fake in the collectors' tests); the real pynvml is exercised for the
"unavailable" path, which is what this host really is."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from slotune.collectors.gpu import GpuCollector


class FakeNvmlError(Exception):
    pass


class FakeNvml:
    """Two devices, the second without power readings (like some boards)."""

    def __init__(self, fail_init: bool = False) -> None:
        self.fail_init = fail_init
        self.inits = 0

    def nvmlInit(self):
        self.inits += 1
        if self.fail_init:
            raise FakeNvmlError("Driver Not Loaded")

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100" if h == 0 else "NVIDIA L4"

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=87 if h == 0 else 5, memory=40)

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=(h + 1) * 2**30, total=80 * 2**30, free=0)

    def nvmlDeviceGetPowerUsage(self, h):
        if h == 1:
            raise FakeNvmlError("Not Supported")
        return 350_500  # milliwatts

    def nvmlShutdown(self):
        pass


def test_reads_every_device():
    snap = GpuCollector(nvml=FakeNvml()).read()
    assert snap.available and len(snap.devices) == 2
    a, b = snap.devices
    assert (a.name, a.utilization, a.memory_used_bytes, a.memory_total_bytes, a.power_watts) == (
        "NVIDIA H100", 0.87, 2**30, 80 * 2**30, 350.5)
    assert b.name == "NVIDIA L4" and b.power_watts is None and b.utilization == 0.05
    assert snap.utilization == (0.87 + 0.05) / 2


def test_no_driver_is_unavailable_and_logged_once(caplog):
    nvml = FakeNvml(fail_init=True)
    gpu = GpuCollector(nvml=nvml)
    with caplog.at_level(logging.INFO, logger="slotune.collectors.gpu"):
        first, second = gpu.read(), gpu.read()
    assert not first.available and "Driver Not Loaded" in first.reason and second == first
    assert nvml.inits == 1
    assert len([r for r in caplog.records if "GPU metrics off" in r.getMessage()]) == 1


def test_real_pynvml_on_this_gpu_less_host_is_unavailable():
    snap = GpuCollector().read()
    assert not snap.available and snap.reason.startswith("NVML unavailable")
