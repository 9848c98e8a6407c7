"""Faults in the simulator: stragglers and degraded or failed WAN links cost step time, and
the baseline stays the healthy single site."""
import pytest

from hdc.cli import main
from hdc.errors import UserError
from hdc.workload import workload_from_dict
from simulator import Faults, SimConstants, simulate
from simulator.faults import apply_to_topology, stage_factors

WORK = {"model": "llama-3-8b", "parallel": {"tp": 2, "pp": 2, "dp": 2, "micro_batch_size": 1, "global_batch_size": 8}}


def small():
    from hdc.topology import topology_from_dict
    tier = {"latency": "5us", "bandwidth": "100Gbps"}
    return topology_from_dict({"name": "t", "gpu": {"peak_flops": "100TFLOPS"},
                               "site_defaults": {"nodes": 2, "gpus_per_node": 2, "intra_node": tier, "intra_pod": tier},
                               "sites": [{"name": "a"}, {"name": "b"}],
                               "wan": [{"sites": ["a", "b"], "rtt": "20ms", "bandwidth": "10Gbps", "links": 4}]})


def run(faults=None):
    return simulate(small(), workload_from_dict(WORK), "hierarchical", SimConstants(compute_efficiency=0.5),
                    faults=faults)


def test_healthy_faults_change_nothing():
    assert run(Faults()).step_time_s == run().step_time_s


def test_straggler_slows_the_step_by_its_stage():
    base, slow = run(), run(Faults(slow_gpu_factor=1.5, slow_gpu_stage=1))
    assert slow.step_time_s > base.step_time_s * 1.2
    assert slow.breakdown.compute_s == pytest.approx(base.breakdown.compute_s * 1.5)
    assert slow.scaling_efficiency < base.scaling_efficiency
    assert slow.single_site_step_time_s == base.single_site_step_time_s  # baseline stays healthy
    site = run(Faults(slow_site="b", slow_site_factor=1.5))
    assert site.step_time_s >= slow.step_time_s


def test_wan_degradation_and_failover():
    base = run()
    half = run(Faults(wan_bandwidth_factor=0.5))
    failed = run(Faults(wan_links_failed=2))  # 4 links -> 2: same capacity as half bandwidth
    assert half.step_time_s > base.step_time_s
    assert failed.step_time_s == pytest.approx(half.step_time_s, rel=1e-9)
    assert "WAN degraded to 50% of nominal bandwidth" in half.assumptions
    topo = apply_to_topology(small(), Faults(wan_links_failed=3))
    assert topo.wan[0].links == 1 and small().wan[0].links == 4


def test_fault_mistakes():
    with pytest.raises(UserError, match="leaves the sites disconnected"):
        apply_to_topology(small(), Faults(wan_links_failed=4))
    with pytest.raises(UserError, match="unknown site 'zz'"):
        apply_to_topology(small(), Faults(slow_site="zz", slow_site_factor=2))
    with pytest.raises(UserError, match="slow_gpu_stage: must be < pp"):
        stage_factors(small(), 2, Faults(slow_gpu_factor=2, slow_gpu_stage=5))


def test_cli_fault_flags(capsys):
    rc = main(["simulate", "--topology", "tiny-2site", "--workload", "llama-3-8b", "--strategy", "flat_ring",
               "--wan-links-failed", "1"])
    assert rc == 2 and "leaves the sites disconnected" in capsys.readouterr().err
    rc = main(["simulate", "--topology", "tiny-2site", "--workload", "llama-3-8b", "--strategy", "flat_ring",
               "--wan-bandwidth-factor", "0"])
    assert rc == 2 and "--wan-bandwidth-factor: must be a number > 0.0" in capsys.readouterr().err
    rc = main(["simulate", "--topology", "tiny-2site", "--workload", "llama-3-8b", "--strategy", "flat_ring",
               "--slow-gpu", "fast"])
    assert rc == 2 and "--slow-gpu takes FACTOR[@STAGE]" in capsys.readouterr().err
