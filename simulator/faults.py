"""Faults in the simulator: stragglers and degraded or failed WAN links.

Synchronous training waits for its slowest member, so one slow GPU (or node: one TP group)
slows its pipeline stage, and through the DP sync every replica; a slow site slows every
stage of the replicas it holds. The simulated pipeline stands for the slowest replica, so a
straggler is a compute factor on the affected stages. WAN faults change the topology: a
bandwidth factor on every WAN link, and failed parallel links whose traffic fails over to the
remaining ones (capacity = remaining links × per-link bandwidth).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from hdc.config import meta
from hdc.errors import UserError
from hdc.topology import Topology


@dataclass
class Faults:
    slow_gpu_factor: float = meta("one GPU (or node) computes this many times slower (1 = healthy)",
                                  ge=1.0, le=1000.0, default=1.0)
    slow_gpu_stage: int = meta("pipeline stage the slow GPU belongs to", ge=0, default=0)
    slow_site: Optional[str] = meta("a site whose GPUs are all slower", default=None)
    slow_site_factor: float = meta("compute slowdown of every GPU in slow_site", ge=1.0, le=1000.0,
                                    default=1.0)
    wan_bandwidth_factor: float = meta("fraction of nominal bandwidth every WAN link still delivers",
                                       gt=0.0, le=1.0, default=1.0)
    wan_links_failed: int = meta("parallel links down on every WAN connection; traffic fails over to "
                                 "the rest", ge=0, default=0)

    def any(self) -> bool:
        return (self.slow_gpu_factor != 1.0 or (self.slow_site is not None and self.slow_site_factor != 1.0)
                or self.wan_bandwidth_factor != 1.0 or self.wan_links_failed > 0)

    def describe(self) -> list[str]:
        out = []
        if self.slow_gpu_factor != 1.0:
            out.append(f"straggler: one GPU of stage {self.slow_gpu_stage} at 1/{self.slow_gpu_factor:g} speed")
        if self.slow_site is not None and self.slow_site_factor != 1.0:
            out.append(f"slow site {self.slow_site}: every GPU at 1/{self.slow_site_factor:g} speed")
        if self.wan_bandwidth_factor != 1.0:
            out.append(f"WAN degraded to {self.wan_bandwidth_factor:.0%} of nominal bandwidth")
        if self.wan_links_failed:
            out.append(f"{self.wan_links_failed} parallel WAN link(s) down per connection, traffic failed over")
        return out


def apply_to_topology(topology: Topology, faults: Faults) -> Topology:
    """The topology as the faults leave it (a new object; the input is unchanged)."""
    if faults.slow_site is not None:
        topology.site_index(faults.slow_site)  # unknown site -> UserError naming the sites
    if faults.wan_bandwidth_factor == 1.0 and not faults.wan_links_failed:
        return topology
    wan = []
    for i, w in enumerate(topology.wan):
        links = w.links - faults.wan_links_failed
        if links < 1:
            raise UserError(f"faults.wan_links_failed: {faults.wan_links_failed} of {w.links} links between "
                            f"{w.sites[0]} and {w.sites[1]} leaves the sites disconnected; training cannot "
                            f"proceed (at most {w.links - 1})")
        wan.append(replace(w, links=links, bandwidth_Bps=w.bandwidth_Bps * faults.wan_bandwidth_factor))
    return Topology(name=topology.name, sites=topology.sites, description=topology.description,
                    gpu=topology.gpu, wan=wan, assumptions=topology.assumptions)


def stage_factors(topology: Topology, pp: int, faults: Faults) -> Optional[list[float]]:
    """Compute slowdown per pipeline stage of the slowest replica, or None when all are healthy."""
    if faults.slow_gpu_stage >= pp:
        raise UserError(f"faults.slow_gpu_stage: must be < pp ({pp}), got {faults.slow_gpu_stage}")
    factors = [1.0] * pp
    if faults.slow_site is not None:
        factors = [faults.slow_site_factor] * pp
    factors[faults.slow_gpu_stage] = max(factors[faults.slow_gpu_stage], faults.slow_gpu_factor)
    return None if all(f == 1.0 for f in factors) else factors
