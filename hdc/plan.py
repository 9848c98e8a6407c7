"""A Plan: what a communication strategy asks the network to do, as data.

A plan is a list of steps over one flat buffer of `numel` elements that every rank holds.
Each step is one collective run concurrently by several disjoint rank groups, each group on
its own region of the buffer. Executors (numpy reference, SimPy simulator, torch.distributed)
run any plan; they never look at which strategy made it.

Shard convention (shared by every executor): a region of n elements split over p members
gives member i the slice `split(n, p)[i]` — the first n % p members get one extra element.
After a reduce-scatter member i holds the sum of shard i; an all-gather starts from member i
holding shard i.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Optional

COLLECTIVES = ("all_reduce", "reduce_scatter", "all_gather", "broadcast", "send_recv")
# How a step's collective is carried out (rounds and who messages whom: hdc.cost, one table):
# ring  - p-1 rounds to the ring successor (all-reduce 2(p-1)); broadcast a binomial tree
# direct - one round in which every member sends each other member its share (all-to-all;
#          all-reduce = two such rounds): the same bytes as a ring, one latency instead of p-1
ALGORITHMS = ("ring", "direct")
# Wire formats a step may send, with bytes per element. Lossy ones (bf16, int8) are defined
# once for every executor (hdc.wire): each member encodes its shards, owners decode and sum in
# fp32 in member order, then re-encode the sum for the all-gather; int8 adds one fp32 absmax
# scale per shard.
WIRE_BYTES = {"fp32": 4, "bf16": 2, "int8": 1}
WIRE_OF_ELEMENT_SIZE = {4: "fp32", 2: "bf16"}


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """(offset, length) of each of `parts` near-equal pieces of n elements."""
    base, extra = divmod(n, parts)
    out, off = [], 0
    for i in range(parts):
        length = base + (1 if i < extra else 0)
        out.append((off, length))
        off += length
    return out


def merge_intervals(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """[lo, hi) intervals as sorted (offset, numel) regions, touching or overlapping ones merged."""
    merged: list[list[int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b - a) for a, b in merged]


@dataclass(frozen=True)
class Step:
    """One collective, run by every group in `groups` at once, each on its own region.

    groups   -- disjoint tuples of ranks, in ring order (for broadcast the first is the root;
                for send_recv a group is (src, dst))
    regions  -- (offset, numel) of the buffer each group works on, one per group
    deps     -- ids of steps that must finish before this one starts
    tier     -- the widest network tier the step crosses: intra_node/intra_pod/intra_site/wan
    phase    -- 'grad' (before the optimizer) or 'param' (after it: e.g. all-gather of updated
                parameters in the distributed optimizer)
    trigger  -- an external event the step also waits for, e.g. 'bucket:3' (gradient bucket 3
                is ready in backward); None if it may start as soon as its deps finish
    overlap  -- the compute phase this step may overlap: 'backward', 'forward' or None
    period   -- run only on training steps where (step - offset) % period == 0 (local SGD's
                outer sync; streaming local SGD staggers its fragments with `offset`)
    lag      -- a 'param' step due on training step t may complete as late as step t + lag: it
                starts after step t's optimizer and overlaps the next `lag` steps (streaming
                local SGD's delay); 0: it completes within step t
    chunk    -- chunk (or bucket) index this step belongs to
    label    -- a short human name ('rs-site', 'ar-wan', ...)
    wire     -- what the step puts on the wire (a WIRE_BYTES key); None: the plan's
                element size (hdc.sync.sync_plans sets it on every step of a training plan)
    algorithm -- 'ring' or 'direct' (ALGORITHMS); direct only for reduce_scatter, all_gather
                and all_reduce
    """
    id: int
    op: str
    groups: tuple[tuple[int, ...], ...]
    regions: tuple[tuple[int, int], ...]
    deps: tuple[int, ...] = ()
    tier: str = "intra_node"
    phase: str = "grad"
    trigger: Optional[str] = None
    overlap: Optional[str] = None
    period: int = 1
    offset: int = 0
    lag: int = 0
    chunk: int = 0
    label: str = ""
    wire: Optional[str] = None
    algorithm: str = "ring"

    def __post_init__(self) -> None:
        assert self.op in COLLECTIVES, self.op
        assert len(self.groups) == len(self.regions)
        assert self.wire is None or self.wire in WIRE_BYTES, self.wire
        assert self.algorithm == "ring" or (self.algorithm == "direct" and self.op in
                                            ("all_reduce", "reduce_scatter", "all_gather")), self.algorithm

    @property
    def numel(self) -> int:
        """Largest region (elements) any group of this step works on."""
        return max((n for _, n in self.regions), default=0)

    def active(self, train_step: int) -> bool:
        return (train_step - self.offset) % self.period == 0


@dataclass
class Plan:
    """Steps in a valid execution order (every dep precedes its dependant)."""
    numel: int
    element_size: int
    steps: list[Step] = field(default_factory=list)
    strategy: str = ""
    ranks: tuple[int, ...] = ()
    notes: list[str] = field(default_factory=list)

    def add(self, op: str, groups: Iterable[Iterable[int]], regions: Iterable[tuple[int, int]], **kw) -> Step:
        groups = tuple(tuple(g) for g in groups)
        regions = tuple(tuple(r) for r in regions)
        step = Step(id=len(self.steps), op=op, groups=groups, regions=regions, **kw)
        self.steps.append(step)
        return step

    def wire(self, step: Step) -> str:
        """The step's wire format (the plan's element size when the step does not say)."""
        return step.wire or WIRE_OF_ELEMENT_SIZE.get(self.element_size, "fp32")

    def wire_bytes(self, step: Step) -> int:
        """Bytes per element the step sends (its wire format's, or the plan's element size)."""
        return WIRE_BYTES[step.wire] if step.wire else self.element_size

    def step_bytes(self, step: Step) -> int:
        return step.numel * self.wire_bytes(step)

    def lossy(self, step: Step) -> bool:
        """The step's wire is narrower than the buffer: it encodes as hdc.wire defines."""
        return self.wire_bytes(step) < self.element_size

    def owned_regions(self, rank: int) -> list[tuple[int, int]]:
        """(offset, numel) intervals of the buffer `rank` holds fully reduced after the plan's
        'grad' steps, in buffer order: all of it for all-reduce plans, this rank's shards for
        the distributed optimizer (the part its optimizer updates). A reduce-scatter keeps only
        the member's shard of its region; an all-gather gives the whole region back."""
        owned = [(0, self.numel)]  # disjoint [lo, hi) intervals
        for step in self.steps:
            if step.phase != "grad" or step.op not in ("reduce_scatter", "all_gather"):
                continue
            for g, (off, n) in zip(step.groups, step.regions):
                if rank not in g or len(g) < 2:
                    continue
                inside = [(max(a, off), min(b, off + n)) for a, b in owned]
                rest = [iv for a, b in owned for iv in ((a, min(b, off)), (max(a, off + n), b)) if iv[1] > iv[0]]
                if step.op == "reduce_scatter":
                    so, sn = split(n, len(g))[g.index(rank)]
                    inside = [(max(a, off + so), min(b, off + so + sn)) for a, b in inside]
                else:
                    inside = [(off, off + n)]
                owned = sorted(rest + [iv for iv in inside if iv[1] > iv[0]])
        return merge_intervals(owned) or [(0, 0)]

    def contributors(self, rank: int, phase: str = "grad") -> int:
        """How many ranks' buffers are summed into what `rank` holds after the `phase` steps
        (on a training step where every period is due): the divisor that turns the sum into a
        mean. Traced on one element `rank` owns; every element of the strategies is alike."""
        element = next((o for o, n in self.owned_regions(rank) if n), 0) if phase == "grad" else 0
        holds = {r: frozenset([r]) for r in self.ranks}
        for s in self.steps:
            if s.phase != phase:
                continue
            for g, (off, n) in zip(s.groups, s.regions):
                if len(g) < 2 or not off <= element < off + n:
                    continue
                owner = next((g[i] for i, (so, sn) in enumerate(split(n, len(g)))
                              if off + so <= element < off + so + sn), g[0])
                if s.op == "all_reduce":
                    total = frozenset().union(*(holds[r] for r in g))
                    holds.update({r: total for r in g})
                elif s.op == "reduce_scatter":
                    holds[owner] = frozenset().union(*(holds[r] for r in g))
                elif s.op == "all_gather":
                    holds.update({r: holds[owner] for r in g})
                elif s.op == "broadcast":
                    holds.update({r: holds[g[0]] for r in g})
        return len(holds.get(rank, ()))

    def active_steps(self, train_step: int = 0) -> list[Step]:
        return [s for s in self.steps if s.active(train_step)]

    def depths(self) -> dict[int, int]:
        """step id -> dependency depth (0 for a step without deps). Executors issue each group's
        steps in (depth, id) order, the same on every rank, and the simulator's pipelined mode
        follows the same order."""
        level: dict[int, int] = {}
        for s in self.steps:
            level[s.id] = 1 + max((level[d] for d in s.deps if d in level), default=-1)
        return level

    def shifted(self, offset: int, id_base: int, **overrides) -> list[Step]:
        """This plan's steps with regions moved by `offset` and ids/deps renumbered from id_base."""
        out = []
        for s in self.steps:
            out.append(replace(s, id=s.id + id_base, deps=tuple(d + id_base for d in s.deps),
                               regions=tuple((o + offset, n) for o, n in s.regions), **overrides))
        return out

    def to_dict(self) -> dict:
        return {
            "strategy": self.strategy, "numel": self.numel, "element_size": self.element_size,
            "ranks": list(self.ranks), "notes": self.notes,
            "steps": [{
                "id": s.id, "op": s.op, "label": s.label, "tier": s.tier, "phase": s.phase,
                "chunk": s.chunk, "deps": list(s.deps), "trigger": s.trigger, "overlap": s.overlap,
                "period": s.period, "offset": s.offset, "lag": s.lag, "groups": [list(g) for g in s.groups],
                "regions": [list(r) for r in s.regions], "wire": self.wire(s), "algorithm": s.algorithm,
                "bytes": self.step_bytes(s),
            } for s in self.steps],
        }
