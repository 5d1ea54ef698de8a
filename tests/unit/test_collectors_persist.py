"""Snapshots into the real SQLite store and back."""

from __future__ import annotations

from slotune import store as db
from slotune.collectors.exposition import parse
from slotune.collectors.persist import load_snapshot, save_snapshot
from slotune.collectors.snapshot import GpuSnapshot
from slotune.collectors.vllm_metrics import derive
from slotune.store import open_store
from tests.support.pages import AFTER, UNDER, page


def test_save_and_load(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    snap = derive(parse(page(UNDER), timestamp=1_795_479_000.0), parse(page(AFTER), timestamp=1_795_479_010.0),
                  "http://127.0.0.1:8000", gpu=GpuSnapshot(False, "no NVML"))
    sid = save_snapshot(store, snap, study_name="s1", trial_number=3)
    with store.session() as s:
        row = s.get(db.Snapshot, sid)
        assert (row.target, row.source, row.study_name, row.trial_number) == ("http://127.0.0.1:8000", "server", "s1", 3)
        assert row.window_end.timestamp() == 1_795_479_010.0
        assert row.data["e2e_seconds"]["count"] == 40 and row.data["gpu"] is None
    assert load_snapshot(store, sid) == snap
    assert load_snapshot(store, sid + 100) is None
    store.dispose()
