"""What a simulated step is made of, worked out before any event runs: the data-parallel plan
(the same `hdc.sync.sync_plans` the trainer calls), when backward produces each gradient
element, and the per-layer cost of the TP collectives and the context-parallel K/V ring."""
from __future__ import annotations

import simpy

from hdc.plan import Plan
from hdc.strategies import Strategy
from hdc.sync import SyncPlans, sync_plans
from hdc.topology import Topology
from hdc.workload import Workload
from simulator.cache import DEFAULT, SimCache
from simulator.collectives import coflow_bytes, link_capacities, message_bytes, start_coflow, step_template
from simulator.model import SimConstants
from simulator.network import Network, Routes

WIRE_OF_BYTES = {1: "int8", 2: "bf16", 4: "fp32"}  # a workload's grad/param bytes as the plan's wire


def tier_bytes(routes: Routes, op: str, tpl, numel: int, esize: int, copies: int) -> dict[str, float]:
    """Bytes crossing links of each tier when `copies` groups like `tpl`'s run `op` once (the
    network's own accounting: every link a message crosses counts its bytes)."""
    out: dict[str, float] = {}
    per_message = message_bytes(op, tpl.members, numel, esize) * tpl.rounds
    for link, weight in tpl.weights.items():
        tier = routes.links[link].tier
        out[tier] = out.get(tier, 0.0) + weight * per_message * copies
    return out


def dp_plan(strategy: Strategy, topology: Topology, workload: Workload, groups, cache: SimCache = DEFAULT,
            numel: int | None = None) -> Plan:
    """The training step's data-parallel plan, from hdc.sync.sync_plans — the same function
    the trainer's DistGradientSync calls — over the workload's per-rank parameters (or `numel`
    of them: a rank's FSDP shard)."""
    numel = workload.params_per_rank if numel is None else numel
    key = (topology.structure_key, strategy.describe(), tuple(map(tuple, groups)), numel,
           workload.grad_bytes, workload.param_bytes, workload.bucket_numel)
    return cache.get("plans", key, lambda: workload_sync_plans(strategy, topology, workload, groups, numel).plan)


def workload_sync_plans(strategy: Strategy, topology: Topology, workload: Workload, groups,
                        numel: int | None = None) -> SyncPlans:
    """sync_plans for a workload: its per-rank parameters, buckets and gradient/parameter bytes."""
    return sync_plans(strategy, topology, groups, workload.param_numels(numel), workload.bucket_numel,
                      WIRE_OF_BYTES[workload.grad_bytes], WIRE_OF_BYTES[workload.param_bytes])


def fsdp_group(placement, topology: Topology) -> list[int]:
    """The DP ranks of site 0 holding the first model-parallel rank of stage 0: one FSDP group."""
    per_site = placement.dp // len(topology.sites)
    return [placement.gpu_of[(d, 0, 0)] for d in range(per_site)]


def fsdp_collectives(routes: Routes, placement, workload: Workload,
                     constants: SimConstants) -> tuple[float, float, dict | None]:
    """FSDP / ZeRO-3 per layer and micro-batch, each timed alone on the in-site DP group: the
    all-gather of the layer's parameters (param_bytes; forward, and again in backward) and the
    reduce-scatter of its gradients (grad_bytes; backward). Returns (all-gather s,
    reduce-scatter s, {tier: bytes per micro-batch, all layers and groups}), or zeros when each
    site holds one replica."""
    group = tuple(fsdp_group(placement, routes.topology))
    if not workload.shard_params or len(group) < 2:
        return 0.0, 0.0, None
    numel = workload.model.params_per_layer // workload.parallel.tp
    caps = link_capacities(routes, constants.link_efficiency())
    groups = workload.parallel.world_size // len(group)
    times, by_tier = [], {}
    # per micro-batch and layer: all-gather in forward, all-gather again + reduce-scatter in backward
    for op, esize, count in (("all_gather", workload.param_bytes, 2), ("reduce_scatter", workload.grad_bytes, 1)):
        env = simpy.Environment()
        tpl = step_template(routes, op, (group,))
        env.run(start_coflow(Network(env, caps), op, tpl, numel, esize))
        times.append(env.now)
        for tier, b in tier_bytes(routes, op, tpl, numel, esize, groups * count * workload.model.layers).items():
            by_tier[tier] = by_tier.get(tier, 0.0) + b
    return times[0], times[1], by_tier


class GradientClock:
    """When backward produces each gradient element of a stage.

    Buffer order is production order (Megatron's buckets: last layers first). A stage's
    elements are split evenly over its vpp model chunks, chunk vpp-1 first; within a chunk
    they appear uniformly over the last micro-batch's backward of that chunk."""

    def __init__(self, numel: int, vpp: int):
        self.numel, self.vpp = numel, vpp

    def locate(self, end: int) -> tuple[int, float]:
        """(chunk, fraction of its last backward) at which elements [0, end) are all produced."""
        x = end / self.numel * self.vpp
        jj = min(max(int(-(-x // 1)) - 1, 0), self.vpp - 1)
        return self.vpp - 1 - jj, min(max(x - jj, 0.0), 1.0)

    def chunk_range(self, chunk: int) -> tuple[float, float]:
        jj = self.vpp - 1 - chunk
        return jj * self.numel / self.vpp, (jj + 1) * self.numel / self.vpp


def tp_collective(routes: Routes, placement, workload: Workload, constants: SimConstants) -> tuple[float, float]:
    """Time and per-GPU bytes of one TP all-gather of a micro-batch's activation (its s/cp tokens
    on this rank), run alone on the network (NVLink carries nothing else, so alone is exact)."""
    par = workload.parallel
    if par.tp < 2:
        return 0.0, 0.0
    group = tuple(placement.gpu_of[(0, 0, t)] for t in range(par.tp))
    env = simpy.Environment()
    net = Network(env, link_capacities(routes, constants.link_efficiency()))
    tpl = step_template(routes, "all_gather", (group,))
    numel = par.micro_batch_size * (workload.model.seq_len // par.cp) * workload.model.hidden
    ev = start_coflow(net, "all_gather", tpl, numel, constants.activation_bytes)
    env.run(ev)
    return env.now, coflow_bytes("all_gather", tpl, numel, constants.activation_bytes)


def cp_exchange(routes: Routes, placement, workload: Workload, constants: SimConstants) -> tuple[float, dict | None]:
    """Context parallelism's ring of K/V blocks for one layer and micro-batch (an all-gather of this
    rank's K and V over the CP group, timed alone) and {tier: bytes per micro-batch, all CP
    groups: forward once, backward twice for dK/dV, all layers}."""
    par, m = workload.parallel, workload.model
    if par.cp < 2:
        return 0.0, None
    group = tuple(placement.cp_group())
    env = simpy.Environment()
    net = Network(env, link_capacities(routes, constants.link_efficiency()))
    tpl = step_template(routes, "all_gather", (group,))
    # the gathered buffer: every rank's K and V block (each rank sends its own cp - 1 times)
    numel = par.cp * 2 * par.micro_batch_size * (m.seq_len // par.cp) * m.kv_heads * m.head_dim // par.tp
    env.run(start_coflow(net, "all_gather", tpl, numel, constants.activation_bytes))
    return env.now, tier_bytes(routes, "all_gather", tpl, numel, constants.activation_bytes,
                               3 * m.layers * par.world_size // par.cp)
