"""Alpha-beta costs against numbers computed by hand."""
import pytest

from hdc import cost
from hdc.strategies import FlatRing, Hierarchical
from hdc.topology import topology_from_dict


def two_sites(gpus_per_node=4, rtt="20ms", wan_bw="8Gbps", links=1):
    return topology_from_dict({
        "name": "t",
        "site_defaults": {"nodes": 1, "gpus_per_node": gpus_per_node,
                          "intra_node": {"latency": "10us", "bandwidth": "100GB/s"},
                          "intra_pod": {"latency": "20us", "bandwidth": "10GB/s"}},
        "sites": [{"name": "a"}, {"name": "b"}],
        "wan": [{"sites": ["a", "b"], "rtt": rtt, "bandwidth": wan_bw, "links": links}]})


def test_textbook_ring_formulas():
    # 4 ranks, 1 GB, 10 us, 100 GB/s: RS = 3 * (10us + 0.25 GB / 100 GB/s) = 3 * 2.51 ms
    assert cost.ring_reduce_scatter_s(4, 1e9, 10e-6, 100e9) == pytest.approx(3 * 2.51e-3)
    assert cost.ring_all_gather_s(4, 1e9, 10e-6, 100e9) == pytest.approx(3 * 2.51e-3)
    assert cost.ring_all_reduce_s(4, 1e9, 10e-6, 100e9) == pytest.approx(6 * 2.51e-3)
    assert cost.ring_all_reduce_s(1, 1e9, 10e-6, 100e9) == 0.0
    # hierarchical: k=4 per site, 2 sites: 2 * RS_site + AR_wan(n/4)
    t = cost.hierarchical_all_reduce_s(4, 2, 1e9, 10e-6, 100e9, 10e-3, 1e9)
    assert t == pytest.approx(2 * 3 * 2.51e-3 + 2 * (10e-3 + 0.125e9 / 1e9))


def test_single_site_ring_step_by_hand():
    topo = two_sites()
    plan = FlatRing().plan(topo, [[0, 1, 2, 3]], 1_000_000, element_size=4)  # 4 MB inside one node
    # 6 rounds of (10 us + 1 MB / 100 GB/s = 10 us) = 120 us
    assert cost.step_time_s(topo, plan, plan.steps[0]) == pytest.approx(6 * 20e-6)


def test_flat_ring_across_the_wan_is_bounded_by_the_wan_hop():
    topo = two_sites()
    plan = FlatRing().plan(topo, None, 8_000_000, element_size=4)  # 32 MB, 8 ranks
    # slowest message each round crosses the WAN: 10us/2*2 (pods) + 10 ms + 4 MB / 1 GB/s
    one_way = 20e-6 + 10e-3  # intra_site defaults to intra_pod: 10 us each side
    per_round = one_way + 4e6 / 1e9
    assert cost.step_time_s(topo, plan, plan.steps[0]) == pytest.approx(14 * per_round)


def test_hierarchical_plan_by_hand_and_wan_sharing():
    topo = two_sites()
    plan = Hierarchical().plan(topo, None, 8_000_000, element_size=4)  # 32 MB per rank
    rs, ar, ag = plan.steps
    # in-site: 3 rounds of (10 us + 8 MB / 100 GB/s = 80 us)
    assert cost.step_time_s(topo, plan, rs) == pytest.approx(3 * 90e-6)
    # across: 4 pairs share one 1 GB/s WAN direction; each message 4 MB (8 MB shard / 2)
    one_way = 20e-6 + 10e-3
    assert cost.step_time_s(topo, plan, ar) == pytest.approx(2 * (one_way + 4e6 / (1e9 / 4)))
    assert cost.plan_time_s(topo, plan) == pytest.approx(2 * 3 * 90e-6 + 2 * (one_way + 16e-3))
    # more parallel links give proportionally more bandwidth
    topo4 = two_sites(links=4)
    plan4 = Hierarchical().plan(topo4, None, 8_000_000, element_size=4)
    assert cost.step_time_s(topo4, plan4, plan4.steps[1]) == pytest.approx(2 * (one_way + 4e-3))


def _three_sites(rtt_ac):
    return topology_from_dict({
        "name": "t3",
        "site_defaults": {"nodes": 1, "gpus_per_node": 2,
                          "intra_node": {"latency": "10us", "bandwidth": "100GB/s"},
                          "intra_pod": {"latency": "20us", "bandwidth": "10GB/s"}},
        "sites": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
        "wan": [{"sites": ["a", "b"], "rtt": "10ms", "bandwidth": "1Gbps"},
                {"sites": ["b", "c"], "rtt": "10ms", "bandwidth": "1Gbps"},
                {"sites": ["a", "c"], "rtt": rtt_ac, "bandwidth": "8Gbps"}]})


def _fresh_plan_time(topology, plan):
    """plan_time_s with every cross-topology cache emptied first."""
    cost._SIGNATURES.clear()
    return cost.plan_time_s(topology, plan)


@pytest.mark.parametrize("rtt_ac", ["5ms", "50ms"])  # a->c direct, or a->b->c: the route changes
def test_cached_costs_equal_fresh_ones_when_a_sweep_changes_link_speeds(rtt_ac):
    """Costs are cached per path structure and recomputed per link speed: a topology with the
    same structure but other speeds or WAN routes must get its own numbers."""
    plan = FlatRing().plan(_three_sites("5ms"), None, 1 << 20)
    warm = [cost.plan_time_s(_three_sites(r), plan) for r in ("5ms", "50ms", rtt_ac)]
    assert warm[2] == _fresh_plan_time(_three_sites(rtt_ac), plan)
    assert warm[0] != warm[1]  # 5 ms direct vs the 2 x 5 ms detour at 1 Gbit/s
    assert _three_sites("5ms").route_key != _three_sites("50ms").route_key
    assert _three_sites("5ms").structure_key == _three_sites("50ms").structure_key


def test_direct_algorithm_is_one_round_of_the_same_bytes_and_the_simulator_agrees():
    """A direct (all-to-all) reduce-scatter over 3 sites: 1 round instead of 2, the same bytes
    per rank across the WAN; the simulator's coflow time for it alone is the alpha-beta time."""
    from hdc.plan import Plan
    from hdc.topology import load_topology
    from simulator.collectives import simulate_plan
    from simulator.network import Routes

    t = load_topology("tiny-3site")
    group = [t.site_gpus(s)[0] for s in range(3)]
    times, sent = {}, {}
    for algorithm in ("ring", "direct"):
        plan = Plan(numel=3 << 20, element_size=4, ranks=tuple(group))
        plan.add("reduce_scatter", [group], [(0, 3 << 20)], tier="wan", algorithm=algorithm)
        times[algorithm] = cost.plan_time_s(t, plan)
        sent[algorithm] = cost.wan_bytes(t, plan)
        sim = max(end for _, end in simulate_plan(Routes(t), plan).values())
        assert sim == pytest.approx(times[algorithm], rel=1e-6)
    assert cost.rounds("reduce_scatter", 3, "direct") == 1 and cost.rounds("reduce_scatter", 3) == 2
    assert sent["direct"] == sent["ring"]
    assert times["direct"] < times["ring"]
