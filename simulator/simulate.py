"""The simulator's Python API: `simulate(topology, workload, strategy) -> Result` and the
calibration of the achievable compute efficiency to a measured MFU."""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from typing import Optional, Union

from hdc.config import to_dict
from hdc.errors import UserError
from hdc.strategies import Strategy, make_strategy
from hdc.topology import Topology, load_topology
from hdc.workload import Workload, load_workload
from simulator import memory
from simulator.cache import DEFAULT, SimCache
from simulator.compute import GENERATIONS
from simulator.faults import Faults, apply_to_topology, stage_factors
from simulator.model import SimConstants
from simulator.result import Breakdown, Result, TierUse, wan_summary
from simulator.step import RunStats, run_step


def single_site(topology: Topology) -> Topology:
    """The same GPUs in one site: site 0's tiers, all nodes, all pods, no WAN."""
    s0 = topology.sites[0]
    if any(s.gpus_per_node != s0.gpus_per_node for s in topology.sites):
        raise UserError("scaling efficiency: sites must have the same gpus_per_node")
    nodes = sum(s.nodes for s in topology.sites)
    pods = sum(s.pods for s in topology.sites)
    site = replace(s0, name="all", nodes=nodes, pods=pods)
    return Topology(name=f"{topology.name}-single-site", sites=[site], gpu=topology.gpu,
                    description=f"{topology.name}'s GPUs in one site")


def _resolve(topology, workload, strategy):
    topo = load_topology(topology) if isinstance(topology, str) else topology
    work = load_workload(workload) if isinstance(workload, str) else workload
    strat = make_strategy(strategy) if isinstance(strategy, str) else strategy
    return topo, work, strat


def _average(topology, workload, strategy, constants, train_step, aggregate, timeline, rounds="coflow",
             factors=None, cache: SimCache = DEFAULT) -> tuple[RunStats, float]:
    """Run the step; with periodic plan steps (local SGD, streaming fragments) and no train_step
    given, the step time is the average over one period: each distinct set of due steps is
    simulated once and weighted by how many steps of the period it occurs on."""
    stats = run_step(topology, workload, strategy, constants, train_step or 0, aggregate, timeline,
                     rounds=rounds, stage_factors=factors, cache=cache)
    period = max((s.period for s in stats.plan.steps), default=1)
    if train_step is not None or period == 1:
        return stats, stats.step_time_s
    due: dict[frozenset, list[int]] = {}
    for t in range(period):
        due.setdefault(frozenset(s.id for s in stats.plan.steps if s.active(t)), []).append(t)
    total = 0.0
    for steps in due.values():
        t = steps[0]
        time_s = stats.step_time_s if t == 0 else run_step(
            topology, workload, strategy, constants, t, aggregate, False, rounds=rounds,
            stage_factors=factors, cache=cache).step_time_s
        total += time_s * len(steps)
    return stats, total / period


def check_fp8(topo: Topology, work: Workload) -> None:
    if work.fp8 and not GENERATIONS[topo.gpu.generation].fp8_speedup:
        raise UserError(f"fp8: the GPU generation {topo.gpu.generation} has no FP8 tensor cores "
                        f"(set fp8: false, or gpu.generation hopper)")


def simulate(topology: Union[Topology, str], workload: Union[Workload, str], strategy: Union[Strategy, str],
             constants: Optional[SimConstants] = None, *, baseline: bool = True, timeline: bool = False,
             train_step: Optional[int] = None, aggregate: bool = True, rounds: str = "coflow",
             faults: Optional[Faults] = None, cache: Optional[SimCache] = None) -> Result:
    """Predict one training step. `baseline` also simulates the same GPUs in one site for the
    scaling efficiency (cached per configuration). `aggregate=False` simulates every rank
    instead of one pipeline standing for all; `rounds='exact'` (with aggregate=False) sends
    every collective message by message, a barrier per round. Both are slow: they exist to
    check the fast path. `faults` (stragglers, degraded or failed WAN links) change this run;
    the single-site baseline stays healthy, so the efficiency shows what the faults cost.
    `cache` holds routes, plans and baselines for reuse (simulator.cache; default: one per process)."""
    if rounds == "exact" and aggregate:
        raise ValueError("rounds='exact' needs aggregate=False")
    topo, work, strat = _resolve(topology, workload, strategy)
    check_fp8(topo, work)
    constants = constants or SimConstants()
    faults = faults or Faults()
    cache = cache or DEFAULT
    healthy = topo
    topo = apply_to_topology(topo, faults)
    factors = stage_factors(topo, work.parallel.pp, faults)
    stats, step_s = _average(topo, work, strat, constants, train_step, aggregate, timeline, rounds, factors, cache)
    gpus = work.parallel.world_size
    single_s = None
    if baseline:
        if len(topo.sites) == 1:
            single_s = step_s
        else:
            one = single_site(healthy)
            key = json.dumps([to_dict(one.sites[0]), to_dict(one.gpu), to_dict(work), strat.describe(),
                              asdict(constants), train_step, aggregate, rounds], sort_keys=True, default=str)
            single_s = cache.get("baselines", key, lambda: _average(
                one, work, strat, constants, train_step, aggregate, False, rounds, cache=cache)[1])
    capacity = stats.capacity_by_tier
    tiers = {t: TierUse(b, b / (capacity[t] * step_s) if capacity.get(t) else 0.0)
             for t, b in sorted(stats.bytes_by_tier.items())}
    dist = stats.owned_elements < stats.plan.numel
    scale = step_s / stats.step_time_s  # periodic average: scale the parts alike
    bd = Breakdown(stats.compute_s, stats.tp_exposed_s, stats.pp_exposed_s,
                   stats.dp_exposed_s + (step_s - stats.step_time_s) if scale != 1 else stats.dp_exposed_s,
                   stats.bubble_s, stats.optimizer_s)
    return Result(
        topology=topo.name, workload=f"{work.model.name} tp{work.parallel.tp} pp{work.parallel.pp} "
                                     f"dp{work.parallel.dp} vpp{work.parallel.vpp} gbs{work.parallel.global_batch_size}",
        strategy=strat.describe(), gpus=gpus, step_time_s=step_s, breakdown=bd,
        mfu=work.step_flops() / (step_s * gpus * topo.gpu.peak_flops),
        tokens_per_s=work.tokens_per_step / step_s,
        scaling_efficiency=(single_s / step_s) if single_s else None, single_site_step_time_s=single_s,
        tiers=tiers, memory=memory.estimate(work, dist, len(topo.sites)),
        memory_alternative=memory.estimate(work, not dist, len(topo.sites)),
        distributed_optimizer=dist, gpu_memory_bytes=topo.gpu.memory_bytes, constants=asdict(constants),
        assumptions=faults.describe() + assumptions(topo, work, strat, constants, stats),
        events={"flows": stats.flows, "plan_steps": len(stats.plan.steps)}, spans=stats.spans)


def assumptions(topo: Topology, work: Workload, strat: Strategy, c: SimConstants, stats: RunStats) -> list[str]:
    p = work.parallel
    triggered = any(s.trigger for s in stats.plan.steps)
    return [
        f"WAN: {wan_summary(topo)}",
        f"GPU peak {topo.gpu.peak_flops / 1e12:g} TFLOP/s × compute efficiency {c.compute_efficiency:.4g}",
        f"layout TP {p.tp} × PP {p.pp} (vpp {p.vpp}) × DP {p.dp}, {p.micro_batches} micro-batches of "
        f"{p.micro_batch_size} × {work.model.seq_len} tokens, global batch {p.global_batch_size}",
        f"gradient sync: {stats.plan.strategy}; {len(stats.plan.steps)} plan steps, "
        + ("bucket k starts when backward has produced it (last micro-batch)" if triggered else "after backward"),
        f"gradients {work.grad_bytes} B/element, parameters {work.param_bytes} B/element; every stage syncs "
        f"the largest stage's {work.params_per_rank:,} parameters",
        "'param'-phase steps overlapping 'forward' run at the start of the step (previous update)",
        f"TP comm {1 - c.tp_comm_overlap:.0%} exposed; link efficiency node/pod/site/wan "
        f"{c.intra_node_efficiency:g}/{c.intra_pod_efficiency:g}/{c.intra_site_efficiency:g}/{c.wan_efficiency:g}",
        f"optimizer: {c.optimizer_bytes_per_param:g} B per owned parameter at "
        f"{c.hbm_Bps(topo.gpu.generation) / 1e12:g} TB/s",
    ] + [f"topology: {a}" for a in topo.assumptions]


def calibrate_compute_efficiency(topology: Union[Topology, str], workload: Union[Workload, str],
                                 strategy: Union[Strategy, str], target_mfu: float,
                                 constants: Optional[SimConstants] = None, tol: float = 1e-5) -> float:
    """The compute efficiency at which the simulated MFU equals `target_mfu`.

    Step time is close to a + b / efficiency (compute scales, communication does not), so
    1/MFU is nearly linear in 1/efficiency: secant steps in that space converge in a few runs.
    """
    topo, work, strat = _resolve(topology, workload, strategy)
    c = constants or SimConstants()

    def mfu(e: float) -> float:
        return simulate(topo, work, strat, c.with_(compute_efficiency=e), baseline=False).mfu

    x0, x1 = 1 / 0.5, 1 / 0.9  # x = 1 / efficiency
    y0, y1 = 1 / mfu(0.5), 1 / mfu(0.9)
    for _ in range(20):
        if abs(1 / y1 - target_mfu) < tol:
            break
        x2 = x1 + (1 / target_mfu - y1) * (x1 - x0) / (y1 - y0) if y1 != y0 else x1
        x2 = max(x2, 1.0)
        x0, y0, x1 = x1, y1, x2
        y1 = 1 / mfu(1 / x1)
    e = 1 / x1
    if abs(1 / y1 - target_mfu) > 1e-3:
        raise UserError(f"target MFU {target_mfu:.1%} is not reachable with compute efficiency <= 1 "
                        f"(best {1 / y1:.1%})")
    return e
