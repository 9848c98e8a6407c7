"""Plan steps on the simulated network: equal to hdc's alpha-beta closed form when a step
runs alone; contention appears where flows share links."""
import pytest

from hdc import cost
from hdc.strategies import FlatRing, Hierarchical, make_strategy
from hdc.topology import load_topology, topology_from_dict
from simulator.collectives import simulate_plan
from simulator.network import Routes


def topo(sites=2, nodes=2, gpus=4, pods=1, wan_links=1, wan_bw="100Gbps", rtt="10ms"):
    names = [f"s{i}" for i in range(sites)]
    return topology_from_dict({
        "name": "grid", "gpu": {"name": "g"},
        "site_defaults": {"nodes": nodes, "gpus_per_node": gpus, "pods": pods,
                          "intra_node": {"latency": "3us", "bandwidth": "450GB/s"},
                          "intra_pod": {"latency": "5us", "bandwidth": "400Gbps"},
                          "intra_site": {"latency": "7us", "bandwidth": "400Gbps"}},
        "sites": [{"name": n} for n in names],
        "wan": [{"sites": [a, b], "rtt": rtt, "bandwidth": wan_bw, "links": wan_links}
                for i, a in enumerate(names) for b in names[i + 1:]]})


def sim_time(t, plan, mode="coflow"):
    return max((e for _, e in simulate_plan(Routes(t), plan, mode).values()), default=0.0)


SHAPES = [dict(sites=1, nodes=1, gpus=8), dict(sites=1, nodes=4, gpus=2, pods=2), dict(sites=2, nodes=2, gpus=4),
          dict(sites=3, nodes=2, gpus=2), dict(sites=2, nodes=4, gpus=8, pods=2, wan_links=4)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [4 * 1024, 16 * 2**20, 2**30])
@pytest.mark.parametrize("op", ["all_reduce", "reduce_scatter", "all_gather"])
def test_uncontended_ring_equals_alpha_beta(shape, size, op):
    t = topo(**shape)
    from hdc.plan import Plan
    plan = Plan(numel=size // 4, element_size=4)
    plan.add(op, [list(range(t.num_gpus))], [(0, size // 4)])
    ab = cost.plan_time_s(t, plan)
    assert sim_time(t, plan) == pytest.approx(ab, rel=0.01)
    assert sim_time(t, plan, "exact") == pytest.approx(ab, rel=0.01)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [64 * 1024, 256 * 2**20])
@pytest.mark.parametrize("name", ["flat_ring", "hierarchical", "distributed_optimizer", "local_sgd"])
def test_uncontended_strategies_equal_alpha_beta(shape, size, name):
    t = topo(**shape)
    plan = make_strategy(name).plan(t, None, size // 4, 4)
    assert sim_time(t, plan) == pytest.approx(cost.plan_time_s(t, plan), rel=0.01)


def test_dp_rings_over_one_wan_link_take_n_times_longer():
    # N disjoint DP rings, each crossing the one WAN link twice (once per direction): the
    # bandwidth term grows N-fold once the WAN, not the NICs, is the bottleneck.
    t = topo(sites=2, nodes=1, gpus=8, wan_links=1, wan_bw="10Gbps", rtt="1ms")
    size = 2**28
    times = {}
    for n in (1, 2, 4, 8):
        groups = [[g, 8 + g] for g in range(n)]
        plan = FlatRing().plan(t, groups, size // 4, 4)
        times[n] = sim_time(t, plan)
    latency = cost.rounds("all_reduce", 2) * 1e-3
    for n in (2, 4, 8):
        assert (times[n] - latency) == pytest.approx(n * (times[1] - latency), rel=0.01)


def test_hierarchical_crosses_the_wan_less_than_flat_ring():
    t = topo(sites=2, nodes=2, gpus=4, wan_links=1, wan_bw="10Gbps", rtt="20ms")
    flat = sim_time(t, FlatRing().plan(t, None, 2**26, 4))
    hier = sim_time(t, Hierarchical().plan(t, None, 2**26, 4))
    assert hier < flat / 2


def test_contended_steps_take_longer_than_their_closed_form_assumes():
    # hdc.cost times steps alone; two chunks' WAN phases overlapping in the simulator share it
    t = topo(sites=2, nodes=1, gpus=4, wan_links=1, wan_bw="10Gbps", rtt="1ms")
    plan = make_strategy("chunked", chunks=4, inflight=4).plan(t, None, 2**26, 4)
    assert sim_time(t, plan) > cost.plan_time_s(t, plan) * 1.2


def test_pipelined_model_charges_the_codec_of_lossy_steps_only():
    """LibraryPipelining.codec_Bps: a lossy reduce-scatter encodes its region and decodes p shards, an
    all-gather encodes one shard and decodes p; exact steps cost nothing more."""
    from simulator.collectives import LibraryPipelining, simulate_plan
    from simulator.network import Routes

    t = load_topology("tiny-2site")
    pipe = LibraryPipelining(codec_Bps=1e9)
    assert pipe.codec_s("reduce_scatter", 2, 1000) == (4000 / 1e9, 4000 / 1e9)
    assert pipe.codec_s("all_gather", 2, 1000) == (2000 / 1e9, 4000 / 1e9)
    assert LibraryPipelining().codec_s("reduce_scatter", 2, 1000) == (0.0, 0.0)
    exact = make_strategy("hierarchical").plan(t, None, 1 << 20, 4)
    lossy = make_strategy("compressed").plan(t, None, 1 << 20, 4)
    routes = Routes(t)

    def total(plan, p):
        return max(end for _, end in simulate_plan(routes, plan, "pipelined", pipeline=p).values())
    assert total(exact, pipe) == total(exact, LibraryPipelining())
    wan = [s for s in lossy.steps if lossy.lossy(s)]
    extra = sum(sum(pipe.codec_s(s.op, 2, s.numel)) for s in wan)
    assert total(lossy, pipe) == pytest.approx(total(lossy, LibraryPipelining()) + extra, rel=1e-9)
