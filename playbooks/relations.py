"""Which findings exclude or qualify which: the table in `relations.yaml`, and applying it.

Two findings can each follow from their own rule and still contradict each other: "underused,
offer more load" while requests already miss their latency target, or "underused" while the KV
cache is what keeps the batch small. The table says, for such pairs, which finding gives way
(`exclude`) or what it must add (`qualify`). It works on (playbook, cause) pairs, so the engine
applies it to its findings and the sidecar to its own list once its `slo_burn` finding is known.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from slotune.errors import ConfigError, validation_message


class Relation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    finding: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    causes: list[str] | None = None
    against: list[str] = Field(min_length=1)
    effect: Literal["exclude", "qualify"]
    note: str


@lru_cache(maxsize=1)
def builtin_relations() -> tuple[Relation, ...]:
    return load_relations(Path(str(resources.files("slotune.playbooks") / "relations.yaml")))


def load_relations(path: Path) -> tuple[Relation, ...]:
    """The table in a YAML file; errors read `FILE: [index].field: message`."""
    try:
        data = yaml.safe_load(path.read_text()) or []
        return tuple(TypeAdapter(list[Relation]).validate_python(data))
    except ValidationError as exc:
        raise ConfigError(f"{path}: {validation_message(exc)}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def decide(active: Sequence[tuple[str, str | None]],
           relations: Sequence[Relation] | None = None) -> list[tuple[str, str] | None]:
    """For each active finding (playbook id, cause), what the table makes of it: None (kept as is),
    ("exclude", note) or ("qualify", note). Each finding is judged against every other active one;
    the built-in table has no pair that excludes both ways (a unit test holds it to that)."""
    table = builtin_relations() if relations is None else relations
    out: list[tuple[str, str] | None] = [None] * len(active)
    for i, (playbook, cause) in enumerate(active):
        for r in table:
            if r.finding != playbook or (r.causes is not None and cause not in r.causes):
                continue
            others = {p for j, (p, _) in enumerate(active) if j != i}
            hit = next((a for a in r.against if a in others), None)
            if hit is None:
                continue
            if r.effect == "exclude":
                out[i] = ("exclude", f"{playbook} left out while {hit} is active: {r.note}")
                break
            out[i] = ("qualify", r.note)
    return out


def apply_to_dicts(found: list[dict], relations: Sequence[Relation] | None = None) -> tuple[list[dict], list[str]]:
    """The table over findings as dicts (`playbook`, `cause`, `summary`): the kept ones (qualified
    summaries extended) and a note for each excluded one."""
    verdicts = decide([(f.get("playbook", ""), f.get("cause")) for f in found], relations)
    kept: list[dict] = []
    notes: list[str] = []
    for f, v in zip(found, verdicts, strict=True):
        if v is None:
            kept.append(f)
        elif v[0] == "exclude":
            notes.append(v[1])
        else:
            kept.append({**f, "summary": f"{f.get('summary', '')} {v[1]}".strip()})
    return kept, notes
