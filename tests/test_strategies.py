"""Every strategy's plan, run by the numpy reference executor, leaves every rank of a group
with the exact sum of the group's buffers — on many random topologies, groups and sizes."""
import random

import numpy as np
import pytest

from hdc import cost
from hdc.errors import UserError
from hdc.reference import run_plan
from hdc.strategies import (Chunked, DistributedOptimizer, FlatRing, Hierarchical, LocalSGD, bucketed,
                            make_strategy)
from hdc.topology import topology_from_dict

TIER = {"latency": "5us", "bandwidth": "100Gbps"}


def random_topology(rng: random.Random, equal_sites: bool = True):
    n_sites = rng.randint(1, 3)
    nodes, gpn = rng.randint(1, 3), rng.randint(1, 4)
    sites = []
    for i in range(n_sites):
        n = nodes if equal_sites else rng.randint(1, 3)
        pods = rng.choice([p for p in (1, 2, 3) if n % p == 0])
        sites.append({"name": f"s{i}", "nodes": n, "gpus_per_node": gpn, "pods": pods,
                      "intra_node": TIER, "intra_pod": TIER})
    wan = [{"sites": [f"s{i}", f"s{i + 1}"], "rtt": f"{rng.randint(1, 40)}ms", "bandwidth": "10Gbps",
            "links": rng.randint(1, 4)} for i in range(n_sites - 1)]
    return topology_from_dict({"name": "random", "sites": sites, "wan": wan})


def random_groups(rng: random.Random, topo, equal_per_site: bool):
    """Split the GPUs into disjoint groups; with equal_per_site each group has as many members in every site."""
    n_sites = len(topo.sites)
    per_site = [list(topo.site_gpus(s)) for s in range(n_sites)]
    if not equal_per_site:
        gpus = list(range(topo.num_gpus))
        rng.shuffle(gpus)
        k = rng.randint(1, 3)
        return [sorted(gpus[i::k]) for i in range(k) if gpus[i::k]]
    m = min(len(p) for p in per_site)
    k = rng.choice([d for d in range(1, m + 1) if m % d == 0])  # groups
    groups = []
    for i in range(k):
        groups.append(sorted(x for p in per_site for x in p[i:m:k]))
    return groups


def check_sums(plan, groups, numel, train_step=0, expect="global"):
    rng = np.random.default_rng(numel)
    ranks = [r for g in groups for r in g]
    start = {r: rng.integers(-1000, 1000, numel).astype(np.float64) for r in ranks}
    buffers = {r: v.copy() for r, v in start.items()}
    run_plan(plan, buffers, train_step)
    for g in groups:
        total = np.sum([start[r] for r in g], axis=0)
        for r in g:
            np.testing.assert_array_equal(buffers[r], total)


STRATEGIES = [FlatRing(), Hierarchical(), Chunked(Hierarchical(), 3), Chunked(FlatRing(), 2, overlap_backward=True),
              Chunked(Hierarchical(), 4, inflight=2), DistributedOptimizer(True), DistributedOptimizer(False),
              LocalSGD(Hierarchical(), every=3), LocalSGD(FlatRing(), every=2)]


@pytest.mark.parametrize("seed", range(60))
def test_every_strategy_sums_exactly_on_random_topologies(seed):
    rng = random.Random(seed)
    topo = random_topology(rng)
    groups = random_groups(rng, topo, equal_per_site=True)
    for numel in (1, rng.randint(2, 50), 1001):
        for strat in STRATEGIES:
            plan = strat.plan(topo, groups, numel)
            check_sums(plan, groups, numel)


@pytest.mark.parametrize("seed", range(20))
def test_flat_ring_on_uneven_sites_and_groups(seed):
    rng = random.Random(1000 + seed)
    topo = random_topology(rng, equal_sites=False)
    groups = random_groups(rng, topo, equal_per_site=False)
    numel = rng.randint(1, 300)
    check_sums(FlatRing().plan(topo, groups, numel), groups, numel)


def test_local_sgd_syncs_sites_only_between_outer_steps():
    rng = random.Random(7)
    topo = topology_from_dict({"name": "t", "sites": [
        {"name": n, "nodes": 1, "gpus_per_node": 2, "intra_node": TIER, "intra_pod": TIER} for n in "ab"],
        "wan": [{"sites": ["a", "b"], "rtt": "10ms", "bandwidth": "1Gbps"}]})
    plan = LocalSGD(Hierarchical(), every=4).plan(topo, None, 11)
    start = {r: np.arange(11.0) * (r + 1) for r in range(4)}
    buffers = {r: v.copy() for r, v in start.items()}
    run_plan(plan, buffers, train_step=1)  # not a sync step: each site sums its own ranks
    np.testing.assert_array_equal(buffers[0], start[0] + start[1])
    np.testing.assert_array_equal(buffers[2], start[2] + start[3])
    check_sums(plan, [[0, 1, 2, 3]], 11, train_step=4)
    assert rng  # deterministic


def test_distributed_optimizer_shards_partition_the_buffer():
    rng = random.Random(3)
    for _ in range(20):
        topo = random_topology(rng)
        groups = random_groups(rng, topo, equal_per_site=True)
        numel = rng.randint(1, 200)
        plan = DistributedOptimizer(rng.random() < 0.5).plan(topo, groups, numel)
        for g in groups:
            covered = sorted(region for r in g for region in plan.owned_regions(r))
            covered = [c for c in covered if c[1] > 0]
            assert sum(n for _, n in covered) == numel
            assert all(a[0] + a[1] == b[0] for a, b in zip(covered, covered[1:]))
        # after only the grad phase, each rank holds the exact sum on its shard
        start = {r: np.arange(numel, dtype=np.float64) + r for g in groups for r in g}
        buffers = {r: v.copy() for r, v in start.items()}
        run_plan(plan, buffers, phase="grad")
        for g in groups:
            total = np.sum([start[r] for r in g], axis=0)
            for r in g:
                for off, n in plan.owned_regions(r):
                    np.testing.assert_array_equal(buffers[r][off:off + n], total[off:off + n])


def test_chunked_pipelines_phases_and_buckets_wait_for_backward():
    topo = random_topology(random.Random(11))
    plan = Chunked(Hierarchical(), 3).plan(topo, None, 30)
    phases = len(Hierarchical().plan(topo, None, 10).steps)
    assert len(plan.steps) == 3 * phases
    for s in plan.steps[phases:]:
        assert s.id - phases in s.deps  # same phase of the previous chunk
    plan = bucketed(FlatRing(), topo, [list(range(topo.num_gpus))], [5, 7, 9], element_size=4)
    assert [s.trigger for s in plan.steps] == ["bucket:0", "bucket:1", "bucket:2"]
    assert [s.regions[0] for s in plan.steps] == [(0, 5), (5, 7), (12, 9)]


def test_hierarchical_needs_equal_ranks_per_site():
    topo = random_topology(random.Random(5))
    while len(topo.sites) < 2:
        topo = random_topology(random.Random(len(topo.sites) + 99))
    group = list(topo.site_gpus(0)) + [topo.site_gpus(1).start]
    if len(topo.site_gpus(0)) == 1:
        pytest.skip("sites of one GPU")
    with pytest.raises(UserError, match="same number of ranks in every site"):
        Hierarchical().plan(topo, [group], 10)


def test_hierarchical_sends_one_kth_of_a_per_site_ring_across_the_wan():
    """Each rank ships 1/k (k = GPUs per site) of what a ring over one rank per site would."""
    topo = topology_from_dict({"name": "t", "site_defaults": {"nodes": 2, "gpus_per_node": 4, "intra_node": TIER,
                                                              "intra_pod": TIER},
                               "sites": [{"name": "a"}, {"name": "b"}],
                               "wan": [{"sites": ["a", "b"], "rtt": "20ms", "bandwidth": "10Gbps"}]})
    k, numel = 8, 8 * 1000
    hier = Hierarchical().plan(topo, None, numel)
    one_per_site = FlatRing().plan(topo, [[0, 8]], numel)
    flat = FlatRing().plan(topo, None, numel)
    _, h_rank = cost.wan_bytes(topo, hier)
    _, o_rank = cost.wan_bytes(topo, one_per_site)
    f_total, f_rank = cost.wan_bytes(topo, flat)
    assert h_rank == pytest.approx(o_rank / k)
    # flat ring: the two boundary ranks each ship 2(p-1)/p of the buffer across the WAN
    assert f_rank == pytest.approx(2 * 15 / 16 * numel * 4)
    assert f_total == pytest.approx(2 * f_rank)
    assert h_rank < f_rank / k


def test_make_strategy_names_and_errors():
    for name in ("flat_ring", "hierarchical", "chunked", "distributed_optimizer", "local_sgd"):
        assert make_strategy(name).name == name
    with pytest.raises(UserError, match="strategy: must be one of"):
        make_strategy("ring_of_fire")
    with pytest.raises(UserError, match=r"strategy.chunks: must be an integer >= 1 and <= 4096, got 0"):
        make_strategy("chunked", chunks=0)


def test_registry_knobs_reach_wrapped_strategies_and_unknown_ones_are_named():
    from hdc.strategies import strategy_from_dict

    s = strategy_from_dict({"name": "local_sgd", "inner": "distributed_optimizer", "hierarchical": False,
                            "every": 3, "outer_lr": 0.7, "outer_momentum": 0.9})
    assert s == LocalSGD(DistributedOptimizer(False), every=3, outer_lr=0.7, outer_momentum=0.9)
    assert s.outer_optimizer() == (0.7, 0.9, 0.0)
    nested = strategy_from_dict({"name": "chunked", "chunks": 2, "inner": {"name": "local_sgd", "every": 4}})
    assert nested == Chunked(LocalSGD(Hierarchical(), every=4), chunks=2)
    assert strategy_from_dict(nested.to_dict()) == nested  # round trip through plain data
    for spec, msg in [({"name": "hierarchical", "chunks": 2}, "strategy.chunks: not a knob of strategy hierarchical"),
                      ({"name": "local_sgd", "every": 0}, "strategy.every: must be an integer >= 1"),
                      ({"name": "local_sgd", "outer_momentum": 1.0}, "strategy.outer_momentum: must be a number"),
                      ({"name": "chunked", "inflight": True}, "strategy.inflight: must be an integer"),
                      ({"name": "chunked", "inner": "ring"}, "strategy.inner: must be one of"),
                      ({"name": "chunked", "chunks": float("inf")}, "strategy.chunks: must be an integer")]:
        with pytest.raises(UserError, match=msg):
            strategy_from_dict(spec)


@pytest.mark.parametrize("seed", range(12))
def test_compressed_sums_within_the_wire_precision_and_keeps_site_steps_exact(seed):
    """hdc.reference on compressed plans: every member of a group ends with the same values,
    within the int8/bf16 error of the exact sum; the inner strategy's site steps stay exact."""
    from hdc.strategies import strategy_from_dict

    rng = random.Random(seed)
    topo = random_topology(rng)
    groups = random_groups(rng, topo, equal_per_site=True)
    for spec in ({"name": "compressed", "wire": "int8"}, {"name": "compressed", "wire": "bf16"},
                 {"name": "compressed", "inner": {"name": "chunked", "chunks": 3}},
                 {"name": "compressed", "inner": "distributed_optimizer"}):
        strat = strategy_from_dict(spec)
        numel = rng.randint(1, 400)
        plan = strat.plan(topo, groups, numel)
        lossy = [s for s in plan.steps if plan.lossy(s)]
        assert all(s.tier == "wan" and s.op != "all_reduce" for s in lossy)
        assert all(s.phase == "grad" for s in lossy)  # the distributed optimizer's parameter AG is exact
        start = {r: np.random.default_rng([seed, r]).standard_normal(numel).astype(np.float32)
                 for g in groups for r in g}
        buffers = {r: v.copy() for r, v in start.items()}
        run_plan(plan, buffers, phase="grad" if "distributed" in strat.describe() else None)
        for g in groups:
            exact = np.sum([start[r].astype(np.float64) for r in g], axis=0)
            scale = np.max(np.abs(exact)) + 1e-30
            for r in g:
                owned = plan.owned_regions(r)
                got = np.concatenate([buffers[r][o:o + n] for o, n in owned])
                want = np.concatenate([exact[o:o + n] for o, n in owned])
                tol = 0.0 if not lossy or len({topo.locate(x).site for x in g}) == 1 else 0.03
                assert np.max(np.abs(got - want), initial=0.0) <= tol * scale + 1e-5 * scale, (spec, r)


def test_streaming_local_sgd_syncs_one_fragment_per_offset():
    from hdc.strategies import strategy_from_dict

    topo = topology_from_dict({"name": "t", "sites": [
        {"name": n, "nodes": 1, "gpus_per_node": 2, "intra_node": TIER, "intra_pod": TIER} for n in "ab"],
        "wan": [{"sites": ["a", "b"], "rtt": "10ms", "bandwidth": "1Gbps"}]})
    strat = strategy_from_dict({"name": "streaming_local_sgd", "every": 4, "fragments": 2, "stride": 2})
    numel = 21
    frags = strat.fragment_regions(numel)
    assert [sorted(frags[0] + frags[1])] == [[(0, 6), (6, 5), (11, 5), (16, 5)]]
    assert frags[0] == [(0, 6), (11, 5)] and frags[1] == [(6, 5), (16, 5)]  # strided: pieces p, p+P
    plan = strat.plan(topo, None, numel)
    start = {r: np.arange(numel, dtype=np.float64) * (r + 1) for r in range(4)}
    site_sum = {0: start[0] + start[1], 2: start[2] + start[3]}
    total = sum(start.values())
    for train_step, due in ((0, 0), (1, None), (2, 1), (4, 0), (6, 1)):
        buffers = {r: v.copy() for r, v in start.items()}
        run_plan(plan, buffers, train_step)
        synced = np.zeros(numel, bool)
        for off, n in frags[due] if due is not None else []:
            synced[off:off + n] = True
        for r in range(4):  # the due fragment summed over both sites, the rest over the rank's site
            np.testing.assert_array_equal(buffers[r], np.where(synced, total, site_sum[2 * (r // 2)]))
