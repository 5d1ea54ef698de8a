"""slotune's own queue of the trials it chooses (remedies, follow-ups, a redraw's replacement), fed to
Optuna's queue one trial at a time, so the most promising goes first.

Optuna runs queued trials oldest first (`Study.enqueue_trial`) and cannot reorder its queue. The
tuner wants its remedies depth first: when a remedy becomes the study's new best, the remedies its
own findings propose on top of it (`study.enqueue_followups`) run before the baseline's remaining
alternatives, as an engineer fixes one bottleneck, measures, and fixes the next one on the better
config. On issue 16's grid (the real model, concurrency 2, `tpot_p95<=60ms`) the baseline's findings
propose n-gram drafting and `--max-num-seqs 1`; the n-gram trial's own finding proposes
`--max-num-seqs 1` on top of it, the grid's best. First in, first out, that best was trial 4 of 12;
depth first it is trial 3.

So these trials wait in a study attr (`PENDING`, a list in run order), and `feed` moves the first
into Optuna's queue only when that queue holds no waiting trial and the trial budget has room.
Follow-ups and a redraw's replacement go to the front (`push(..., first=True)`), the baseline's
remedies to the back. Every worker feeds after each of its trials (and when it starts), so with
several workers the next free one finds a waiting trial; and nothing is handed to Optuna while the
budget has no room for it (the trials that spent it, run or wait: `study.room_left`), where it would
linger in the report as waiting. One race remains: Optuna's `ask` is not under slotune's lock, so
another worker's sampler trial started in the same instant as a feed may spend the last of the
budget; the fed trial then waits in Optuna's queue (the trials table shows it `queued:`) and a
resume runs it first. Call `push` and `feed` under the study's claims lock (`study.claims_lock`):
the attr is read, changed and written back.

An entry is `{"params": {dimension: value}, "attrs": {user attr: value}}`: what `enqueue_trial`
gets, kept as JSON in the study's storage so a resumed study (or another worker) goes on with it.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from slotune.tuner.storage import uncached

PENDING = "pending_trials"  # study attr: the trials slotune queued and not yet handed to Optuna, in run order


def pending(study: optuna.Study) -> list[dict[str, Any]]:
    """The trials waiting their turn, first to run first: `[{"params", "attrs"}]`."""
    return list(study.user_attrs.get(PENDING) or [])


def known_params(study: optuna.Study) -> list[dict[str, Any]]:
    """Every config the study has tried, runs or holds in either queue (a failed trial's aside: its
    worker died, and its config may run again): the params of each trial (a queued one's fixed params)
    and of each pending entry. Read past Optuna's trial cache, which can miss another worker's changes."""
    return _tried(uncached(study).get_all_trials(study._study_id, deepcopy=False)) + [e["params"] for e in pending(study)]


def _tried(trials: list[FrozenTrial]) -> list[dict[str, Any]]:
    return [t.params or t.system_attrs.get("fixed_params") or {} for t in trials if t.state is not TrialState.FAIL]


def push(study: optuna.Study, entries: list[dict[str, Any]], *, first: bool) -> None:
    """Add `entries` (`[{"params", "attrs"}]`, in their own order) to the front (`first`) or the back
    of the pending queue."""
    if not entries:
        return
    waiting = pending(study)
    study.set_user_attr(PENDING, [*entries, *waiting] if first else [*waiting, *entries])


def feed(study: optuna.Study, room: int) -> dict[str, Any] | None:
    """Hand the first pending entry to Optuna's queue, where that queue holds no waiting trial and the
    trial budget has `room` (`study.room_left`). An entry whose config the study has tried meanwhile
    (a sampler's draw, another worker's remedy) is dropped, not run twice. Returns the entry queued,
    or None."""
    if room <= 0:
        return None
    waiting = pending(study)
    if not waiting:
        return None
    trials = uncached(study).get_all_trials(study._study_id, deepcopy=False)
    if any(t.state is TrialState.WAITING for t in trials):
        return None
    tried = _tried(trials)
    queued = None
    while waiting and queued is None:
        entry = waiting.pop(0)
        if entry["params"] not in tried:
            study.enqueue_trial(entry["params"], user_attrs=entry["attrs"])
            queued = entry
    study.set_user_attr(PENDING, waiting)
    return queued
