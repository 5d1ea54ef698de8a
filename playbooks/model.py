"""Playbooks as data: the schema of a rule file, and loading the built-in and user files.

A rule file is YAML, in the spirit of a Prometheus alerting rule:

    id: high_ttft
    title: Time to first token above target
    severity: warning
    for: 1                       # consecutive windows the condition must hold
    params: {queue_share_high: 0.5}
    when:                        # all/any of checks {field, op, threshold}; nestable
      all:
        - {field: ttft_at_slo, op: ">", threshold: slo.ttft}
    evidence: [prompt_len_p95]   # further facts to cite
    causes:                      # optional: the first whose `when` holds names the cause
      - {id: queue, summary: "...", when: {all: [...]}}
    remedies:
      - {action: ..., why: ..., set: {enable_chunked_prefill: true}, when: {...}, causes: [prefill]}
      - {action: ..., why: ..., compute: raise_max_num_batched_tokens}
    sample:                      # optional: what a window must hold (beyond sample.yaml's finished
      all: [...]                 # requests) before a flag change is proposed

`threshold` is a number, `slo.<metric>` / `slo.<key>` (the user's SLO, else the default targets)
or `params.<name>` (the playbook's own parameter). Fields are facts from `playbooks.facts.FACTS`.
Every file is validated (unknown keys refused); errors read `FILE: field.path: message`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from slotune.errors import ConfigError, validation_message
from slotune.files import load_yaml
from slotune.playbooks.facts import FACTS
from slotune.playbooks.remedies import COMPUTE
from slotune.slo import LATENCY_METRICS, RATIO_METRICS, STATS
from slotune.vllm_config import VllmConfig

Op = Literal[">", ">=", "<", "<=", "==", "!="]
Severity = Literal["critical", "warning", "info"]
SEVERITIES: tuple[str, ...] = get_args(Severity)  # most severe first: the order findings are listed in

_SLO_NAMES = frozenset(
    [*LATENCY_METRICS, *RATIO_METRICS, *(f"{m}_{s}" for m in LATENCY_METRICS for s in STATS)]
)


# What a remedy may change: any server setting but which model it serves and where it listens.
_CHANGEABLE = frozenset(VllmConfig.model_fields) - {"model", "host", "port"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Check(_Strict):
    """One comparison of a fact with a threshold."""

    field: str
    op: Op
    threshold: float | str
    description: str = ""

    @field_validator("field")
    @classmethod
    def _known_fact(cls, v: str) -> str:
        if v not in FACTS:
            raise ValueError(f"unknown fact {v!r} (see playbooks.facts.FACTS)")
        return v

    @field_validator("threshold")
    @classmethod
    def _named(cls, v: float | str) -> float | str:
        if isinstance(v, str):
            scope, _, name = v.partition(".")
            if scope not in ("slo", "params") or not name:
                raise ValueError(f"threshold {v!r}: a number, 'slo.NAME' or 'params.NAME'")
            if scope == "slo" and name not in _SLO_NAMES:
                raise ValueError(f"threshold {v!r}: unknown SLO name {name!r} (e.g. slo.ttft, slo.e2e_p99)")
        return v


def _kind(v: Any) -> str:
    if isinstance(v, dict):
        return "group" if ("all" in v or "any" in v) else "check"
    return "group" if isinstance(v, Group) else "check"


Condition = Annotated[Union[Annotated[Check, Tag("check")], Annotated["Group", Tag("group")]], Discriminator(_kind)]  # noqa: UP007 (a forward ref)


class Group(_Strict):
    """`all` (every item holds) or `any` (at least one holds) of checks or nested groups."""

    all: list[Condition] | None = None
    any: list[Condition] | None = None

    @model_validator(mode="after")
    def _one(self) -> Group:
        if (self.all is None) == (self.any is None):
            raise ValueError("write exactly one of 'all' or 'any'")
        if not (self.all or self.any):
            raise ValueError("an empty condition list")
        return self

    @property
    def items(self) -> list[Check | Group]:
        return list(self.all if self.all is not None else self.any or [])

    def checks(self) -> Iterable[Check]:
        for item in self.items:
            if isinstance(item, Group):
                yield from item.checks()
            else:
                yield item


Group.model_rebuild()


class Cause(_Strict):
    """One explanation of a finding; the first whose `when` holds (or that has none) is named."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    summary: str
    when: Group | None = None


class Remedy(_Strict):
    action: str
    why: str
    set: dict[str, Any] = Field(default_factory=dict)
    compute: str | None = None
    when: Group | None = None
    causes: list[str] | None = None  # only for these causes

    @field_validator("set")
    @classmethod
    def _fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(v) - _CHANGEABLE)
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a server flag slotune may change")
        return v

    @field_validator("compute")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        if v is not None and v not in COMPUTE:
            raise ValueError(f"unknown remedy computation {v!r} (known: {', '.join(sorted(COMPUTE))})")
        return v


class Playbook(_Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    title: str
    severity: Severity
    for_: int = Field(default=1, ge=1, alias="for")
    summary: str
    params: dict[str, float] = Field(default_factory=dict)
    when: Group
    evidence: list[str] = Field(default_factory=list)
    causes: list[Cause] = Field(default_factory=list)
    remedies: list[Remedy] = Field(default_factory=list)
    # What the window must hold, beyond `sample.yaml`'s finished requests, before this finding may
    # propose a flag change (e.g. drafted tokens for spec decoding); below it the finding still shows.
    sample: Group | None = None
    source: str = Field(default="", exclude=True)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("evidence")
    @classmethod
    def _facts(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in FACTS:
                raise ValueError(f"unknown fact {name!r} (see playbooks.facts.FACTS)")
        return v

    @model_validator(mode="after")
    def _references(self) -> Playbook:
        groups = [self.when, self.sample, *(c.when for c in self.causes), *(r.when for r in self.remedies)]
        for g in groups:
            for check in g.checks() if g is not None else ():
                t = check.threshold
                if isinstance(t, str) and t.startswith("params.") and t[7:] not in self.params:
                    raise ValueError(f"threshold {t!r} names no entry of this playbook's params")
        cause_ids = {c.id for c in self.causes}
        for r in self.remedies:
            for c in r.causes or ():
                if c not in cause_ids:
                    raise ValueError(f"remedy {r.action!r} names unknown cause {c!r}")
        return self


def parse_playbook(data: Any, source: str) -> Playbook:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping (a playbook), not {type(data).__name__}")
    try:
        return Playbook.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise ConfigError(f"{source}: {validation_message(exc.errors(), skip=('check', 'group'))}") from None


def load_file(path: Path) -> list[Playbook]:
    """One YAML file: a playbook, or a list of them under `playbooks:`."""
    data = load_yaml(path)
    if isinstance(data, dict) and set(data) == {"slotune.playbooks"}:
        items = data["slotune.playbooks"]
        if not isinstance(items, list):
            raise ConfigError(f"{path}: playbooks: expected a list")
        return [parse_playbook(d, f"{path}: playbooks.{i}") for i, d in enumerate(items)]
    return [parse_playbook(data, str(path))]


class SampleFloor(_Strict):
    """`sample.yaml`: the least a window must hold before any finding proposes a flag change."""

    min_requests: float = Field(ge=0)


@lru_cache(maxsize=1)
def sample_floor() -> SampleFloor:
    path = Path(str(resources.files("slotune.playbooks") / "sample.yaml"))
    data = load_yaml(path)
    try:
        return SampleFloor.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {validation_message(exc.errors())}") from None


def builtin_dir() -> Path:
    return Path(str(resources.files("slotune.playbooks") / "rules"))


@lru_cache(maxsize=1)
def _builtins() -> tuple[Playbook, ...]:
    # Read once per process: the sidecar diagnoses every window, the files do not change under it.
    return tuple(pb for p in sorted(builtin_dir().glob("*.yaml")) for pb in load_file(p))


def builtin_playbooks() -> list[Playbook]:
    return list(_builtins())


def load_playbooks(extra: Sequence[str | Path] = ()) -> list[Playbook]:
    """The built-in playbooks, then each user file (or directory of `*.yaml`): a user playbook with
    a built-in's id replaces it, a new id is added."""
    by_id = {pb.id: pb for pb in builtin_playbooks()}
    for item in extra:
        path = Path(item)
        if path.is_dir():
            files = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
        elif path.exists():
            files = [path]
        else:
            raise ConfigError(f"{path}: no such playbook file or directory")
        for f in files:
            for pb in load_file(f):
                by_id[pb.id] = pb
    return list(by_id.values())
