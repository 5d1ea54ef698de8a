"""Apply-mode decisions, tick by tick without sleeping: canary timing, too little traffic, a config
that does not start, cool-down, one change in flight. The vLLM restart is a stand-in here (it records
the configs it was asked to run): restarts of a real vLLM take ~30 s each, and
tests/integration/test_sidecar_apply.py does them for real (apply, keep, apply worse, roll back)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from slotune.server import StartResult, StartStatus
from slotune.sidecar.apply import Applier, ManagedTarget
from slotune.sidecar.runtime import Sidecar
from slotune.store import ConfigChange, Recommendation
from slotune.vllm_config import VllmConfig
from tests.support.pages import AFTER, UNDER, page
from tests.support.sidecar import make, ticks


class StandInTarget(ManagedTarget):
    def __init__(self, fail: set[int] | None = None) -> None:
        super().__init__(VllmConfig(model="tiny"), Path("."), 1.0)
        self.started: list[VllmConfig] = []
        self.fail = fail or set()  # max_num_seqs values that "do not start"
        self.url: str | None = None  # where "the server" listens (None: wherever the sidecar scrapes)
        self.running = True

    def serving(self) -> tuple[str | None, bool]:
        return self.url, self.running

    def start(self, config: VllmConfig | None = None) -> StartResult:
        cfg = config or self.config
        self.started.append(cfg)
        if cfg.max_num_seqs in self.fail:
            return StartResult(StartStatus.KV_CACHE_TOO_SMALL, "no room", Path("x.log"))
        self.config = cfg
        return StartResult(StartStatus.READY, "ready", Path("x.log"))

    def stop(self) -> None:
        pass


def setup(tmp_path: Path, target: StandInTarget, **apply: object) -> tuple[Sidecar, Applier, object]:
    sc, clock, _ = make(tmp_path, [page(UNDER), page(AFTER)], slo="e2e_p95<=1s", mode="recommend",
                        apply={"canary_seconds": 30, "cooldown_seconds": 100, "min_requests": 5, **apply})
    ticks(sc, clock, 2)  # one window with 40 requests: the baseline
    applier = Applier(sc.settings, sc.store, sc.metrics, sc.controller, target, clock=clock)
    return sc, applier, clock


def approve(sc: Sidecar, delta: dict[str, object]) -> int:
    rid = sc.propose(delta, "test")
    sc.approve(rid)
    return rid


def change(sc: Sidecar) -> list[tuple[str, int | None]]:
    with sc.store.session() as s:
        return [(c.status, c.to_config.get("max_num_seqs")) for c in s.scalars(select(ConfigChange))]


def traffic(sc: Sidecar, clock: object, *pages: str | None) -> None:
    """The new server's scrapes: a fresh script of pages (None: down), ticked through."""
    sc.controller.scrape = type(sc.controller.scrape)(clock, list(pages))
    ticks(sc, clock, len(pages))


def test_canary_keeps_what_it_saw_serving_and_one_change_at_a_time(tmp_path: Path) -> None:
    target = StandInTarget()
    sc, applier, clock = setup(tmp_path, target)
    assert applier.step() is None  # nothing approved
    approve(sc, {"max_num_seqs": 8})
    assert applier.step() == "canary" and target.started[-1].max_num_seqs == 8
    approve(sc, {"max_num_seqs": 4})
    traffic(sc, clock, page(UNDER), page(AFTER))  # the new config serves 40 requests, as before
    clock.advance(9)
    assert applier.step() is None  # canary still running: no second change in flight
    clock.advance(2)
    assert applier.step() == "kept"
    assert change(sc) == [("kept", 8)]
    assert applier.step() is None  # cool-down before the approved second change
    clock.advance(100)
    assert applier.step() == "canary" and [c[1] for c in change(sc)] == [8, 4]


def rolled_back_because(sc: Sidecar) -> str:
    with sc.store.session() as s:
        row = s.scalars(select(ConfigChange)).one()
        assert row.status == "rolled_back", row.status
        return str(row.after["reason"])


def test_a_canary_that_saw_no_traffic_rolls_back(tmp_path: Path) -> None:
    """Once, 3x the canary window without evidence was "kept": no evidence is not evidence of no harm."""
    target = StandInTarget()
    sc, applier, clock = setup(tmp_path, target)
    approve(sc, {"max_num_seqs": 8})
    assert applier.step() == "canary"
    traffic(sc, clock, page(AFTER), page(AFTER))  # scrapes answer, but no request finishes
    clock.advance(31)
    assert applier.step() == "rolled_back"
    assert "no request seen on the new config" in rolled_back_because(sc)
    assert target.started[-1].max_num_seqs is None  # the old config runs again


def test_a_server_that_dies_after_its_health_check_rolls_back(tmp_path: Path) -> None:
    """It passed health, served a window, then went down: its scrapes fail at the canary's end."""
    target = StandInTarget()
    sc, applier, clock = setup(tmp_path, target)
    approve(sc, {"max_num_seqs": 8})
    assert applier.step() == "canary"
    traffic(sc, clock, page(UNDER), page(AFTER), None)
    clock.advance(31)
    assert applier.step() == "rolled_back"
    assert "stopped answering scrapes" in rolled_back_because(sc)


def test_a_server_process_that_exited_rolls_back(tmp_path: Path) -> None:
    target = StandInTarget()
    sc, applier, clock = setup(tmp_path, target)
    approve(sc, {"max_num_seqs": 8})
    assert applier.step() == "canary"
    traffic(sc, clock, page(UNDER), page(AFTER))
    target.running = False
    clock.advance(31)
    assert applier.step() == "rolled_back"
    assert "process exited" in rolled_back_because(sc)


def test_a_server_the_sidecar_does_not_scrape_rolls_back(tmp_path: Path) -> None:
    """A change of port once was kept while the sidecar scraped the old port."""
    target = StandInTarget()
    sc, applier, clock = setup(tmp_path, target)
    approve(sc, {"max_num_seqs": 8})
    assert applier.step() == "canary"
    traffic(sc, clock, page(UNDER), page(AFTER))  # the old port still answers (another server there)
    target.url = "http://127.0.0.1:9999"
    clock.advance(31)
    assert applier.step() == "rolled_back"
    assert "listens at http://127.0.0.1:9999" in rolled_back_because(sc)


def test_a_config_that_does_not_start_is_rolled_back(tmp_path: Path) -> None:
    target = StandInTarget(fail={1})
    sc, applier, _ = setup(tmp_path, target)
    rid = approve(sc, {"max_num_seqs": 1})
    assert applier.step() == "failed"
    assert [c.max_num_seqs for c in target.started] == [1, None]  # tried, then back to the old config
    with sc.store.session() as s:
        row = s.scalars(select(ConfigChange)).one()
        assert row.status == "failed" and row.after["start"] == "kv_cache_too_small"
        assert s.get(Recommendation, rid).status == "rolled_back"
    assert 'outcome="failed"' in sc.metrics_text()[0].decode()


def test_worse_attainment_rolls_back(tmp_path: Path) -> None:
    target = StandInTarget()
    sc, applier, clock = setup(tmp_path, target, cooldown_seconds=0)
    # Make the baseline look perfect, so the canary (40 slow requests again) is clearly worse.
    approve(sc, {"max_num_seqs": 2})
    assert applier.step() == "canary"
    with sc.store.session() as s:
        s.scalars(select(ConfigChange)).one().before = {"score": 1.0, "requests": 40}
    sc.controller.scrape = type(sc.controller.scrape)(clock, [page(UNDER), page(AFTER)])
    ticks(sc, clock, 4)
    assert applier.step() == "rolled_back"
    assert target.started[-1].max_num_seqs is None
    with sc.store.session() as s:
        row = s.scalars(select(ConfigChange)).one()
        assert row.status == "rolled_back" and row.after["score"] == 0.0 and "attainment" in row.after["reason"]


def test_only_tuning_flags_are_applied(tmp_path: Path) -> None:
    """A recommendation that would relaunch with another model, address or environment is refused
    when approved and, stored anyway (by a study or an older version), is rejected, never run."""
    import pytest

    from slotune.errors import ConfigError

    target = StandInTarget()
    sc, applier, _ = setup(tmp_path, target)
    sc.managed = target  # approve() checks against the managed server's config
    for bad in ({"model": "other"}, {"host": "0.0.0.0"}, {"port": 9999}, {"served_model_name": "x"},
                {"env": {"CUDA_VISIBLE_DEVICES": "1"}}):
        with pytest.raises(ConfigError, match="tuning flags only"):
            sc.propose({"max_num_seqs": 8, **bad}, "test")
        with sc.store.session() as s:
            rec = Recommendation(target=sc.controller.target, status="pending", source="study", reason="", evidence={},
                                 config={"model": "tiny", "max_num_seqs": 8, **bad})
            s.add(rec)
            s.flush()
            rid = rec.id
        with pytest.raises(ConfigError, match="tuning flags only"):
            sc.approve(rid)
        with sc.store.session() as s:
            s.get(Recommendation, rid).status = "approved"  # approved before the check existed
        assert applier.step() == "rejected"
        with sc.store.session() as s:
            assert "tuning flags only" in s.get(Recommendation, rid).reason
    assert target.started == [] and change(sc) == []
    assert sc.propose({"max_num_seqs": 8, "model": "tiny"}, "same model: no change") > 0
