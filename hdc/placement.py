"""Placement: which GPU holds which (data-parallel, pipeline, tensor) rank.

Tensor parallelism is innermost (consecutive GPUs of one node), then context parallelism
(cp blocks of tp GPUs, which may span nodes), then pipeline stages, then data-parallel
replicas (Megatron's tp-cp-pp-dp order). The third index of `gpu_of` is the model-parallel
rank r = c · tp + t. Replicas are split evenly over the sites, so a pipeline never
crosses the WAN unless `pp_across_sites` asks for it (then stages are spread over sites
and every replica spans them all).
"""
from __future__ import annotations

from dataclasses import dataclass

from hdc.errors import UserError
from hdc.topology import Topology
from hdc.workload import Parallel


@dataclass(frozen=True)
class Placement:
    tp: int
    pp: int
    dp: int
    gpu_of: dict  # (dp, pp, c · tp + t) -> GPU id
    cp: int = 1

    @property
    def width(self) -> int:
        """GPUs of one pipeline stage of one replica: tp × cp."""
        return self.tp * self.cp

    def dp_groups(self) -> list[list[int]]:
        """One group per (pp, tp, cp) position: the GPUs holding the same parameters."""
        return [[self.gpu_of[(d, p, t)] for d in range(self.dp)] for p in range(self.pp) for t in range(self.width)]

    def pp_groups(self) -> list[list[int]]:
        return [[self.gpu_of[(d, p, t)] for p in range(self.pp)] for d in range(self.dp) for t in range(self.width)]

    def tp_groups(self) -> list[list[int]]:
        return [[self.gpu_of[(d, p, c * self.tp + t)] for t in range(self.tp)]
                for d in range(self.dp) for p in range(self.pp) for c in range(self.cp)]

    def cp_group(self, d: int = 0, p: int = 0, t: int = 0) -> list[int]:
        return [self.gpu_of[(d, p, c * self.tp + t)] for c in range(self.cp)]


def place(topology: Topology, parallel: Parallel, pp_across_sites: bool = False) -> Placement:
    """Lay a TP × PP × DP job onto a topology; errors name the field that does not fit."""
    tp, pp, dp = parallel.tp * parallel.cp, parallel.pp, parallel.dp  # tp: one stage's tp × cp block
    sites = topology.sites
    if parallel.world_size > topology.num_gpus:
        raise UserError(f"parallel: tp × pp × dp = {parallel.world_size} GPUs, but topology "
                        f"{topology.name} has {topology.num_gpus}")
    for s in sites:
        if s.gpus_per_node % parallel.tp:
            raise UserError(f"parallel.tp: must divide gpus_per_node ({s.gpus_per_node}) of site "
                            f"{s.name} so tensor parallelism stays inside a node, got {parallel.tp}")
    n = len(sites)
    gpu_of = {}
    if pp_across_sites:
        if pp % n:
            raise UserError(f"parallel.pp: must be a multiple of the number of sites ({n}) "
                            f"when pipeline stages span sites, got {pp}")
        per_site = pp // n
        for si in range(n):
            need = dp * per_site * tp
            if need > sites[si].gpus:
                raise UserError(f"parallel: site {sites[si].name} needs {need} GPUs, has {sites[si].gpus}")
            base = topology.site_gpus(si).start
            for d in range(dp):
                for lp in range(per_site):
                    for t in range(tp):
                        gpu_of[(d, si * per_site + lp, t)] = base + (d * per_site + lp) * tp + t
    else:
        if dp % n:
            raise UserError(f"parallel.dp: must be a multiple of the number of sites ({n}) so "
                            f"replicas split evenly, got {dp}")
        per_site = dp // n
        for si in range(n):
            need = per_site * pp * tp
            if need > sites[si].gpus:
                raise UserError(f"parallel: site {sites[si].name} needs {need} GPUs "
                                f"({per_site} replicas × pp {pp} × tp {tp}), has {sites[si].gpus}")
            base = topology.site_gpus(si).start
            for ld in range(per_site):
                for p in range(pp):
                    for t in range(tp):
                        gpu_of[(si * per_site + ld, p, t)] = base + (ld * pp + p) * tp + t
    return Placement(parallel.tp, pp, dp, gpu_of, parallel.cp)
