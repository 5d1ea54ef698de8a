"""Where slotune keeps its files: one data directory, overridable with SLOTUNE_DATA_DIR."""

from __future__ import annotations

import os
from pathlib import Path

from slotune.errors import ConfigError


def _mkdir(path: Path) -> Path:
    """The directory, made if missing. Raises `ConfigError` when it cannot be (a file is in the way,
    no permission, a read-only disk)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        hint = " (set SLOTUNE_DATA_DIR to a directory)" if isinstance(exc, (FileExistsError, NotADirectoryError)) else ""
        raise ConfigError(f"data directory {path}: cannot create ({exc.strerror or exc}){hint}") from None
    return path


def data_dir() -> Path:
    root = os.environ.get("SLOTUNE_DATA_DIR")
    path = Path(root) if root else Path.home() / ".local" / "share" / "slotune"
    return _mkdir(path)


def default_database_url() -> str:
    return f"sqlite:///{data_dir() / 'slotune.db'}"


def logs_dir() -> Path:
    path = data_dir() / "logs"
    return _mkdir(path)


def models_dir() -> Path:
    path = data_dir() / "models"
    return _mkdir(path)
