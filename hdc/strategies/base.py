"""The strategy base class, the registry and the plan-building helpers strategies share.

A strategy is a frozen dataclass whose fields are its knobs, each a `meta(...)` field (help,
range, choices) of the project's config system; `@register` adds it to the registry by its
`name`. Everything that takes a strategy — `hdc plan/simulate/train --strategy NAME --knob`,
the recipe's `distributed:` section, sweep keys `strategy.<knob>`, the report config and the
docs table — is generated from the registry (`strategy_from_dict`, `knobs`), so a knob exists
everywhere or nowhere. A wrapper (chunked, local_sgd, compressed) has a field typed `Strategy`
(`inner`): given as a name or a mapping; the flat knobs its own fields do not take go to it.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, replace
from typing import Any, ClassVar, NamedTuple, Optional, Sequence

from hdc.config import convert, fail
from hdc.errors import UserError
from hdc.plan import Plan, split
from hdc.topology import Topology

TIER_ORDER = ("intra_node", "intra_pod", "intra_site", "wan")
REGISTRY: dict[str, type["Strategy"]] = {}


class OuterStep(NamedTuple):
    """The outer step replicas take after averaging their pseudo-gradients: SGD (Nesterov when
    momentum > 0) on the anchor, then each replica's parameters become
    (1 - alpha) x new anchor + alpha x its own current ones (torchft's fragment_update_alpha)."""
    lr: float
    momentum: float
    alpha: float = 0.0


def widest_tier(topology: Topology, group: Sequence[int]) -> str:
    """The widest network tier any pair of ring neighbours in `group` crosses."""
    if len(group) < 2:
        return "intra_node"
    tiers = {topology.tier_between(a, b) for a, b in zip(group, list(group[1:]) + [group[0]])}
    return max(tiers, key=TIER_ORDER.index)


def groups_tier(topology: Topology, groups: Sequence[Sequence[int]]) -> str:
    return max((widest_tier(topology, g) for g in groups), key=TIER_ORDER.index)


def by_site(topology: Topology, group: Sequence[int], strategy: str) -> list[list[int]]:
    """Members of `group` per site (sites in order), each list in ring (location) order.

    Hierarchical strategies need the same number of members in every site they span.
    """
    per: dict[int, list[int]] = {}
    for r in sorted(group):
        per.setdefault(topology.locate(r).site, []).append(r)
    parts = [per[s] for s in sorted(per)]
    if len({len(p) for p in parts}) > 1:
        counts = ", ".join(f"{topology.sites[s].name}={len(per[s])}" for s in sorted(per))
        raise UserError(f"strategy {strategy}: needs the same number of ranks in every site of a "
                        f"group, got {counts}")
    return parts


def cross_site(topology: Topology, groups, strategy: str):
    """(site groups, cross-site groups, their regions) for a buffer of `numel` split over the
    ranks of a site: rank j of every site exchanges shard j. Returned as a function of numel."""
    sites_of = [by_site(topology, g, strategy) for g in groups]
    site_groups = [s for sites in sites_of for s in sites]

    def across(numel: int):
        xg, xr = [], []
        for sites in sites_of:
            if len(sites) > 1:
                for j, region in enumerate(split(numel, len(sites[0]))):
                    xg.append([s[j] for s in sites])
                    xr.append(region)
        return xg, xr
    return site_groups, across


def inner_field(default: str = "hierarchical") -> Any:
    """A wrapper's `inner` field: a strategy given by name or mapping (built by the registry)."""
    return dataclasses.field(default=default, metadata={
        "help": "chunked, local_sgd, streaming_local_sgd, compressed: the wrapped strategy (a name or a mapping)",
        "strategy": True})


@dataclass(frozen=True)
class Strategy:
    """Base class: `plan(topology, groups, numel, element_size)` returns a Plan.

    Subclasses set `name` and `summary` (one line for the docs table), declare their knobs as
    `meta(...)` fields, and implement `build`. `sync_plan` (bucketed, one trigger per gradient
    bucket) and `outer_optimizer` have defaults a strategy may override.
    """
    name: ClassVar[str] = "strategy"
    summary: ClassVar[str] = ""
    order: ClassVar[int] = 100  # position in lists and the docs table (simple before composite)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.metadata.get("strategy") and isinstance(getattr(self, f.name), str):
                object.__setattr__(self, f.name, make_strategy(getattr(self, f.name)))

    def plan(self, topology: Topology, groups: Optional[Sequence[Sequence[int]]], numel: int,
             element_size: int = 4) -> Plan:
        groups = [sorted(g) for g in (groups if groups is not None else [range(topology.num_gpus)])]
        plan = Plan(numel=numel, element_size=element_size, strategy=self.describe(),
                    ranks=tuple(sorted(r for g in groups for r in g)))
        if numel > 0:
            self.build(plan, topology, groups)
        return plan

    def build(self, plan: Plan, topology: Topology, groups: list[list[int]]) -> None:
        raise NotImplementedError

    def sync_plan(self, topology: Topology, groups, buckets: Sequence[int], element_size: int
                  ) -> tuple[Plan, list[int]]:
        """The plan for a gradient buffer that backward produces bucket by bucket (sizes
        `buckets`, in production order), and the buckets it triggers on. Default: this
        strategy's plan per bucket, bucket k's first steps waiting for 'bucket:k' (DDP-style)."""
        return bucketed(self, topology, groups, buckets, element_size), list(buckets)

    def outer_optimizer(self) -> Optional[OuterStep]:
        """The outer step applied to averaged replicas (DiLoCo), if any."""
        return None

    def describe(self) -> str:
        return self.name

    def to_dict(self) -> dict:
        """{name, knob: value, ...} with nested wrapped strategies as mappings."""
        out: dict[str, Any] = {"name": self.name}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, Strategy) else v
        return out


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: add a strategy to the registry under `cls.name`."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"strategy {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    ordered = sorted(REGISTRY.items(), key=lambda kv: (kv[1].order, kv[0]))
    REGISTRY.clear()
    REGISTRY.update(ordered)
    return cls


def _fields(cls: type[Strategy]) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def strategy_from_dict(spec: Any, path: str = "strategy", lenient: bool = False) -> Strategy:
    """A strategy from a name or a mapping {name, knob: value, ...}, every knob validated
    (type, range, choices). Knobs a wrapper does not take go to its wrapped strategy; a knob
    no strategy in the chain takes is an error naming it — or, with `lenient` (sweeps, where
    one grid compares strategies), ignored if it is some registered strategy's knob."""
    if isinstance(spec, Strategy):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise fail(path, f"must be a strategy name or a mapping with a name, got {spec!r}")
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in REGISTRY:
        raise fail(path, f"must be one of {', '.join(REGISTRY)}, got {name!r}")
    cls = REGISTRY[name]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    nested = None
    for f in _fields(cls):
        if f.metadata.get("strategy"):
            nested = f
            continue
        if f.name in spec:
            kwargs[f.name] = convert(f"{path}.{f.name}", spec.pop(f.name), hints[f.name], dict(f.metadata))
    if nested is not None:
        inner = spec.pop(nested.name, nested.default)
        inner = {"name": inner} if isinstance(inner, str) else inner
        if not isinstance(inner, dict):
            raise fail(f"{path}.{nested.name}", f"must be a strategy name or a mapping, got {inner!r}")
        kwargs[nested.name] = strategy_from_dict({**spec, **inner}, f"{path}.{nested.name}", lenient)
        spec = {}
    if lenient:
        spec = {k: v for k, v in spec.items() if k not in knobs()}
    if spec:
        key = sorted(spec)[0]
        allowed = sorted(knob_names(cls))
        raise fail(f"{path}.{key}", f"not a knob of strategy {name}; its knobs: {', '.join(allowed) or 'none'}")
    try:
        return cls(**kwargs)
    except UserError as e:  # a check across knobs: "knob: ..." becomes "strategy.knob: ..."
        field = str(e).split(":", 1)[0]
        raise (UserError(f"{path}.{e}") if field in {f.name for f in _fields(cls)} else fail(path, str(e))) from None


def knob_names(cls: type[Strategy]) -> set[str]:
    """Knobs a strategy takes: its own fields (with wrapped strategies' knobs for `inner`:
    those of every registered strategy it may wrap)."""
    out = set()
    for f in _fields(cls):
        out.add(f.name)
        if f.metadata.get("strategy"):
            for other in REGISTRY.values():
                if other is not cls:
                    out |= {g.name for g in _fields(other)}
    return out


def knobs() -> dict[str, dict]:
    """Every knob of every registered strategy: name -> {type, default, help, strategies}.
    A knob two strategies share must mean the same (type and range), checked here."""
    out: dict[str, dict] = {}
    for cls in REGISTRY.values():
        hints = typing.get_type_hints(cls)
        for f in _fields(cls):
            tp = str if f.metadata.get("strategy") else hints[f.name]
            md = {k: v for k, v in f.metadata.items() if k not in ("help",)}
            entry = out.setdefault(f.name, {"type": tp, "metadata": dict(f.metadata), "help": f.metadata["help"],
                                            "strategies": [], "defaults": {}})
            if entry["type"] != tp or {k: v for k, v in entry["metadata"].items() if k != "help"} != md:
                raise ValueError(f"knob {f.name!r}: {cls.name} declares it differently from "
                                 f"{entry['strategies'][0]}")
            entry["strategies"].append(cls.name)
            entry["defaults"][cls.name] = f.default
    return out


def make_strategy(name: str, **knobs_: Any) -> Strategy:
    """A strategy by name and knobs, as the CLI and configs spell them (validated)."""
    if isinstance(name, Strategy):
        return name
    return strategy_from_dict({"name": name, **knobs_}, "strategy")


def strategy_table() -> str:
    """The docs' strategy table (Markdown), from the registry."""
    lines = ["| strategy | what it does | knobs |", "|---|---|---|"]
    for name, cls in REGISTRY.items():
        parts = []
        hints = typing.get_type_hints(cls)
        for f in _fields(cls):
            tp = "strategy" if f.metadata.get("strategy") else getattr(hints[f.name], "__name__", str(hints[f.name]))
            parts.append(f"`{f.name}` ({tp}, default `{f.default!r}`): {f.metadata['help']}")
        lines.append(f"| `{name}` | {cls.summary} | {'<br>'.join(parts) or '—'} |")
    return "\n".join(lines)


def append_chunks(plan: Plan, inner: Strategy, topology: Topology, groups, sizes: Sequence[int],
                  triggers: bool, inflight: int = 1) -> None:
    """Append inner's plan for consecutive chunks of `sizes` elements, pipelined phase by phase:
    chunk c's phase j waits for chunk c-inflight's phase j (1 = one stream, as NCCL runs
    collectives of one communicator in order; more lets long-latency phases overlap).
    With `triggers`, chunk c's first steps also wait for the event 'bucket:c'."""
    offset, history, subs = 0, [], {}
    for c, n in enumerate(sizes):
        if n not in subs:  # a training plan has hundreds of equal buckets: build each size once
            subs[n] = inner.plan(topology, groups, n, plan.element_size)
        sub = subs[n]
        base = len(plan.steps)
        steps = sub.shifted(offset, base, chunk=c)
        prev = history[-inflight] if len(history) >= inflight else []
        cur = []
        for j, s in enumerate(steps):
            deps = set(s.deps)
            if j < len(prev):
                deps.add(prev[j])
            extra = {}
            if triggers and not s.deps:
                extra = {"trigger": f"bucket:{c}", "overlap": "backward"} if s.phase == "grad" else {}
            s = replace(s, deps=tuple(sorted(deps)), **extra)
            plan.steps.append(s)
            cur.append(s.id)
        history.append(cur)
        offset += n


def bucketed(inner: Strategy, topology: Topology, groups, bucket_numels: Sequence[int],
             element_size: int) -> Plan:
    """The plan for gradients that arrive bucket by bucket during backward (DDP-style overlap)."""
    plan = Plan(numel=sum(bucket_numels), element_size=element_size,
                strategy=f"bucketed({inner.describe()}, buckets={len(bucket_numels)})",
                ranks=tuple(sorted(r for g in groups for r in g)))
    append_chunks(plan, inner, topology, [sorted(g) for g in groups], bucket_numels, triggers=True)
    return plan
