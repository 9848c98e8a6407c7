"""Measured time of every strategy's plan on local processes (gloo on loopback), next to the
alpha-beta bound and the simulator's prediction, with torch's own all_reduce of the same
buffer, measured in the same run, as the baseline.

    python benchmarks/real_collectives.py                   # tiny-2site layout, 4 processes
    python benchmarks/real_collectives.py --sizes 64KiB 4MiB --repeats 10 --spans

Loopback numbers: the processes share this machine's cores and its loopback, so every
"link" is loopback TCP. The tiny-2site WAN (20 ms RTT, 1 Gbit/s) is NOT imposed here (that
needs the namespace emulation); the bound is printed for the tiny-2site numbers and for a
copy of it whose WAN is as fast as loopback (`ab-loop`), which is the one to compare with.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.distributed as dist

from hdc import cost
from hdc.strategies import make_strategy
from hdc.topology import load_topology, topology_from_dict
from hdc.units import fmt_bytes, parse_size

CASES = [  # (label, make_strategy kwargs, train_step)
    ("flat_ring", dict(name="flat_ring"), 0),
    ("hierarchical", dict(name="hierarchical"), 0),
    ("chunked(4)", dict(name="chunked", chunks=4), 0),
    ("distributed_optimizer", dict(name="distributed_optimizer"), 0),
    ("local_sgd sync step", dict(name="local_sgd", every=2), 0),
    ("local_sgd other step", dict(name="local_sgd", every=2), 1),
]


def _tier(tier) -> dict:
    return {"latency": f"{tier.latency_s * 1e6:g}us", "bandwidth": f"{tier.bandwidth_Bps:g}B/s"}


def loopback_copy(t):
    """The same layout with the WAN as fast as the intra-site tier (loopback on CPU)."""
    if not t.wan:
        return t
    s0 = t.sites[0]
    return topology_from_dict({
        "name": f"{t.name}-loopback",
        "site_defaults": {"nodes": s0.nodes, "gpus_per_node": s0.gpus_per_node,
                          "intra_node": _tier(s0.intra_node), "intra_pod": _tier(s0.intra_pod)},
        "sites": [{"name": s.name} for s in t.sites],
        "wan": [{"sites": list(w.sites), "rtt": f"{2 * s0.intra_pod.latency_s * 1e6:g}us",
                 "bandwidth": f"{s0.intra_pod.bandwidth_Bps:g}B/s"} for w in t.wan],
    })


def _strategy(kw: dict):
    return make_strategy(kw["name"], **{k: v for k, v in kw.items() if k != "name"})


def sims_fmt(v) -> str:
    return f"{'n/a':>10}" if v is None else f"{v * 1e3:>8.3f}ms"


def simulated_s(topology, plan, train_step: int = 0):
    """The simulator's prediction of the plan run alone: `simulator.simulate_plan(topology,
    plan)` if the package offers it, else `simulator.collectives.simulate_plan` (step id ->
    (start, end)); None when there is no simulator."""
    try:
        import simulator
    except ImportError:
        return None
    try:
        fn = getattr(simulator, "simulate_plan", None)
        if fn is not None:
            out = fn(topology, plan)
        else:
            from simulator.collectives import simulate_plan
            from simulator.network import Routes

            out = simulate_plan(Routes(topology), plan, train_step=train_step)
    except Exception as e:  # the simulator is under construction: say why, keep measuring
        print(f"(simulator failed: {type(e).__name__}: {e})", file=sys.stderr)
        return None
    if isinstance(out, (int, float)):
        return float(out)
    if isinstance(out, dict) and all(isinstance(v, tuple) for v in out.values()):
        return max((end for _, end in out.values()), default=0.0)
    for key in ("time_s", "step_time_s", "total_s", "makespan_s"):
        v = out.get(key) if isinstance(out, dict) else getattr(out, key, None)
        if isinstance(v, (int, float)):
            return float(v)
    return None


def resolve_topology(spec: str):
    """A preset or file, or 'world:N' for the test layouts of N processes (2 sites when N is even)."""
    if spec.startswith("world:"):
        from trainer.selfcheck.executor import topology_for_world

        return topology_for_world(int(spec.split(":", 1)[1]))
    return load_topology(spec)


def _bench(rank: int, world: int, topology_name: str, sizes: list[int], repeats: int) -> list[dict]:
    from trainer.distributed.executor import PlanExecutor
    from trainer.distributed.groups import ProcessGroups

    topo = resolve_topology(topology_name)
    groups = ProcessGroups(topo, timeout_s=120)
    groups.build_families()
    rows = []

    def timed(fn) -> tuple[float, list]:
        times, spans = [], []
        for i in range(repeats + 2):
            dist.barrier()
            t0 = time.perf_counter()
            s = fn()
            if groups.device.type == "cuda":
                torch.cuda.synchronize()
            dt = torch.tensor([time.perf_counter() - t0], device=groups.device)
            dist.all_reduce(dt, op=dist.ReduceOp.MAX)  # a collective ends when its slowest rank does
            if i >= 2:
                times.append(float(dt))
                spans = s or spans
        return statistics.median(times), spans

    for n in sizes:
        buf = torch.randn(n, device=groups.device)
        base, _ = timed(lambda: dist.all_reduce(buf))
        rows.append({"case": "torch all_reduce (baseline)", "numel": n, "measured_s": base, "spans": []})
        for label, kw, step in CASES:
            plan = _strategy(kw).plan(topo, None, n)
            ex = PlanExecutor(plan, groups)
            t, spans = timed(lambda: ex.run(buf, step))
            rows.append({"case": label, "numel": n, "train_step": step, "measured_s": t, "spans": spans,
                         "baseline_s": base})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topology", default="tiny-2site",
                    help="layout (one process per GPU): preset, file, or world:N (default tiny-2site)")
    ap.add_argument("--world", type=int, default=None, help="shorthand for --topology world:N")
    ap.add_argument("--backend", choices=("gloo", "nccl"), default="gloo",
                    help="gloo (CPU tensors) or nccl (one GPU per process)")
    ap.add_argument("--sizes", nargs="+", default=["64KiB", "1MiB", "8MiB"], help="buffer sizes (fp32)")
    ap.add_argument("--repeats", type=int, default=7, help="timed repetitions per case (median; 2 warm-ups)")
    ap.add_argument("--spans", action="store_true", help="also print rank 0's per-step spans of the largest size")
    args = ap.parse_args(argv)

    from trainer.distributed.local import spawn_world

    if args.world:
        args.topology = f"world:{args.world}"
    topo = resolve_topology(args.topology)
    loop = loopback_copy(topo)
    sizes = [parse_size(s) // 4 for s in args.sizes]
    t0 = time.time()
    rows = spawn_world(_bench, topo.num_gpus, args=(args.topology, sizes, args.repeats), timeout_s=1800,
                       backend=args.backend)[0]
    where = "gloo on loopback" if args.backend == "gloo" else "NCCL, one GPU per process"
    print(f"real executor on {topo.num_gpus} local processes ({topo.name} layout, {where}, "
          f"median of {args.repeats}); run took {time.time() - t0:.0f} s")
    print("ab = alpha-beta bound (hdc.cost.plan_time_s), sim = simulator prediction (simulator.collectives."
          "simulate_plan); -loop: WAN as fast as the intra-site tier (what runs here), -wan: the topology's "
          "WAN (NOT imposed here)")
    head = (f"{'case':<28} {'size':>8} {'measured':>10} {'vs torch AR':>11} {'ab-loop':>10} {'sim-loop':>10} "
            f"{'ab-wan':>10} {'sim-wan':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        n = r["numel"]
        if r["case"].startswith("torch"):
            print(f"{r['case']:<28} {fmt_bytes(4 * n):>8} {r['measured_s'] * 1e3:>8.3f}ms {'1.00x':>11}")
            continue
        label, kw, step = next(c for c in CASES if c[0] == r["case"])
        strat = _strategy(kw)
        ab_wan = cost.plan_time_s(topo, strat.plan(topo, None, n), step)
        ab_loop = cost.plan_time_s(loop, strat.plan(loop, None, n), step)
        sims = [simulated_s(t, strat.plan(t, None, n), step) for t in (loop, topo)]
        print(f"{r['case']:<28} {fmt_bytes(4 * n):>8} {r['measured_s'] * 1e3:>8.3f}ms "
              f"{r['measured_s'] / r['baseline_s']:>10.2f}x {ab_loop * 1e3:>8.3f}ms "
              f"{sims_fmt(sims[0])} {ab_wan * 1e3:>8.3f}ms {sims_fmt(sims[1])}")
    if args.spans:
        big = max(sizes)
        print(f"\nrank 0 spans, {fmt_bytes(4 * big)} (last timed run): step label op tier start_s end_s bytes")
        for r in rows:
            if r["numel"] == big and r["spans"]:
                print(f"  {r['case']}")
                for s in sorted(r["spans"], key=lambda s: s["start_s"]):
                    print(f"    {s['step_id']:>3} {s['label']:<13} {s['op']:<15} {s['tier']:<10} "
                          f"{s['start_s'] * 1e3:8.3f}ms {s['end_s'] * 1e3:8.3f}ms {fmt_bytes(s['bytes']):>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
