"""Loading the sidecar's settings: `slotune.settings.Settings` plus the checks that need the layers
above it (the SLO grammar, the vLLM flag allow-list), each failure one `ConfigError` line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slotune import paths
from slotune.errors import ConfigError
from slotune.settings import Settings
from slotune.slo import DEFAULT_SLO, SloSpec
from slotune.vllm_config import VllmConfig


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """File + environment + overrides, validated; the SLO and a managed server's flags included."""
    settings = Settings.load(path, **overrides)
    where = f" in {path}" if path else ""
    try:
        slo_of(settings)
    except ConfigError as exc:
        raise ConfigError(f"bad settings{where}: slo: {exc}") from None
    if settings.managed is not None:
        try:
            managed_config(settings)
        except ConfigError as exc:
            raise ConfigError(f"bad settings{where}: managed: {exc}") from None
    return settings


def slo_of(settings: Settings) -> SloSpec:
    return SloSpec.parse(settings.slo or DEFAULT_SLO)


def managed_config(settings: Settings) -> VllmConfig:
    assert settings.managed is not None
    return VllmConfig.from_mapping({"model": settings.managed.model, **settings.managed.flags}, source="managed")


def data_dir(settings: Settings) -> Path:
    if settings.data_dir is None:
        return paths.data_dir()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings.data_dir


def database_url(settings: Settings) -> str:
    return settings.database_url or f"sqlite:///{data_dir(settings) / 'slotune.db'}"
