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
from simulator.collectives import coflow_bytes, link_capacities, start_coflow, step_template
from simulator.model import SimConstants
from simulator.network import Network, Routes

WIRE_OF_BYTES = {1: "int8", 2: "bf16", 4: "fp32"}  # a workload's grad/param bytes as the plan's wire


def dp_plan(strategy: Strategy, topology: Topology, workload: Workload, groups, cache: SimCache = DEFAULT) -> Plan:
    """The training step's data-parallel plan, from hdc.sync.sync_plans — the same function
    the trainer's DistGradientSync calls — over the workload's per-rank parameters."""
    key = (topology.structure_key, strategy.describe(), tuple(map(tuple, groups)), workload.params_per_rank,
           workload.grad_bytes, workload.param_bytes, workload.bucket_numel)
    return cache.get("plans", key, lambda: workload_sync_plans(strategy, topology, workload, groups).plan)


def workload_sync_plans(strategy: Strategy, topology: Topology, workload: Workload, groups) -> SyncPlans:
    """sync_plans for a workload: its per-rank parameters, buckets and gradient/parameter bytes."""
    return sync_plans(strategy, topology, groups, workload.param_numels(), workload.bucket_numel,
                      WIRE_OF_BYTES[workload.grad_bytes], WIRE_OF_BYTES[workload.param_bytes])


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
    """Time and per-GPU bytes of one TP all-gather of a micro-batch's activation, run alone
    on the network (NVLink carries nothing else, so alone is exact)."""
    par = workload.parallel
    if par.tp < 2:
        return 0.0, 0.0
    group = tuple(placement.gpu_of[(0, 0, t)] for t in range(par.tp))
    env = simpy.Environment()
    net = Network(env, link_capacities(routes, constants.link_efficiency()))
    tpl = step_template(routes, "all_gather", (group,))
    numel = par.micro_batch_size * workload.model.seq_len * workload.model.hidden
    ev = start_coflow(net, "all_gather", tpl, numel, constants.activation_bytes)
    env.run(ev)
    return env.now, coflow_bytes("all_gather", tpl, numel, constants.activation_bytes)


def cp_exchange(routes: Routes, placement, workload: Workload, constants: SimConstants) -> tuple[float, tuple | None]:
    """Context parallelism's ring of K/V blocks for one layer and micro-batch (an all-gather of this
    rank's K and V over the CP group, timed alone) and (tier, bytes all GPUs send per micro-batch:
    forward once, backward twice for dK/dV, all layers)."""
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
    per_gpu = coflow_bytes("all_gather", tpl, numel, constants.activation_bytes)
    gpus = par.world_size // par.pp
    tier = routes.topology.tier_between(group[0], group[1])
    return env.now, (tier, 3 * m.layers * per_gpu * gpus)
