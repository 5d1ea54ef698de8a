"""slotune's own tables (all prefixed `slotune_`, apart from Optuna's) and a session factory."""

from slotune.store.db import Store, check_url, open_store, shown_url, sqlite_file, sqlite_tables
from slotune.store.models import (
    MAX_ID,
    OPEN_FINDING,
    AlertReceipt,
    Base,
    ChangeStatus,
    ConfigChange,
    Finding,
    FindingStatus,
    OutboxMessage,
    Recommendation,
    RecommendationStatus,
    Snapshot,
    TrialRecord,
    TrialRowState,
)

__all__ = [
    "MAX_ID",
    "OPEN_FINDING",
    "AlertReceipt",
    "Base",
    "ChangeStatus",
    "ConfigChange",
    "Finding",
    "FindingStatus",
    "OutboxMessage",
    "Recommendation",
    "RecommendationStatus",
    "Snapshot",
    "Store",
    "TrialRecord",
    "TrialRowState",
    "check_url",
    "open_store",
    "shown_url",
    "sqlite_file",
    "sqlite_tables",
]
