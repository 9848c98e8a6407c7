"""Larger-scale checks of the simulator's aggregation (slow: simulates every rank).

One pipeline stands for every replica on symmetric topologies; here the topology has three
sites and several pods, and the workload 384 GPUs, so the every-rank run sends tens of
thousands of flows."""
import pytest

from hdc.topology import topology_from_dict
from hdc.workload import workload_from_dict
from simulator import SimConstants, simulate


def three_sites():
    return topology_from_dict({
        "name": "big-3site", "gpu": {"name": "h100"},
        "site_defaults": {"nodes": 16, "gpus_per_node": 8, "pods": 4,
                          "intra_node": {"latency": "3us", "bandwidth": "450GB/s"},
                          "intra_pod": {"latency": "5us", "bandwidth": "400Gbps"},
                          "intra_site": {"latency": "7us", "bandwidth": "400Gbps"}},
        "sites": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
        "wan": [{"sites": ["a", "b"], "rtt": "20ms", "bandwidth": "400Gbps", "links": 4},
                {"sites": ["b", "c"], "rtt": "20ms", "bandwidth": "400Gbps", "links": 4},
                {"sites": ["a", "c"], "rtt": "20ms", "bandwidth": "400Gbps", "links": 4}]})


WORK = {"model": {"name": "m", "layers": 16, "hidden": 2048, "heads": 16, "kv_heads": 8, "ffn": 8192,
                  "vocab": 32000, "seq_len": 2048},
        "parallel": {"tp": 8, "pp": 4, "dp": 12, "vpp": 2, "micro_batch_size": 1, "global_batch_size": 48},
        "bucket_numel": 20_000_000}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["flat_ring", "hierarchical", "chunked", "distributed_optimizer"])
def test_aggregation_is_exact_on_a_384_gpu_three_site_topology(strategy):
    topo, work = three_sites(), workload_from_dict(WORK)
    c = SimConstants(compute_efficiency=0.6)
    fast = simulate(topo, work, strategy, c, baseline=False)
    full = simulate(topo, work, strategy, c, baseline=False, aggregate=False)
    assert fast.step_time_s == pytest.approx(full.step_time_s, rel=1e-6)
    assert fast.tiers["wan"].bytes == pytest.approx(full.tiers["wan"].bytes, rel=1e-6)
