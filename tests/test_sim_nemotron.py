"""Nemotron-4 340B across two sites (NVIDIA NeMo 25.02 / Megatron-Core 0.11 blog, 2025):
3,072 H100s, ~1,000 km, 21 ms RTT, 96% scaling efficiency, MFU 51% -> 49%.

The one fitted constant is the compute efficiency, calibrated so the same GPUs in one site
reach the published 51% MFU; everything else comes out of the model. Assumptions (stated
in the presets and docs/simulator.md): WAN 22 x 400 Gb/s at 90% goodput, 8 chunks
(one per virtual pipeline stage) each starting when backward has produced it.
"""
import copy

import pytest

from hdc.config import load_yaml
from hdc.strategies import make_strategy
from hdc.topology import PRESET_DIR, load_topology, topology_from_dict
from hdc.workload import load_workload
from simulator import SimConstants, calibrate_compute_efficiency, simulate

REPRO = make_strategy("chunked", chunks=8, inner="hierarchical", overlap_backward=True)


@pytest.fixture(scope="module")
def setup():
    work = load_workload("nemotron-4-340b")
    one, two = load_topology("single-site-3072"), load_topology("nemotron-2dc")
    eff = calibrate_compute_efficiency(one, work, REPRO, target_mfu=0.51)
    return work, one, two, SimConstants(compute_efficiency=eff)


def variant(**wan):
    data = copy.deepcopy(load_yaml(f"{PRESET_DIR}/nemotron-2dc.yaml"))
    data["wan"][0].update(wan)
    return topology_from_dict(data)


def test_calibration_hits_single_site_mfu(setup):
    work, one, _, c = setup
    assert 0.3 < c.compute_efficiency < 1.0
    assert simulate(one, work, REPRO, c).mfu == pytest.approx(0.51, abs=1e-4)


def test_two_sites_hierarchical_chunked_reproduces_96_percent(setup):
    work, _, two, c = setup
    r = simulate(two, work, REPRO, c)
    assert r.scaling_efficiency == pytest.approx(0.96, abs=0.01)
    assert r.mfu == pytest.approx(0.49, abs=0.02)
    assert any("WAN" in a and "400" in a for a in r.assumptions)


def test_flat_ring_across_the_wan_is_much_worse(setup):
    work, _, two, c = setup
    assert simulate(two, work, "flat_ring", c).scaling_efficiency < 0.5


def test_sensitivity(setup):
    work, _, two, c = setup
    base = simulate(two, work, REPRO, c).scaling_efficiency
    assert simulate(variant(links=2), work, REPRO, c).scaling_efficiency < base - 0.1  # 10x less WAN
    assert simulate(variant(rtt="105ms"), work, REPRO, c).scaling_efficiency < base  # 5x the distance
    # chunking helps at 21 ms: 8 backward-triggered chunks beat 40M-element buckets (each
    # paying the WAN round trip in turn) and one chunk after backward
    assert simulate(two, work, "hierarchical", c).scaling_efficiency < base - 0.03
    one_chunk = make_strategy("chunked", chunks=1, overlap_backward=True)
    assert simulate(two, work, one_chunk, c).scaling_efficiency < base - 0.03
