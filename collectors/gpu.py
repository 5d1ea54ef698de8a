"""GPU figures from NVML (`pynvml`, the nvidia-ml-py package): utilization, memory, power per device.

Where there is no NVIDIA driver or no GPU (this CPU host, a laptop), `read()` returns
`GpuSnapshot(available=False, reason=...)`, logs the reason once, and never raises: the rest of the
collector keeps working. The NVML module is a constructor argument so tests can feed a fake.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

from slotune.collectors.snapshot import GpuDevice, GpuSnapshot

log = logging.getLogger(__name__)


def _default_nvml() -> ModuleType:
    import pynvml  # imported late: a missing wheel is "unavailable", not an import error

    return pynvml


class GpuCollector:
    def __init__(self, nvml: Any | None = None) -> None:
        self._nvml = nvml
        self._ready = False
        self._unavailable: str | None = None

    def _init(self) -> str | None:
        """Initialise NVML once; the reason it is unavailable, or None."""
        if self._ready or self._unavailable is not None:
            return self._unavailable
        try:
            if self._nvml is None:
                self._nvml = _default_nvml()
            self._nvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - NVMLError (no driver, no library), ImportError: all mean "no GPU here"
            self._unavailable = f"NVML unavailable: {exc.__class__.__name__}: {exc}".rstrip(": ")
            log.info("GPU metrics off: %s", self._unavailable)
            return self._unavailable
        self._ready = True
        return None

    def read(self) -> GpuSnapshot:
        reason = self._init()
        if reason is not None:
            return GpuSnapshot(available=False, reason=reason)
        nvml = self._nvml
        try:
            count = nvml.nvmlDeviceGetCount()
        except Exception as exc:  # noqa: BLE001 - any NVML failure is a reason shown, not a crash
            return GpuSnapshot(available=False, reason=f"NVML device count failed: {exc}")
        if count == 0:
            return GpuSnapshot(available=False, reason="NVML found no GPU")
        return GpuSnapshot(available=True, devices=tuple(self._device(i) for i in range(count)))

    def _device(self, index: int) -> GpuDevice:
        nvml = self._nvml

        def get(fn: Callable[[], Any]) -> Any:
            # One unsupported query (power on some boards) must not hide the others.
            try:
                return fn()
            except Exception:  # noqa: BLE001 - NVML raises its own error per unsupported query
                return None

        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        name = get(lambda: nvml.nvmlDeviceGetName(handle))
        util = get(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
        mem = get(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        power_mw = get(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        return GpuDevice(
            index=index,
            name=name.decode() if isinstance(name, bytes) else str(name or ""),
            utilization=None if util is None else util.gpu / 100.0,
            memory_used_bytes=None if mem is None else int(mem.used),
            memory_total_bytes=None if mem is None else int(mem.total),
            power_watts=None if power_mw is None else power_mw / 1000.0,
        )

    def close(self) -> None:
        if self._ready:
            with contextlib.suppress(Exception):  # a failed shutdown changes nothing here
                self._nvml.nvmlShutdown()
            self._ready = False
