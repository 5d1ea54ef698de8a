"""Speculation by load: which K pays at which batch size, and whether vLLM can be told.

vLLM 0.32 applies a K-by-batch-size schedule (`speculative_config.num_speculative_tokens_per_batch_size`)
for n-gram drafting on the CPU backend too: the scheduler looks K up for each step from the number of
requests it scheduled (`vllm/v1/core/sched/scheduler.py`, `dynamic_sd_lookup[len(num_scheduled_tokens)]`,
handed on as `SchedulerOutput.num_spec_tokens_to_schedule`), and the model runner's n-gram branch drafts
that many (`vllm/v1/worker/gpu_model_runner.py`, `propose_draft_token_ids`: `NgramProposer.propose(
num_spec_tokens_to_schedule, ...)`), which `CPUModelRunner` inherits without overriding. K=0 drafts
nothing (`_find_longest_matched_ngram_and_propose_tokens` returns no tokens for k <= 0). So the tuner
searches the schedule (`spec_draft_max_batch` in `tuner.space`) and the result also lists the best K
measured at each load the study saw (`k_by_load`).
"""

from __future__ import annotations

from typing import Any

from optuna.trial import FrozenTrial, TrialState

from slotune.tuner.measure import Measurement

ENGINE_APPLIES_SCHEDULE = True
EVIDENCE = ("vllm/v1/core/sched/scheduler.py: Scheduler.schedule looks K up per step "
            "(dynamic_sd_lookup[len(num_scheduled_tokens)]); vllm/v1/worker/gpu_model_runner.py: "
            "propose_draft_token_ids passes it to NgramProposer.propose; CPUModelRunner inherits it")


def draft_k(params: dict[str, Any]) -> int:
    """Tokens a trial drafts per step (0: no speculative decoding), from its `params` user attr."""
    spec = params.get("speculative_config")
    return int(spec.get("num_speculative_tokens") or 0) if isinstance(spec, dict) else 0


def schedule_of(params: dict[str, Any] | None) -> list[list[int]] | None:
    spec = (params or {}).get("speculative_config")
    sched = spec.get("num_speculative_tokens_per_batch_size") if isinstance(spec, dict) else None
    return [list(x) for x in sched] if sched else None


def k_by_load(trials: list[FrozenTrial]) -> list[dict[str, Any]]:
    """Per offered load (a concurrency, else a rate): the K (0 = no drafting) of the measured trial with
    the highest goodput there, among trials that met every SLO (else all measured ones). Shape:
    `[{"concurrency": c | None, "rate": r | None, "best_k": k, "goodput": req/s, "trial": n}]`, by load.
    Empty when no measured trial drafted (nothing was learnt about K)."""
    measured = [t for t in trials if t.state is TrialState.COMPLETE]
    if not any(draft_k(t.user_attrs.get("params") or {}) for t in measured):
        return []
    levels: dict[tuple[Any, Any], list[FrozenTrial]] = {}
    for t in measured:
        m = Measurement.from_attrs(t.user_attrs)
        client = m.client if m is not None else None
        load = (client.concurrency, client.rate) if client is not None else (None, None)
        levels.setdefault(load, []).append(t)
    rows = []
    for (conc, rate), group in levels.items():
        ok = [t for t in group if t.user_attrs.get("feasible")] or group
        best = max(ok, key=lambda t: float(t.user_attrs.get("goodput") or 0.0))
        rows.append({"concurrency": conc, "rate": rate, "best_k": draft_k(best.user_attrs.get("params") or {}),
                     "goodput": float(best.user_attrs.get("goodput") or 0.0), "trial": best.number,
                     "met_slo": bool(best.user_attrs.get("feasible"))})
    return sorted(rows, key=lambda r: (r["concurrency"] or 0, r["rate"] or 0))


def summary(trials: list[FrozenTrial], recommended_params: dict[str, Any] | None) -> dict[str, Any]:
    """The result's `speculation` block: whether the engine applies a K schedule, the recommended
    config's schedule (None: K at every batch size, or no drafting), and `k_by_load`."""
    return {"engine_applies_schedule": ENGINE_APPLIES_SCHEDULE, "evidence": EVIDENCE,
            "schedule": schedule_of(recommended_params), "k_by_load": k_by_load(trials)}
