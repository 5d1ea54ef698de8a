"""The sidecar's settings: one pydantic-settings root, read from a YAML file with environment
variables on top (`SLOTUNE_` prefix, `__` for nesting: `SLOTUNE_APPLY__CANARY_SECONDS=120`).

Precedence, highest first: explicit keyword arguments (tests, CLI), environment, the YAML file,
the defaults here. Everything is validated at start; a bad value becomes one `ConfigError` line that
names the key. Secrets (`api_token`, `webhook_secret`, a receiver's `secret`) are `SecretStr`:
their repr is `**********`, so logging the settings never leaks them.

This module sits in the lowest layer, beside `slotune.slo` and `slotune.paths` and independent of
them: it imports only pydantic and the standard library. The SLO text is parsed, and the data
directory defaulted, by `slotune.sidecar.config.load_settings`, which every entry point uses.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from slotune.errors import ConfigError, validation_message
from slotune.files import load_yaml

Mode = Literal["observe", "recommend", "apply"]
Event = Literal["finding", "alert", "recommendation", "config_change"]
EVENTS: tuple[str, ...] = ("finding", "alert", "recommendation", "config_change")

# A settings file is a page of keys; megabytes of it are a mistake, refused before YAML parses them.
SETTINGS_MAX_BYTES = 1 << 20

# The YAML file the settings being built read from (a context variable, so `load()` stays reentrant).
_YAML_FILE: ContextVar[Path | None] = ContextVar("slotune_settings_file", default=None)


def _http_url(v: str) -> str:
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http(s)://HOST[:PORT][/path] URL, got {v!r}")
    return v


# Values shipped as placeholders (.env.example and the like): a secret that is one of them once case,
# blanks and punctuation are dropped ("Change Me", "REPLACE_ME", "<your-token>"), or that still holds an
# unexpanded `${VAR}`, is refused, so a copied example never becomes a live credential.
PLACEHOLDER_SECRETS = frozenset({"changeme", "changeit", "replaceme", "yourtoken", "yoursecret", "secret",
                                 "password", "token", "xxx", "todo", "example", "placeholder"})


def _is_placeholder(value: str) -> bool:
    if "${" in value:
        return True
    return "".join(ch for ch in value.lower() if ch.isalnum()) in PLACEHOLDER_SECRETS


def _real_secret(v: SecretStr | None, what: str) -> SecretStr | None:
    """An empty secret is no secret (compose's `${VAR:-}` sets one); a placeholder is refused."""
    if v is None or not v.get_secret_value().strip():
        return None
    if _is_placeholder(v.get_secret_value()):
        raise ValueError(f"{what} is an example placeholder or an unexpanded ${{VAR}}; set a long random value "
                         "(e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReceiverSettings(_Strict):
    """Where notifications go. `format`: generic JSON or a Slack-compatible message."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    url: str
    format: Literal["json", "slack"] = "json"
    events: list[Event] = Field(default_factory=lambda: list(EVENTS))
    secret: SecretStr | None = Field(default=None, description="overrides webhook_secret for this receiver")
    timeout: float = Field(default=5.0, gt=0, le=60)

    _url = field_validator("url")(_http_url)

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: SecretStr | None) -> SecretStr | None:
        return _real_secret(v, "the receiver's secret")


class ManagedSettings(_Strict):
    """The vLLM server slotune starts and owns (apply mode): the model and its vllm serve flags."""

    model: str = Field(min_length=1)
    flags: dict[str, Any] = Field(default_factory=dict, description="VllmConfig fields, e.g. max_num_seqs")
    startup_timeout: float = Field(default=240.0, gt=0)


class ApplySettings(_Strict):
    canary_seconds: float = Field(default=120.0, gt=0, description="how long a new config is watched")
    cooldown_seconds: float = Field(default=900.0, ge=0, description="minimum time between two changes")
    baseline_windows: int = Field(default=5, ge=1, description="windows before a change used as 'before'")
    min_requests: int = Field(default=5, ge=1, description="requests the canary must see to be judged")
    tolerance: float = Field(default=0.02, ge=0, le=1, description="attainment drop still accepted")
    auto: bool = Field(default=False, description="apply recommendations without approval")


class OutboxSettings(_Strict):
    poll_seconds: float = Field(default=1.0, gt=0)
    backoff_initial_seconds: float = Field(default=1.0, gt=0)
    backoff_max_seconds: float = Field(default=300.0, gt=0)
    max_attempts: int = Field(default=50, ge=1, description="then the message is kept but given up")
    batch: int = Field(default=20, ge=1)


class RetentionSettings(_Strict):
    """How long rows are kept; older ones are deleted every `every_seconds`. Findings, recommendations,
    config changes, trials, undelivered messages (dead letters included) and the snapshots findings
    point to are kept."""

    snapshot_days: float = Field(default=14.0, gt=0, description="server snapshots (one per window)")
    delivered_days: float = Field(default=7.0, gt=0, description="delivered notifications")
    alert_receipt_days: float = Field(default=7.0, gt=0, description="alerts remembered for de-duplication")
    every_seconds: float = Field(default=3600.0, gt=0, description="how often to prune")


class Settings(BaseSettings):
    """Everything `slotune sidecar` reads. See docs/sidecar.md for each key."""

    model_config = SettingsConfigDict(env_prefix="SLOTUNE_", env_nested_delimiter="__", extra="forbid",
                                      validate_default=True)

    target: str | None = Field(default=None, description="the vLLM base URL to scrape (or its /metrics URL)")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    interval: float = Field(default=15.0, gt=0, le=3600, description="seconds between scrapes")
    backend: Literal["cpu", "gpu"] | None = Field(
        default=None, description="the target's vLLM backend; None: NVML, else assumed (this host's build for a "
                                  "loopback target, a GPU for a remote one; the diagnosis notes it)")
    scrape_timeout: float = Field(default=5.0, gt=0, le=300)
    slo: str | None = Field(default=None,
                            description="SLO spec, e.g. 'ttft_p95<=500ms,e2e_p95<=2s'; None: slotune.slo's default")
    mode: Mode = "observe"
    data_dir: Path | None = None
    database_url: str | None = None
    api_token: SecretStr | None = None
    alert_token: SecretStr | None = Field(
        default=None, description="what Alertmanager's webhook presents (bearer, or basic-auth password)")
    webhook_secret: SecretStr | None = None
    unsigned_delivery: bool = Field(default=False, description="send notifications unsigned when no secret is set")
    protect_reads: bool = Field(default=False, description="reads need the bearer token too")
    receivers: list[ReceiverSettings] = Field(default_factory=list)
    windows: int = Field(default=10, ge=1, le=1000, description="rolling windows kept for the playbooks")
    persist_windows: int = Field(default=3, ge=1, description="windows a finding must last to act on it")
    playbook_files: list[Path] = Field(default_factory=list,
                                       description="extra playbook YAML files or directories (same id: replaces)")
    down_after: int = Field(default=2, ge=1, description="failed scrapes in a row that make target_down")
    max_alert_bytes: int = Field(default=1_000_000, ge=1024, description="largest accepted webhook body")
    max_alerts_per_request: int = Field(default=100, ge=1, le=1000,
                                        description="most alerts one Alertmanager request may carry (413 above)")
    managed: ManagedSettings | None = None
    apply: ApplySettings = Field(default_factory=ApplySettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("target")
    @classmethod
    def _target(cls, v: str | None) -> str | None:
        return None if v is None else _http_url(v)

    @field_validator("slo")
    @classmethod
    def _slo(cls, v: str | None) -> str | None:
        # Only blankness here (slotune.slo is on this floor, not below it); the sidecar parses the spec.
        if v is not None and not v.strip():
            raise ValueError("empty SLO spec: leave 'slo' out for the default, or write targets like "
                             "'ttft_p95<=500ms,e2e_p95<=2s'")
        return v

    @field_validator("api_token", "alert_token", "webhook_secret")
    @classmethod
    def _secrets(cls, v: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        return _real_secret(v, info.field_name or "secret")

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.mode == "apply" and self.managed is None:
            raise ValueError("mode 'apply' needs a 'managed' server (model and flags) for slotune to restart")
        if self.managed is None and self.target is None:
            raise ValueError("give 'target' (the vLLM URL to watch) or a 'managed' server")
        names = [r.name for r in self.receivers]
        if len(set(names)) != len(names):
            raise ValueError("receiver names must be unique")
        unsigned = [r.name for r in self.receivers if r.secret is None and self.webhook_secret is None]
        if unsigned and not self.unsigned_delivery:
            raise ValueError(f"webhook_secret: not set, and receiver(s) {', '.join(unsigned)} have no secret of "
                             "their own to sign notifications with: set SLOTUNE_WEBHOOK_SECRET (or the receiver's "
                             "secret), or unsigned_delivery: true to send them unsigned on purpose")
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _YamlSource(settings_cls)

    # -- derived -------------------------------------------------------------------------------------

    def secret_for(self, receiver: ReceiverSettings) -> str:
        secret = receiver.secret or self.webhook_secret
        return secret.get_secret_value() if secret is not None else ""

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> Settings:
        """Validate the file (if any) + environment + overrides; ConfigError names the bad key."""
        file = Path(path) if path is not None else None
        if file is not None and not file.is_file():
            raise ConfigError(f"settings file {file} not found")
        token = _YAML_FILE.set(file)
        try:
            return cls(**overrides)
        except ValidationError as exc:
            where = f" in {file}" if file else ""
            raise ConfigError(f"bad settings{where}: {validation_message(exc.errors())}") from None
        except SettingsError as exc:  # an environment variable of a list or mapping that is not JSON
            field = re.search(r'field "([^"]+)"', str(exc))
            name = f"SLOTUNE_{field.group(1).upper()}" if field else "a SLOTUNE_* variable"
            raise ConfigError(f"bad settings: {name} must be JSON (a list or an object)") from None
        finally:
            _YAML_FILE.reset(token)


class _YamlSource(PydanticBaseSettingsSource):
    """The YAML file given to `Settings.load`, as a mapping; nothing when there is none."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        file = _YAML_FILE.get()
        if file is None:
            return {}
        data = load_yaml(file, what="settings file", max_bytes=SETTINGS_MAX_BYTES)
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(f"settings file {file}: expected a mapping of keys, got {type(data).__name__}")
        return data
