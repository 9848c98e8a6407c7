"""Correctness checks of the real executor and DistGradientSync, run inside a world.

Shared by the tests (gloo, local processes), `benchmarks/gpu_check.sh` (NCCL) and anyone
who wants to check a new cluster: `python -m trainer.selfcheck.executor` under `hdc launch` or
torchrun runs the executor cases on the world it finds and prints one line per case.

Every case compares this rank's result with (a) hdc.reference on all ranks' inputs (every
rank rebuilds every rank's input from a seed) and (b) torch.distributed.all_reduce of the
input over the group the plan sums over.
"""
from __future__ import annotations

import sys
import time
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from hdc.plan import Plan
from hdc.reference import run_plan
from hdc.strategies import (Chunked, DistributedOptimizer, FlatRing, Hierarchical, LocalSGD, Strategy,
                            by_site)
from hdc.topology import Topology, topology_from_dict
from trainer.distributed.executor import PlanExecutor
from trainer.distributed.groups import ProcessGroups, backend_device

SIZES = (1, 7, 1001)


def tiny_topology(sites: int, nodes: int = 1, gpus_per_node: int = 2, rtt: str = "20ms",
                  wan_bandwidth: str = "1Gbps") -> Topology:
    """`sites` × `nodes` × `gpus_per_node` CPU ranks (2×1×2 is the tiny-2site preset), every
    pair of sites joined by a WAN link."""
    names = [f"site-{chr(ord('a') + i)}" for i in range(sites)]
    return topology_from_dict({
        "name": f"tiny-{sites}x{nodes}x{gpus_per_node}",
        "gpu": {"name": "cpu-rank", "peak_flops": "50GFLOPS", "memory": "4GB"},
        "site_defaults": {"nodes": nodes, "gpus_per_node": gpus_per_node,
                          "intra_node": {"latency": "20us", "bandwidth": "2GB/s"},
                          "intra_pod": {"latency": "20us", "bandwidth": "2GB/s"}},
        "sites": [{"name": n} for n in names],
        "wan": [{"sites": [a, b], "rtt": rtt, "bandwidth": wan_bandwidth}
                for i, a in enumerate(names) for b in names[i + 1:]],
    })


def topology_for_world(world_size: int) -> Topology:
    """The test layouts: 2 → 2 sites × 1 × 1; 4 → 2 × 1 × 2 (tiny-2site); 6 → 3 × 1 × 2."""
    layouts = {1: (1, 1, 1), 2: (2, 1, 1), 4: (2, 1, 2), 6: (3, 1, 2), 8: (2, 1, 4)}
    if world_size not in layouts:
        return tiny_topology(1, 1, world_size)
    s, n, g = layouts[world_size]
    return tiny_topology(s, n, g)


def strategy_cases() -> list[tuple[str, Strategy, tuple[int, ...]]]:
    """(name, strategy, train steps to run): local_sgd at a sync step (0) and a non-sync one (1)."""
    return [
        ("flat_ring", FlatRing(), (0,)),
        ("hierarchical", Hierarchical(), (0,)),
        ("chunked", Chunked(Hierarchical(), chunks=3), (0,)),
        ("chunked-inflight2-flat", Chunked(FlatRing(), chunks=3, inflight=2), (0,)),
        ("distributed_optimizer", DistributedOptimizer(hierarchical=True), (0,)),
        ("distributed_optimizer-flat", DistributedOptimizer(hierarchical=False), (0,)),
        ("chunked-distopt", Chunked(DistributedOptimizer(), chunks=3), (0,)),
        ("local_sgd", LocalSGD(Hierarchical(), every=2), (0, 1)),
    ]


def _input(seed: int, rank: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, rank]).standard_normal(n).astype(np.float32)


def _sum_group(topology: Topology, strategy: Strategy, rank: int, world: int, train_step: int) -> list[int]:
    """The ranks whose inputs end up summed on `rank`."""
    if isinstance(strategy, LocalSGD) and train_step % strategy.every:
        return [g for g in by_site(topology, range(world), strategy.name) if rank in g][0]
    return list(range(world))


def handmade_plan(world: int, n: int) -> Plan:
    """Broadcast from the last rank, a send/recv, then RS and AG over the ranks in reverse
    order (member i is not process-group rank i): every op and the shard permutation."""
    plan = Plan(numel=n, element_size=4, strategy="handmade", ranks=tuple(range(world)))
    rev = tuple(reversed(range(world)))
    half = n // 2
    a = plan.add("broadcast", [rev], [(0, half)], label="bcast")
    b = plan.add("send_recv", [(0, world - 1)], [(half, n - half)], deps=(a.id,), label="p2p")
    c = plan.add("reduce_scatter", [rev], [(0, n)], deps=(b.id,), label="rs-rev")
    plan.add("all_gather", [rev], [(0, n)], deps=(c.id,), label="ag-rev")
    return plan


def executor_cases(rank: int, world: int, sizes=SIZES, device: Optional[str] = None) -> list[dict]:
    """Run every strategy case on this world; one result dict per (case, size, train step)."""
    topo = topology_for_world(world)
    groups = ProcessGroups(topo, timeout_s=60)
    groups.build_families()
    dev = torch.device(device) if device else groups.device
    out = []
    seed = 0
    for name, strategy, steps in strategy_cases():
        for n in sizes:
            plan = strategy.plan(topo, None, n)
            ex = PlanExecutor(plan, groups)
            for train_step in steps:
                seed += 1
                inputs = {r: _input(seed, r, n) for r in range(world)}
                ref = {r: v.copy() for r, v in inputs.items()}
                run_plan(plan, ref, train_step)
                # a flat buffer, and the same data as three uneven "buckets" (regions span them)
                flat = torch.from_numpy(inputs[rank].copy()).to(dev)
                t0 = time.perf_counter()
                spans = ex.run(flat, train_step)
                elapsed = time.perf_counter() - t0
                cuts = sorted({0, n, n // 3, (2 * n) // 3 + 1 if n > 2 else n})
                pieces = [torch.from_numpy(inputs[rank][a:b].copy()).to(dev) for a, b in zip(cuts, cuts[1:])]
                ex.run(pieces, train_step)
                as_buckets = torch.cat(pieces).cpu().numpy()
                sum_ranks = _sum_group(topo, strategy, rank, world, train_step)
                ar = torch.from_numpy(inputs[rank].copy()).to(dev)
                pg = groups.get(sum_ranks)
                if pg is not None:
                    dist.all_reduce(ar, group=pg)
                mine = flat.cpu().numpy()
                out.append({
                    "case": name, "numel": n, "train_step": train_step, "rank": rank,
                    "ok_reference": bool(np.allclose(mine, ref[rank], rtol=1e-5, atol=1e-5)),
                    "ok_buckets": bool(np.allclose(as_buckets, ref[rank], rtol=1e-5, atol=1e-5)),
                    "ok_all_reduce": bool(np.allclose(mine, ar.cpu().numpy(), rtol=1e-5, atol=1e-5)),
                    "max_err": float(np.max(np.abs(mine - ref[rank]))) if n else 0.0,
                    "steps": len(spans), "elapsed_s": elapsed,
                })
    for n in sizes:  # every collective kind, groups not in sorted order, by hand
        seed += 1
        plan = handmade_plan(world, n)
        ex = PlanExecutor(plan, groups)
        inputs = {r: _input(seed, r, n) for r in range(world)}
        ref = {r: v.copy() for r, v in inputs.items()}
        run_plan(plan, ref)
        buf = torch.from_numpy(inputs[rank].copy()).to(dev)
        ex.run(buf)
        mine = buf.cpu().numpy()
        out.append({"case": "handmade", "numel": n, "train_step": 0, "rank": rank,
                    "ok_reference": bool(np.allclose(mine, ref[rank], rtol=1e-5, atol=1e-5)),
                    "ok_buckets": True, "ok_all_reduce": True, "max_err": float(np.max(np.abs(mine - ref[rank]))),
                    "steps": len(plan.steps), "elapsed_s": 0.0})
    # the distributed optimizer in two calls: 'grad' (owned shard reduced), then 'param'
    for n in sizes:
        seed += 1
        plan = DistributedOptimizer().plan(topo, None, n)
        ex = PlanExecutor(plan, groups)
        inputs = {r: _input(seed, r, n) for r in range(world)}
        total = np.sum([inputs[r] for r in range(world)], axis=0)
        buf = torch.from_numpy(inputs[rank].copy()).to(dev)
        ex.run(buf, 0, "grad")

        (off, m), = plan.owned_regions(rank)
        ok_shard = bool(np.allclose(buf.cpu().numpy()[off:off + m], total[off:off + m], rtol=1e-5, atol=1e-5))
        ex.run(buf, 0, "param")
        out.append({"case": "distopt-phases", "numel": n, "train_step": 0, "rank": rank,
                    "ok_reference": ok_shard and bool(np.allclose(buf.cpu().numpy(), total, rtol=1e-5, atol=1e-5)),
                    "ok_buckets": True, "ok_all_reduce": True, "max_err": 0.0, "steps": 0, "elapsed_s": 0.0})
    return out


LOSSY = ({"name": "compressed", "wire": "int8"}, {"name": "compressed", "wire": "bf16"},
         {"name": "compressed", "inner": "flat_ring"}, {"name": "compressed", "scope": "all"},
         {"name": "compressed", "inner": {"name": "chunked", "chunks": 3, "inflight": 2}})


def lossy_cases(rank: int, world: int, sizes=SIZES + (100_003,)) -> list[dict]:
    """Compressed plans (int8/bf16 wire): the executor's result equals hdc.reference's bit for
    bit, and the error of the lossy sum against the exact sum (max over elements, relative to
    the largest |sum|)."""
    from hdc.strategies import strategy_from_dict

    topo = topology_for_world(world)
    groups = ProcessGroups(topo, timeout_s=60)
    out, seed = [], 10_000
    for spec in LOSSY:
        strategy = strategy_from_dict(spec)
        for n in sizes:
            seed += 1
            plan = strategy.plan(topo, None, n)
            inputs = {r: _input(seed, r, n) for r in range(world)}
            ref = {r: v.copy() for r, v in inputs.items()}
            run_plan(plan, ref)
            buf = torch.from_numpy(inputs[rank].copy()).to(groups.device)
            spans = PlanExecutor(plan, groups).run(buf)
            mine = buf.cpu().numpy()
            exact = np.sum([inputs[r].astype(np.float64) for r in range(world)], axis=0)
            out.append({"case": strategy.describe(), "numel": n, "rank": rank,
                        "bit_exact": bool(np.array_equal(mine, ref[rank])),
                        "max_rel_err": float(np.max(np.abs(mine - exact)) / max(np.max(np.abs(exact)), 1e-30)),
                        "wan_bytes": sum(sp["bytes"] for sp in spans if sp["tier"] == "wan")})
    return out


def main(argv: Optional[list[str]] = None) -> int:
    """Run the executor cases on the world from the environment (torchrun / hdc launch)."""
    from trainer.distributed.groups import init_distributed

    backend = init_distributed(timeout_s=120)
    rank, world = dist.get_rank(), dist.get_world_size()
    results = executor_cases(rank, world)
    bad = [r for r in results if not (r["ok_reference"] and r["ok_buckets"] and r["ok_all_reduce"])]
    if rank == 0:
        print(f"hdc executor checks: backend {backend}, world {world}, {len(results)} cases")
        for r in results:
            flag = "ok " if r["ok_reference"] and r["ok_buckets"] and r["ok_all_reduce"] else "BAD"
            print(f"  {flag} {r['case']:<28} n={r['numel']:<6} step={r['train_step']} "
                  f"max_err={r['max_err']:.2e} {r['elapsed_s'] * 1e3:8.3f} ms")
    flags = torch.tensor([len(bad)], device=backend_device(backend))
    dist.all_reduce(flags)
    if rank == 0:
        print("all ranks ok" if int(flags.item()) == 0 else f"FAILED cases on some rank: {int(flags.item())}")
    from trainer.distributed.groups import shutdown_distributed

    shutdown_distributed()
    return 0 if int(flags.item()) == 0 else 1


def fault_case(rank: int, world: int, mode: str, victim: int, timeout_s: float) -> dict:
    """A peer dies ('kill': exits mid-collective) or stalls ('stall': alive but silent) after
    a successful warm-up; the other ranks report how their executor ended and how fast."""
    import os

    topo = topology_for_world(world)
    groups = ProcessGroups(topo, timeout_s=timeout_s)
    plan = Hierarchical().plan(topo, None, 100_001)
    ex = PlanExecutor(plan, groups)
    ex.run(torch.ones(plan.numel))  # warm-up: every connection is up
    if rank == victim:
        if mode == "kill":
            time.sleep(0.3)
            os._exit(1)
        time.sleep(timeout_s + 3)
        return {"rank": rank, "victim": True}
    t0 = time.perf_counter()
    try:
        ex.run(torch.ones(plan.numel))
        return {"rank": rank, "error": None, "elapsed_s": time.perf_counter() - t0}
    except RuntimeError as e:
        return {"rank": rank, "error": str(e), "elapsed_s": time.perf_counter() - t0}


if __name__ == "__main__":
    sys.exit(main())
