"""What the API needs from the running sidecar. `slotune.sidecar.runtime.Sidecar` implements it; the
API never imports the sidecar (the two are independent layers), the CLI hands one to `create_app`."""

from __future__ import annotations

from typing import Any, Protocol

from slotune.settings import Settings
from slotune.store import Store


class SidecarService(Protocol):
    settings: Settings
    store: Store

    def ready(self) -> tuple[bool, str]: ...

    def status(self) -> dict[str, Any]: ...

    def metrics_text(self) -> tuple[bytes, str]: ...

    def diagnosis(self) -> dict[str, Any]:
        """A fresh diagnosis of the target (never raises; a down target says so)."""

    def notify(self, kind: str, event: dict[str, Any]) -> list[str]:
        """Queue a notification to every subscribed receiver; returns the message ids."""

    def notify_alerts(self, event: dict[str, Any], keys: list[str | None]) -> tuple[list[str], int]:
        """Queue one `alert` notification per receiver for the alerts of `event` not seen before
        (`keys[i]` identifies `event["alerts"][i]`; None: cannot tell, always sent), in one
        transaction. Returns the message ids and how many alerts were duplicates."""

    def retry_dead(self, receiver: str | None = None) -> int:
        """Dead letters (of one receiver, or all) queued again; returns how many."""

    def propose(self, config: dict[str, Any], reason: str) -> int: ...

    def approve(self, recommendation_id: int) -> dict[str, Any] | None: ...

    def start_study(self, request: dict[str, Any]) -> dict[str, Any]: ...

    @property
    def studies(self) -> Any: ...
