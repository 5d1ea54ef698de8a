"""How a trial is named in words, the same in the progress lines, the terminal tables and report.html:
its flags (`fmt_params`: `max_num_seqs=1 speculative_config=ngram/K=4`) and why it ran (`why_tried`,
`trial_label`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SCHEDULE = "num_speculative_tokens_per_batch_size"  # vLLM's K by batch size: [[first, last, K], ...]


def fmt_flag(k: str, v: Any) -> str:
    """`k=v`; a speculative config as `method/K=k` (and `/batch:1-4:K4,...` for a schedule)."""
    if isinstance(v, dict):
        sched = v.get(SCHEDULE)
        # one token, no blanks, so a wrapped line never splits it
        by_batch = "/batch:" + ",".join(f"{a}-{b}:K{n}" for a, b, n in sched) if sched else ""
        v = f"{v.get('method')}/K={v.get('num_speculative_tokens')}{by_batch}"
    return f"{k}={v}"


def fmt_params(p: Mapping[str, Any]) -> str:
    """A trial's tuned flags on one line; '(vLLM defaults)' when it tunes none."""
    return " ".join(fmt_flag(k, v) for k, v in p.items()) if p else "(vLLM defaults)"


def why_tried(ua: Mapping[str, Any]) -> str:
    """Why a queued trial ran, in a few words for the trials table: the playbook whose remedy it is
    (and the trial it builds on), or the redraw it replaces; "" for the baseline and sampled trials.
    `ua`: the trial's user attrs."""
    if ua.get("remedy"):
        playbook = str(ua["remedy"]).split(":", 1)[0]
        on_top = f", on top of trial {ua['follows']}" if ua.get("follows") is not None else ""
        return f"remedy of {playbook}{on_top}"
    if ua.get("instead_of") is not None:
        return f"instead of trial {ua['instead_of']}'s redraw"
    return ""


def trial_label(origin: str, ua: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """A trial's first progress line: where it came from and what it serves, e.g. 'neighbour, instead
    of trial 5's redraw: max_num_seqs=1' or 'remedy of slow_decode_small_batch, on top of trial 0:
    speculative_config=ngram/K=4'."""
    why = why_tried(ua)
    where = why if why.startswith(origin) else ", ".join(w for w in (origin, why) if w)
    return f"{where}: {fmt_params(params)}"
