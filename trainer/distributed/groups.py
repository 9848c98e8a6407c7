"""torch.distributed process groups built from a topology and from plans.

`dist.new_group` is a collective: every rank of the world must call it, in the same order,
for every group (also for groups it is not a member of). `ProcessGroups` therefore creates
groups only from data every rank shares — a plan's steps in order, or the topology's named
families in a fixed order — and caches them by their (sorted) member tuple, so a second plan
that uses the same groups creates nothing.

Rank r of the world is GPU r of the topology (site-major, then node, then local index).
"""
from __future__ import annotations

import datetime
import os
from typing import Iterable, Optional, Sequence

import torch
import torch.distributed as dist

from hdc.errors import UserError
from hdc.plan import Plan
from hdc.topology import Topology

DEFAULT_TIMEOUT_S = 300.0


def wait_work(work, timeout_s: float, what: str) -> None:
    """Wait for one async collective with a deadline; a clear RuntimeError if it fails."""
    try:
        work.wait(timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as e:
        raise RuntimeError(f"hdc: {what} failed after {timeout_s:g} s timeout or error: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


def default_backend() -> str:
    """'nccl' when this process sees a GPU (and NCCL is built in), else 'gloo'.
    HDC_BACKEND overrides it."""
    env = os.environ.get("HDC_BACKEND")
    if env:
        if env not in ("gloo", "nccl"):
            raise UserError(f"HDC_BACKEND: must be gloo or nccl, got {env!r}")
        return env
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def backend_device(backend: str) -> torch.device:
    """Where buffers must live for `backend` (NCCL: this process's current GPU)."""
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def group_sites(topology: Optional[Topology], ranks: Sequence[int]) -> str:
    """'site-a' or 'site-a<->site-b': the sites a group spans (for error messages)."""
    if topology is None:
        return "?"
    names = []
    for r in ranks:
        if 0 <= r < topology.num_gpus:
            name = topology.sites[topology.locate(r).site].name
            if name not in names:
                names.append(name)
    return "<->".join(names) or "?"


class ProcessGroups:
    """A cache of process groups for one world, keyed by sorted member tuple.

    topology   -- used for the named families and to name sites in error messages
    backend    -- 'gloo' or 'nccl' for the subgroups; default: the world's backend
    timeout_s  -- timeout of every subgroup this creates (and of the executor's waits)
    """

    def __init__(self, topology: Optional[Topology] = None, *, backend: Optional[str] = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S):
        if not dist.is_initialized():
            raise RuntimeError("hdc: torch.distributed is not initialized; call "
                               "trainer.distributed.init_distributed() (or dist.init_process_group) first")
        if timeout_s <= 0:
            raise UserError(f"timeout_s: must be > 0, got {timeout_s}")
        self.topology = topology
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        if topology is not None and topology.num_gpus != self.world_size:
            raise UserError(f"topology {topology.name} has {topology.num_gpus} GPUs but the world has "
                            f"{self.world_size} processes: launch one process per GPU of the topology")
        self.backend = backend or str(dist.get_backend())
        if self.backend not in ("gloo", "nccl"):
            raise UserError(f"backend: must be gloo or nccl, got {self.backend!r}")
        self.timeout_s = float(timeout_s)
        self.device = backend_device(self.backend)
        self._cache: dict[tuple[int, ...], object] = {}
        self.created: list[tuple[int, ...]] = []  # in creation order (identical on every rank)

    # ------------------------------------------------------------------ core
    def get(self, ranks: Iterable[int], stream: str = ""):
        """The process group of `ranks`, created on first use. COLLECTIVE on first use: every
        rank must ask for the same new groups in the same order. None for fewer than 2 ranks.
        `stream` names an independent set of groups: collectives issued on another stream never
        queue behind (or interleave with) this one's, so two executors may run at once."""
        members = tuple(sorted(set(int(r) for r in ranks)))
        if len(members) < 2:
            return None
        key = (stream, members) if stream else members
        if key in self._cache:
            return self._cache[key]
        bad = [r for r in members if not 0 <= r < self.world_size]
        if bad:
            raise UserError(f"group {list(members)}: ranks {bad} are outside the world (0..{self.world_size - 1})")
        if not stream and members == tuple(range(self.world_size)) and self.backend == str(dist.get_backend()):
            pg = dist.group.WORLD
        else:
            pg = dist.new_group(list(members), timeout=datetime.timedelta(seconds=self.timeout_s),
                                backend=self.backend)
        self._cache[key] = pg
        self.created.append(key)
        return pg

    def members(self, ranks: Iterable[int]) -> list[int]:
        """Global ranks of a group in process-group rank order (torch sorts them)."""
        return sorted(set(int(r) for r in ranks))

    def for_plan(self, plan: Plan, stream: str = "") -> None:
        """Create every group the plan's steps use, in step order (COLLECTIVE)."""
        for step in plan.steps:
            for g in step.groups:
                self.get(g, stream)

    # ------------------------------------------------------------------ named families
    def _topo(self) -> Topology:
        if self.topology is None:
            raise UserError("named process-group families need a topology")
        return self.topology

    def world(self):
        return self.get(range(self.world_size))

    def site_ranks(self) -> list[list[int]]:
        t = self._topo()
        return [list(t.site_gpus(s)) for s in range(len(t.sites))]

    def cross_site_ranks(self) -> list[list[int]]:
        """Group j: the j-th rank of every site that has one (same local index in each site)."""
        sites = self.site_ranks()
        return [[s[j] for s in sites if j < len(s)] for j in range(max(len(s) for s in sites))]

    def node_ranks(self) -> list[list[int]]:
        t = self._topo()
        out: dict[tuple[int, int], list[int]] = {}
        for r in range(t.num_gpus):
            loc = t.locate(r)
            out.setdefault((loc.site, loc.node), []).append(r)
        return [out[k] for k in sorted(out)]

    def site(self, index: int):
        return self.get(self.site_ranks()[index])

    def cross_site(self, local_index: int):
        return self.get(self.cross_site_ranks()[local_index])

    def node(self, site: int, node: int):
        t = self._topo()
        return self.get([r for r in t.site_gpus(site) if t.locate(r).node == node])

    def build_families(self) -> None:
        """Create world, per-site, cross-site and per-node groups in a fixed order (COLLECTIVE)."""
        self.world()
        for g in self.site_ranks() + self.cross_site_ranks() + self.node_ranks():
            self.get(g)

    def my_site(self) -> int:
        return self._topo().locate(self.rank).site

    def describe(self, ranks: Sequence[int]) -> str:
        return group_sites(self.topology, ranks)


def shutdown_distributed() -> None:
    """Leave the world cleanly: wait for every rank, then tear the process groups down. Exiting
    with groups alive lets gloo's threads be destroyed at interpreter exit, which can abort a
    rank ('terminate called without an active exception') after all its work succeeded."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def init_distributed(rank: Optional[int] = None, world_size: Optional[int] = None, *,
                     backend: Optional[str] = None, init_method: Optional[str] = None,
                     timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """Initialize the default process group (RANK/WORLD_SIZE/MASTER_* from the environment
    unless given), picking gloo or NCCL automatically. Returns the backend. On NCCL, selects
    GPU LOCAL_RANK first. Does nothing if already initialized."""
    if dist.is_initialized():
        return str(dist.get_backend())
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    kw = {}
    if rank is not None:
        kw["rank"] = rank
    if world_size is not None:
        kw["world_size"] = world_size
    dist.init_process_group(backend, init_method=init_method or "env://",
                            timeout=datetime.timedelta(seconds=timeout_s), **kw)
    return backend
