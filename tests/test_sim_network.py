"""The network model: routing agrees with Topology.path(); bandwidth is shared max-min fairly."""
import math
import random

import pytest
import simpy

from experiments.configs import raw_topology
from hdc.topology import load_topology, topology_from_dict
from simulator.network import Network, Routes, atoms


@pytest.mark.parametrize("preset", ["tiny-2site", "tiny-3site", "three-site", "nemotron-2dc"])
def test_routes_agree_with_topology_path(preset):
    topo = load_topology(preset)
    routes = Routes(topo)
    rnd = random.Random(7)
    pairs = [(rnd.randrange(topo.num_gpus), rnd.randrange(topo.num_gpus)) for _ in range(300)]
    pairs += [(0, 1), (0, topo.num_gpus - 1), (topo.num_gpus - 1, 0), (3, 3)]
    for a, b in pairs:
        assert routes.path(a, b) == topo.path(a, b), (a, b)
        assert math.isclose(routes.latency_s(routes.path(a, b)), topo.path_latency_s(a, b))


def _run(flows, caps):
    """flows: (start_s, {resource: weight}, size_bytes) -> finish times."""
    return _run_on(flows, caps)[0]


def _run_on(flows, caps, buckets=None):
    """(finish times, the Network they ran on): `_run` with optional token buckets."""
    env = simpy.Environment()
    net = Network(env, caps, buckets)
    out = {}

    def one(i, start, w, size):
        yield env.timeout(start)
        yield net.transfer(w, size)
        out[i] = env.now

    for i, f in enumerate(flows):
        env.process(one(i, *f))
    env.run()
    return [out[i] for i in range(len(flows))], net


def _reference(flows, caps):
    """Plain fluid simulation: recompute weighted max-min rates over all resources at every
    start and finish (no shortcuts), for checking the Network's shortcuts."""
    t, rem, fin = 0.0, {}, {}
    pending = sorted(range(len(flows)), key=lambda i: flows[i][0])
    while pending or rem:
        rates = {}
        act = list(rem)
        residual, un = dict(caps), set(act)
        while un:
            best = math.inf
            for r in caps:
                s = sum(flows[i][1].get(r, 0) for i in un)
                if s > 0:
                    best = min(best, residual[r] / s)
            tight = [r for r in caps if sum(flows[i][1].get(r, 0) for i in un) > 0
                     and residual[r] / sum(flows[i][1].get(r, 0) for i in un) <= best * (1 + 1e-12)]
            for i in [i for i in un if any(flows[i][1].get(r, 0) for r in tight)]:
                rates[i] = best
                un.discard(i)
                for r, w in flows[i][1].items():
                    residual[r] -= w * best
        nxt_start = flows[pending[0]][0] if pending else math.inf
        nxt_end = min((t + rem[i] / rates[i] for i in act), default=math.inf)
        nt = min(nxt_start, nxt_end)
        for i in act:
            rem[i] -= rates[i] * (nt - t)
        t = nt
        for i in act:
            if rem[i] <= 1e-9 * flows[i][2]:
                fin[i] = t
                del rem[i]
        while pending and flows[pending[0]][0] <= t:
            i = pending.pop(0)
            rem[i] = flows[i][2]
    return [fin[i] for i in range(len(flows))]


def test_two_flows_share_a_link_equally():
    # one 1 GB/s link, two 1 GB flows at once: each gets half, both finish at 2 s
    assert _run([(0, {"L": 1}, 1e9), (0, {"L": 1}, 1e9)], {"L": 1e9}) == pytest.approx([2.0, 2.0])


def test_max_min_gives_leftover_to_the_unconstrained_flow():
    # A crosses L1 (1 GB/s) and L2 (10 GB/s), B only L2: A gets 1, B gets 9
    t = _run([(0, {"L1": 1, "L2": 1}, 1e9), (0, {"L2": 1}, 9e9)], {"L1": 1e9, "L2": 10e9})
    assert t == pytest.approx([1.0, 1.0])


def test_latency_then_bandwidth():
    env = simpy.Environment()
    net = Network(env, {"L": 1e9})
    ev = net.transfer({"L": 1}, 5e8, latency_s=0.25)
    env.run(ev)
    assert env.now == pytest.approx(0.75)


@pytest.mark.parametrize("seed", range(40))
def test_network_matches_plain_max_min_fluid_model(seed):
    rnd = random.Random(seed)
    caps = {f"r{i}": rnd.choice([1e9, 2e9, 5e9]) for i in range(5)}
    flows = []
    for _ in range(rnd.randrange(2, 9)):
        res = rnd.sample(sorted(caps), rnd.randrange(1, 4))
        flow = (rnd.choice([0.0, 0.0, 0.3, 1.1, 2.5]), {r: rnd.choice([1, 1, 2, 3]) for r in res},
                rnd.choice([1e9, 3e9, 4e9]))
        flows += [flow] * rnd.choice([1, 1, 2])  # identical flows finish together
    assert _run(flows, caps) == pytest.approx(_reference(flows, caps), rel=1e-9)


def test_atoms_group_indistinguishable_links():
    caps = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 2.0}
    of, cap, count = atoms(caps, [{"a": 1, "b": 1, "d": 1}, {"c": 1}])
    assert of["a"] == of["b"] != of["c"]
    assert of["d"] not in (of["a"], of["c"])
    assert sorted(count) == [1, 1, 2]


def test_routes_are_shared_by_equal_topologies_only():
    from simulator.cache import SimCache

    routes_for = SimCache().routes
    a, b = load_topology("tiny-2site"), load_topology("tiny-2site")
    assert a is not b and routes_for(a) is routes_for(b)
    raw = raw_topology("tiny-2site")
    raw["wan"][0]["rtt"] = "99ms"
    c = topology_from_dict(raw)
    assert routes_for(c) is not routes_for(a)
    assert routes_for(c).latency_s(routes_for(c).path(0, c.num_gpus - 1)) > 0.049


# ---------------------------------------------------------------- token buckets (shaped links)
def test_token_bucket_passes_a_burst_at_peak_then_the_rate():
    R, P, b = 1e8, 1e9, 1e6  # 100 MB/s sustained, 1 GB/s peak, 1 MB of tokens
    # small flow: all of it inside the burst, at the peak
    assert _run_on([(0, {"L": 1}, 5e5)], {"L": R}, {"L": (b, P)})[0] == [pytest.approx(5e5 / P)]
    # large flow: tokens drain at P - R for b / (P - R) s, carrying P x that; the rest at R
    t_burst = b / (P - R)
    first = t_burst + (5e6 - P * t_burst) / R
    times, net = _run_on([(0, {"L": 1}, 5e6), (first + 0.005, {"L": 1}, 5e6)], {"L": R}, {"L": (b, P)})
    assert times[0] == pytest.approx(first, rel=1e-9)
    # 5 ms idle refill R x 5 ms = 0.5 MB of tokens (not the whole bucket)
    t2 = 5e5 / (P - R)
    assert times[1] == pytest.approx(first + 0.005 + t2 + (5e6 - P * t2) / R, rel=1e-9)
    assert net.tokens["L"] == 0.0


def test_token_bucket_flows_share_the_peak_and_the_rate_fairly():
    R, P, b = 1e8, 1e9, 1e6
    (a, c), _ = _run_on([(0, {"L": 1}, 2e6), (0, {"L": 1}, 2e6)], {"L": R}, {"L": (b, P)})
    t_burst = b / (P - R)  # both at P / 2 until the tokens are gone, then R / 2 each
    assert a == c == pytest.approx(t_burst + (4e6 - P * t_burst) / R, rel=1e-9)
    # a flow limited elsewhere (Q at 50 MB/s) leaves tokens to refill: the bucket never empties
    (x,), net = _run_on([(0, {"L": 1, "Q": 1}, 5e6)], {"L": R, "Q": 5e7}, {"L": (b, P)})
    assert x == pytest.approx(0.1) and net.tokens["L"] == b


def test_token_bucket_rejects_a_peak_below_the_rate():
    with pytest.raises(ValueError, match="peak"):
        Network(simpy.Environment(), {"L": 1e9}, {"L": (1e6, 1e8)})
