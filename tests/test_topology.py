import copy

import pytest
import yaml

from hdc.errors import UserError
from hdc.topology import fiber_one_way_s, load_topology, preset_names, topology_from_dict

BASE = {
    "name": "t",
    "site_defaults": {"nodes": 2, "gpus_per_node": 4,
                      "intra_node": {"latency": "2us", "bandwidth": "450GB/s"},
                      "intra_pod": {"latency": "5us", "bandwidth": "400Gbps"}},
    "sites": [{"name": "a"}, {"name": "b"}],
    "wan": [{"sites": ["a", "b"], "rtt": "20ms", "bandwidth": "100Gbps", "links": 4}],
}


def build(**changes):
    data = copy.deepcopy(BASE)
    for path, value in changes.items():
        cur = data
        keys = path.split("__")
        for k in keys[:-1]:
            cur = cur[int(k)] if k.isdigit() else cur[k]
        cur[int(keys[-1]) if keys[-1].isdigit() else keys[-1]] = value
    return topology_from_dict(data)


def test_presets_all_load_and_match_the_published_shape():
    assert {"nemotron-2dc", "single-site-3072", "three-site", "tiny-2site", "tiny-3site"} <= set(preset_names())
    nem = load_topology("nemotron-2dc")
    assert nem.num_gpus == 3072 and len(nem.sites) == 2
    assert nem.wan[0].rtt_s == pytest.approx(0.021)
    assert load_topology("single-site-3072").num_gpus == 3072
    assert len(load_topology("three-site").sites) == 3
    for name in preset_names():
        assert load_topology(name).assumptions, f"{name} must state its assumptions"


def test_paths_and_latencies_follow_the_tiers():
    t = build()
    # GPUs 0-3 node 0 of site a, 4-7 node 1, 8.. site b
    assert t.tier_between(0, 1) == "intra_node"
    assert t.path_latency_s(0, 1) == pytest.approx(2e-6)
    assert t.tier_between(0, 4) == "intra_pod"
    assert t.path_latency_s(0, 4) == pytest.approx(5e-6)
    assert t.tier_between(0, 8) == "wan"
    # intra_site defaults to intra_pod: 5us/2 on each side + 10 ms one way
    assert t.path_latency_s(0, 8) == pytest.approx(5e-6 + 0.010)
    wan = t.link(("s0/gw", "s1/gw"))
    assert wan.bandwidth_Bps == pytest.approx(4 * 100e9 / 8)


def test_distance_gives_fiber_latency():
    t = build(wan__0__rtt=None, wan__0__distance="1000km")
    assert t.wan[0].one_way_s == pytest.approx(fiber_one_way_s(1e6))
    assert 7e-3 < t.wan[0].one_way_s < 7.5e-3  # ~7.3 us per km with a 1.5 route factor


def test_three_site_routes_over_the_lowest_latency_path():
    t = load_topology("three-site")
    a0, c0 = t.site_gpus(0).start, t.site_gpus(2).start
    hops = [h for h in t.path(a0, c0) if h[0].endswith("gw") and h[1].endswith("gw")]
    assert hops == [("s0/gw", "s2/gw")]  # direct 15 ms beats 2 × 10.5 ms


@pytest.mark.parametrize("changes, message", [
    ({"sites__1__nodes": -3}, "sites[1].nodes: must be an integer > 0, got -3"),
    ({"sites__0__nodes": "many"}, "sites[0].nodes: must be an integer"),
    ({"sites__0__colour": "red"}, "sites[0].colour: unknown key"),
    ({"site_defaults__intra_pod__bandwidth": "400"}, "sites[0].intra_pod.bandwidth: expected a bandwidth with a unit"),
    ({"site_defaults__intra_pod__bandwidth": "0Gbps"}, "sites[0].intra_pod.bandwidth: must be > 0"),
    ({"site_defaults__intra_node__latency": "-1us"}, "sites[0].intra_node.latency: expected a duration"),
    ({"sites__1__name": "a"}, "sites[1].name: duplicate site name 'a'"),
    ({"wan__0__sites": ["a", "z"]}, "wan[0].sites: unknown site 'z'"),
    ({"wan__0__distance": "10km"}, "wan[0]: give exactly one of rtt or distance"),
    ({"wan__0__links": 0}, "wan[0].links: must be an integer > 0, got 0"),
    ({"sites__0__pods": 3}, "sites[0].pods: must be at most nodes (2), got 3"),
    ({"sites__0__intra_site": {"latency": "1us", "bandwidth": "1Gbps"}}, "sites[0].intra_site.latency: must be >= intra_pod"),
    ({"wan": []}, "wan: site 'b' is not connected"),
    ({"sites": []}, "sites: must list at least one site"),
    ({"name": None}, "name: must be a string"),
    ({"sites__1__nodes": 489329}, "sites: at most 1,048,576 GPUs in all (nodes × gpus_per_node summed over sites), got 1,957,324"),
])
def test_each_kind_of_mistake_names_the_field(changes, message):
    with pytest.raises(UserError) as e:
        build(**changes)
    assert message in str(e.value)


def test_missing_required_field():
    data = copy.deepcopy(BASE)
    del data["site_defaults"]["gpus_per_node"]
    with pytest.raises(UserError, match=r"sites\[0\].gpus_per_node: is required"):
        topology_from_dict(data)


def test_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_topology(str(bad))
    with pytest.raises(UserError, match="no such file and no such preset"):
        load_topology(str(tmp_path / "missing.yaml"))
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(BASE))
    assert load_topology(str(good)).num_gpus == 16


@pytest.mark.parametrize("preset", ["tiny-3site", "three-site", "nemotron-2dc"])
def test_link_lookup_agrees_with_the_link_table(preset):
    t = load_topology(preset)
    table = t.links()
    assert all(t.link(k) == v for k, v in table.items())
    with pytest.raises(KeyError):
        t.link(("s0/gw", "s0/n0/g0"))


def test_caches_die_with_their_topology():
    """A sweep builds thousands of topologies: memoised lookups must not keep them alive."""
    import gc
    import weakref

    from hdc.cost import step_time_s
    from hdc.strategies import make_strategy

    t = build()
    t.path(0, t.num_gpus - 1)
    plan = make_strategy("hierarchical").plan(t, None, 1 << 20)
    for step in plan.steps:
        step_time_s(t, plan, step)
    ref = weakref.ref(t)
    del t, plan, step
    gc.collect()
    assert ref() is None


def test_costing_a_huge_topology_touches_only_the_gpus_used():
    import time

    from hdc.cost import plan_time_s
    from hdc.strategies import make_strategy

    t = build(sites__0__nodes=100_000, sites__1__nodes=100_000)  # 800,000 GPUs
    start = time.perf_counter()
    gpus = [0, 1, t.site_gpus(1).start, t.site_gpus(1).start + 1]
    assert plan_time_s(t, make_strategy("hierarchical").plan(t, [gpus], 1 << 20)) > 0.01  # crosses the 20 ms WAN
    assert time.perf_counter() - start < 5


def test_pods_need_not_divide_nodes():
    # 5 nodes in 2 pods: the first pod takes 3 nodes, the second 2; uplinks sized for the smaller pod
    t = topology_from_dict({"name": "uneven", "sites": [{"name": "a", "nodes": 5, "gpus_per_node": 2, "pods": 2,
                            "intra_node": {"latency": "3us", "bandwidth": "450GB/s"},
                            "intra_pod": {"latency": "5us", "bandwidth": "400Gbps"},
                            "intra_site": {"latency": "7us", "bandwidth": "400Gbps"}}]})
    assert [t.locate(g).pod for g in range(0, 10, 2)] == [0, 0, 0, 1, 1]
    assert t.tier_between(0, 5) == "intra_pod" and t.tier_between(5, 6) == "intra_site"
    up = t.links()[("s0/p0/leaf", "s0/gw")]
    assert up.bandwidth_Bps == pytest.approx(400e9 / 8 * 2 * 2)  # 2 nodes x 2 GPUs x 400 Gb/s
