"""Emulation pieces that need no root: names and delays from a topology, the delay line's
forwarding logic (over datagram socketpairs standing in for TUN devices), the calibration
fit, the validation summary, the rank environment and the CLI's refusals."""
from __future__ import annotations

import argparse
import os
import socket
import struct
import time

import pytest

from hdc.errors import UserError
from hdc.topology import load_topology
from experiments.emulate import calibrate, launch, spec as specmod, validate
from experiments.emulate.delayline import DelayLine, address_map


def test_spec_names_addresses_and_delays():
    topo = specmod.with_wan(load_topology("tiny-3site"), one_way_s=0.007, bandwidth_Bps=12.5e6)
    s = specmod.build_spec(topo, prefix="hdc")
    assert [x.netns for x in s.sites] == ["hdc-0-site-a", "hdc-1-site-b", "hdc-2-site-c"]
    assert [x.dev for x in s.sites] == ["hdct0", "hdct1", "hdct2"]
    assert [x.addr for x in s.sites] == ["10.77.0.1", "10.77.1.1", "10.77.2.1"]
    assert s.one_way_s[0][2] == pytest.approx(0.007) and s.one_way_s[1][1] == 0.0
    assert s.bandwidth_Bps[2][0] == pytest.approx(12.5e6)
    assert s.ranks_site == [0, 0, 1, 1, 2, 2]
    assert specmod.EmulationSpec.from_dict(s.to_dict()) == s


def test_overrides_round_trip_and_ranks_per_site():
    topo = load_topology("tiny-2site")
    t2 = specmod.with_ranks_per_site(specmod.with_wan(topo, one_way_s=0.02), 3)
    assert t2.num_gpus == 6 and t2.wan[0].one_way_s == pytest.approx(0.02)
    assert t2.wan[0].bandwidth_Bps == pytest.approx(topo.wan[0].bandwidth_Bps)
    t3 = specmod.with_tiers(topo, node=(1e-4, 5e8), nic_Bps=6e7, cross_site_s={("site-a", "site-b"): 0.013})
    assert t3.path_latency_s(0, 2) == pytest.approx(0.013)
    assert t3.wan[0].bandwidth_Bps == pytest.approx(topo.wan[0].bandwidth_Bps)
    assert t3.sites[0].intra_node.latency_s == pytest.approx(1e-4)
    assert t3.sites[0].intra_pod.bandwidth_Bps == pytest.approx(6e7)


@pytest.mark.parametrize("bad", ["xyz", "hdc-1", "hdcTOOLONG", ""])
def test_prefix_must_stay_ours(bad):
    with pytest.raises(UserError):
        specmod.check_prefix(bad)


def _ipv4(src: str, dst: str, payload: bytes = b"x" * 20) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, 17, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + payload


def test_delay_line_holds_each_direction_for_its_own_delay():
    """Three 'sites' over socketpairs: 0->1 held 30 ms, 1->0 10 ms, unknown destinations dropped."""
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(3)]
    for a, b in pairs:
        a.setblocking(False)
        b.settimeout(1.0)
    delay = [[0, 0.03, 0.02], [0.01, 0, 0.02], [0.02, 0.02, 0]]
    s = specmod.build_spec(load_topology("tiny-3site"))
    line = DelayLine([a.fileno() for a, _ in pairs], delay, address_map(s))
    sent = {}
    pairs[0][1].send(_ipv4("10.77.0.1", "10.77.1.1", b"to-b" * 5)); sent["0>1"] = time.monotonic()
    pairs[1][1].send(_ipv4("10.77.1.1", "10.77.0.1", b"to-a" * 5)); sent["1>0"] = time.monotonic()
    pairs[2][1].send(_ipv4("10.77.2.1", "10.99.0.1"))  # not ours: dropped
    stop_at = time.monotonic() + 0.1
    line.run(lambda: time.monotonic() > stop_at)
    got_b = pairs[1][1].recv(100)
    got_a = pairs[0][1].recv(100)
    assert got_b.endswith(b"to-b" * 5) and got_a.endswith(b"to-a" * 5)
    assert line.forwarded == 2 and line.dropped == 1
    # the lateness the line reports is how much later than the delay it wrote each packet
    assert 0 <= line.late_max_s < 0.02
    for a, b in pairs:
        a.close()
        b.close()


def test_delay_line_keeps_order_within_a_pair():
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(2)]
    for a, b in pairs:
        a.setblocking(False)
        b.settimeout(1.0)
    s = specmod.build_spec(load_topology("tiny-2site"))
    line = DelayLine([a.fileno() for a, _ in pairs], [[0, 0.005], [0.005, 0]], address_map(s))
    for i in range(50):
        pairs[0][1].send(_ipv4("10.77.0.1", "10.77.1.1", i.to_bytes(4, "big")))
    t0 = time.monotonic()
    line.run(lambda: line.forwarded >= 50 or time.monotonic() > t0 + 2)
    assert time.monotonic() - t0 >= 0.005
    seq = [int.from_bytes(pairs[1][1].recv(100)[20:24], "big") for _ in range(50)]
    assert seq == list(range(50))


def test_calibration_fit_recovers_alpha_and_bandwidth():
    alpha, bw = 0.012, 100e6
    sizes = [4 << 10, 1 << 20, 8 << 20]
    times = [2 * (alpha + n / 2 / bw) for n in sizes]
    a, b = calibrate.fit_alpha_beta(sizes, times)
    assert a == pytest.approx(alpha, rel=1e-6) and b == pytest.approx(bw, rel=1e-6)


def test_calibrated_topology_uses_probe_constants_only():
    from hdc import cost

    topo = specmod.with_wan(load_topology("tiny-2site"), one_way_s=0.01, bandwidth_Bps=125e6)
    calib = {"local": {"alpha_s": 2e-4, "bandwidth_Bps": 1e9},
             "wan": {"alpha_s": 0.0235, "bandwidth_Bps": 50e6}}
    m = calibrate.calibrated_topology(topo, calib)
    assert m.path_latency_s(0, 2) == pytest.approx(0.0235, abs=1e-6)
    assert m.wan[0].bandwidth_Bps == pytest.approx(125e6)  # the link keeps its capacity...
    assert m.sites[1].intra_node.bandwidth_Bps == pytest.approx(1e9)
    # ...one connection gets the probed 50 MB/s, two (from two GPUs) share the 125 MB/s link
    step_one = cost._round_profile(m, "send_recv", ((0, 2),))
    step_two = cost._round_profile(m, "send_recv", ((0, 2), (1, 3)))
    assert step_one[0][1] == pytest.approx(50e6) and step_two[0][1] == pytest.approx(50e6)
    # inside a site the route stays in the node (no detour through the per-GPU WAN-rate link)
    from simulator.network import Routes

    assert all(link[1].endswith("/nvs") or link[0].endswith("/nvs") for link in Routes(m).path(0, 1))


def test_summary_counts_ranking_mismatches_and_ratios():
    def row(cfg, strat, meas, pred):
        return {"config": cfg, "size_MiB": 4.0, "strategy": strat, "measured_median_ms": meas,
                "predicted_ms": pred, "error_pct": (pred - meas) / meas * 100}
    rows = [row("a", "flat_ring", 200, 190), row("a", "hierarchical", 100, 110),
            row("b", "flat_ring", 100, 130), row("b", "hierarchical", 110, 100),
            row("c", "flat_ring", 100, 130), row("c", "hierarchical", 103, 100)]  # within 5%: a tie
    s = validate.summarize(rows)
    assert s["rankings"] == 3 and len(s["ranking_mismatches"]) == 1 and len(s["ranking_ties"]) == 1
    assert s["flat_over_hierarchical"][0][2] == pytest.approx(2.0)
    assert s["worst_abs_error_pct"] == pytest.approx(30.0)


def test_rank_env_points_gloo_at_the_site_device():
    s = specmod.build_spec(load_topology("tiny-2site"))
    env = launch.rank_env(s, 3, 29555, "/tmp/t.yaml", base={})
    assert env["RANK"] == "3" and env["WORLD_SIZE"] == "4" and env["LOCAL_RANK"] == "1"
    assert env["MASTER_ADDR"] == "10.77.0.1" and env["MASTER_PORT"] == "29555"
    assert env["GLOO_SOCKET_IFNAME"] == "hdct1" and env["HDC_SITE"] == "site-b"
    assert env["HDC_TOPOLOGY"] == "/tmp/t.yaml"


def _parser():
    from hdc.cli import _Parser
    from experiments.emulate.cli import register

    p = _Parser(prog="hdc")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    register(sub)
    return p


def test_cli_registers_emulate_and_validate():
    p = _parser()
    a = p.parse_args(["emulate", "up", "--topology", "tiny-2site", "--one-way-delay", "10ms"])
    assert a.action == "up" and callable(a.handler)
    a = p.parse_args(["validate", "--topology", "tiny-3site", "--one-way-delays", "1ms,20ms"])
    assert a.sizes and callable(a.handler)


def test_cli_refuses_without_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    p = _parser()
    for argv in (["emulate", "up", "--topology", "tiny-2site"], ["emulate", "down"],
                 ["validate", "--topology", "tiny-2site"]):
        a = p.parse_args(argv)
        with pytest.raises(UserError, match="root"):
            a.handler(a)


def test_cli_bad_values_are_user_errors():
    from experiments.emulate.cli import effective_topology, parse_list
    from hdc.units import parse_time

    with pytest.raises(UserError, match="--one-way-delays"):
        parse_list("10 parsecs", parse_time, "--one-way-delays")
    with pytest.raises(UserError, match="one site"):
        effective_topology("single-site-3072")
    with pytest.raises(UserError):
        effective_topology("tiny-2site", ranks_per_site=0)
