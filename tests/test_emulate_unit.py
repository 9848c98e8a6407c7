"""Emulation pieces that need no root: names and delays from a topology, the delay line's
forwarding logic (over datagram socketpairs standing in for TUN devices), the model that
predicts real gloo (the simulator's pipelined ring, on hand-computed cases), the calibration
fit, the validation summary and its recompute loop, the rank environment and the CLI's refusals."""
from __future__ import annotations

import os
import socket
import struct
import time

import statistics

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


# ---------------------------------------------------------------- the pipelined (gloo ring) model
def _wan_pair(one_way_s=0.01, rate_Bps=1e8, ranks_per_site=1, sites="tiny-2site"):
    """Sites joined by one WAN of exactly `one_way_s` and `rate_Bps`; inside a site nothing costs."""
    topo = specmod.with_ranks_per_site(specmod.with_wan(load_topology(sites), one_way_s=one_way_s,
                                                       bandwidth_Bps=rate_Bps), ranks_per_site)
    cross = {tuple(w.sites): one_way_s for w in topo.wan}
    return specmod.with_tiers(topo, node=(0.0, 1e12), cross_site_s=cross)


def _pipelined_s(topo, plan, pipe=None):
    from simulator.collectives import simulate_plan
    from simulator.network import Routes

    return max(e for _, e in simulate_plan(Routes(topo), plan, "pipelined", pipeline=pipe).values())


def _all_reduce(groups, size_bytes):
    from hdc.plan import Plan

    plan = Plan(numel=size_bytes // 4, element_size=4)
    plan.add("all_reduce", groups, [(0, size_bytes // 4)] * len(groups))
    return plan


@pytest.mark.parametrize("size, expected_s", [
    # gloo cuts each rank's half into >= 2 segments and posts 2 at once; a segment leaves when
    # the receiver's ready notice has crossed (L), is serialized (s), then crosses (L).
    # 4 KiB: 4 segments of 1 KiB, s = 10.24 us: per half 2L + 2s, two halves
    (4 << 10, 2 * (2 * 0.01 + 2 * 1024 / 1e8)),
    # 2 MiB: segments of 512 KiB, s = 5.24 ms: still 2 per half
    (2 << 20, 2 * (2 * 0.01 + 2 * (512 << 10) / 1e8)),
    # 8 MiB: 4 segments of 1 MiB per half, s = 10.49 ms < 2L: latency-bound, segments 2 and 3
    # wait for the notices sent when 0 and 1 arrived (at 2L + s, 2L + 2s). Both directions are
    # one TCP connection, so the notice for segment 2 leaves only after the reverse segment 1
    # (on the wire until L + 2s > 2L + s); segment 3's notice ties with the reverse segment 2
    # and goes first: per half 3L + 4s (without the shared connection 4L + 3s)
    (8 << 20, 2 * (3 * 0.01 + 4 * (1 << 20) / 1e8)),
])
def test_pipelined_two_rank_all_reduce_hand_computed(size, expected_s):
    assert _pipelined_s(_wan_pair(), _all_reduce([(0, 1)], size)) == pytest.approx(expected_s, rel=1e-9)


def test_pipelined_bandwidth_bound_notice_queues_behind_reverse_data():
    # s = 10.49 ms > 2L = 2 ms. Were the notice separate, segment 2's would be back before
    # segment 1 has left and the wire would stream (per half 2L + 4s). It shares the TCP
    # connection with the reverse data, so it leaves after the reverse segment 1 (L + 2s) and
    # segment 2 waits L on the wire: per half 3L + 4s
    topo = _wan_pair(one_way_s=0.001)
    expected = 2 * (3 * 0.001 + 4 * (1 << 20) / 1e8)
    assert _pipelined_s(topo, _all_reduce([(0, 1)], 8 << 20)) == pytest.approx(expected, rel=1e-9)
    # without the rendezvous nothing waits for a notice: the wire streams, per half L + 4s
    from simulator.collectives import LibraryPipelining

    bare = _pipelined_s(topo, _all_reduce([(0, 1)], 8 << 20), LibraryPipelining(rendezvous=False))
    assert bare == pytest.approx(2 * (0.001 + 4 * (1 << 20) / 1e8), rel=1e-9)


def test_pipelined_ring_beats_synchronous_rounds_and_groups_share_the_wan():
    from hdc.strategies import make_strategy

    # flat ring over 2 sites x 2 ranks, 1 ms, 1 Gbit/s, 1 MiB: 6 synchronous rounds, each
    # paying the rendezvous, would cost 6 x (2L + 256 KiB / B) = 24.6 ms; gloo's 128 KiB
    # segments, 2 in flight, cost 3 x (2L + s) + s per half: 20.4 ms (measured: 19.9 ms)
    topo = _wan_pair(one_way_s=0.001, rate_Bps=125e6, ranks_per_site=2)
    plan = make_strategy("flat_ring").plan(topo, None, (1 << 20) // 4, 4)
    s = (128 << 10) / 125e6
    assert _pipelined_s(topo, plan) == pytest.approx(2 * (3 * (0.002 + s) + s), rel=1e-6)
    assert _pipelined_s(topo, plan) < 0.85 * 6 * (0.002 + (256 << 10) / 125e6)
    # two 2-rank groups across the same WAN: their segments share the link, s doubles
    # (per half 3L + 4s, as in the 2-rank case above)
    one = _pipelined_s(topo, _all_reduce([(0, 2)], 8 << 20))
    two = _pipelined_s(topo, _all_reduce([(0, 2), (1, 3)], 8 << 20))
    seg = (1 << 20) / 125e6
    assert one == pytest.approx(2 * (3 * 0.001 + 4 * seg), rel=1e-6)
    assert two == pytest.approx(2 * (3 * 0.001 + 4 * 2 * seg), rel=1e-6)


def test_call_overhead_is_paid_once_per_step():
    from hdc.plan import Plan
    from simulator.collectives import LibraryPipelining

    topo = _wan_pair()
    plan = Plan(numel=1024, element_size=4)
    rs = plan.add("reduce_scatter", [(0, 1)], [(0, 1024)])
    plan.add("all_gather", [(0, 1)], [(0, 1024)], deps=(rs.id,))
    bare = _pipelined_s(topo, plan)
    assert bare == pytest.approx(2 * (2 * 0.01 + 2 * 1024 / 1e8), rel=1e-9)  # per step: 2 segments of 1 KiB
    assert _pipelined_s(topo, plan, LibraryPipelining(call_overhead_s=0.003)) == pytest.approx(bare + 0.006, rel=1e-9)


def test_pipeline_shape_follows_gloo_segmenting():
    from simulator.collectives import LibraryPipelining, pipeline_shape

    g = LibraryPipelining()
    assert pipeline_shape("all_reduce", 4, (1 << 20) // 4, 4, g) == (2, 6, 128 << 10)  # 8 segments, 2 per rank
    assert pipeline_shape("all_reduce", 2, (64 << 20) // 4, 4, g) == (2, 32, 1 << 20)  # 1 MiB segments
    phases, count, seg = pipeline_shape("all_reduce", 3, (64 << 20) // 4, 4, g)  # gloo: 66 segments, 22 a rank
    assert (phases, count) == (2, 2 * 22) and seg == pytest.approx((64 << 20) / 66, rel=1e-5)
    assert pipeline_shape("reduce_scatter", 2, 1024, 4, g) == (1, 2, 1024)
    assert pipeline_shape("send_recv", 2, 1024, 4, g) == (1, 1, 4096)


def test_fit_recovers_the_constants_it_was_given():
    """Probe medians made by the model itself from known constants come back out of `fit`."""
    topo = specmod.with_wan(load_topology("tiny-3site"), one_way_s=0.01, bandwidth_Bps=125e6)
    truth = calibrate.Calibration(call_overhead_s=0.002, local_latency_s=3e-4, local_Bps=6e8, wan_efficiency=0.8)
    calib = {}
    for name, (pairs, sizes, ops) in calibrate.probe_specs(topo).items():
        times = [calibrate._simulate(topo, truth, calibrate.probe_plan(name, pairs, n, ops)) for n in sizes]
        calib[name] = {"sizes_bytes": list(sizes), "median_s": times, "ops": list(ops)}
    got = calibrate.fit(topo, calib)
    assert got.call_overhead_s == pytest.approx(truth.call_overhead_s, rel=1e-3)
    assert got.local_latency_s == pytest.approx(truth.local_latency_s, rel=1e-2)
    assert got.wan_efficiency == pytest.approx(truth.wan_efficiency, rel=1e-3)
    # the local rate: slope of the two largest sizes, where loopback is not latency-bound
    assert got.local_Bps == pytest.approx(truth.local_Bps, rel=0.02)


def test_model_topology_keeps_the_configured_wan_and_takes_the_local_constants():
    from simulator.network import Routes

    topo = specmod.with_wan(load_topology("tiny-2site"), one_way_s=0.01, bandwidth_Bps=125e6)
    c = calibrate.Calibration(call_overhead_s=0.002, local_latency_s=2e-4, local_Bps=1e9, wan_efficiency=0.9)
    m, pipe = calibrate.model_for(topo, c)
    assert m.path_latency_s(0, 2) == pytest.approx(0.01, abs=1e-9)  # the delay line's delay, end to end
    assert m.path_latency_s(0, 1) == pytest.approx(2e-4)
    assert m.wan[0].bandwidth_Bps == pytest.approx(0.9 * 125e6)
    assert m.sites[1].intra_node.bandwidth_Bps == pytest.approx(1e9)
    assert pipe.call_overhead_s == pytest.approx(0.002) and pipe.window == 2 and pipe.rendezvous
    # inside a site the route stays in the node
    assert all(link[1].endswith("/nvs") or link[0].endswith("/nvs") for link in Routes(m).path(0, 1))
    # the WAN links carry the shaper's bucket as netns configures tbf (2 ms of the rate, >= 4
    # packets of 9000 B), bursting at the local rate; the links inside a site carry none
    routes = Routes(m)
    caps = routes.capacities()
    wan = [k for k, link in routes.links.items() if link.tier == "wan"]
    assert pipe.buckets(caps, wan) == {k: (pytest.approx(0.002 * 0.9 * 125e6), 1e9) for k in wan}
    slow = specmod.with_wan(load_topology("tiny-2site"), one_way_s=0.01, bandwidth_Bps=1e6)
    m2, pipe2 = calibrate.model_for(slow, c)
    r2 = Routes(m2)
    wan2 = [k for k, link in r2.links.items() if link.tier == "wan"]
    assert {b for b, _ in pipe2.buckets(r2.capacities(), wan2).values()} == {4 * 9000}


def test_shaper_burst_carries_small_messages_at_the_peak():
    from simulator.collectives import LibraryPipelining

    # 4 KiB 2-rank all-reduce at 100 MB/s, 10 ms: 1 KiB segments, per half 2L + 2s (above);
    # inside the 200 KB burst each segment is serialized at the 1 GB/s peak instead
    shaped = LibraryPipelining(shaper_burst_s=0.002, shaper_peak_Bps=1e9)
    got = _pipelined_s(_wan_pair(), _all_reduce([(0, 1)], 4 << 10), shaped)
    assert got == pytest.approx(2 * (2 * 0.01 + 2 * 1024 / 1e9), rel=1e-9)
    # 8 MiB (1 MiB segments, beyond the burst): the bucket refills in the idle gaps while a
    # notice crosses, so each of the 8 segments saves at most the burst's bytes at the rate
    bare = _pipelined_s(_wan_pair(), _all_reduce([(0, 1)], 8 << 20))
    big = _pipelined_s(_wan_pair(), _all_reduce([(0, 1)], 8 << 20), shaped)
    assert bare - 8 * 2e5 / 1e8 <= big < bare - 2e5 / 1e8


def test_recompute_from_a_raw_file_prints_before_and_after(tmp_path, capsys):
    """The loop used to improve the model: raw measurements in, new predictions out."""
    import csv
    import json

    topo = specmod.with_ranks_per_site(specmod.with_wan(load_topology("tiny-2site"), one_way_s=0.005,
                                                        bandwidth_Bps=125e6), 2)
    truth = calibrate.Calibration(0.002, 1e-4, 6e8, 1.0)
    calib = {}
    for name, (pairs, sizes, ops) in calibrate.probe_specs(topo).items():
        times = [calibrate._simulate(topo, truth, calibrate.probe_plan(name, pairs, n, ops)) for n in sizes]
        calib[name] = {"sizes_bytes": list(sizes), "median_s": times, "alpha_s": 0.011, "bandwidth_Bps": 1e8,
                       "pairs": len(pairs), "aggregate_Bps": 1e8 * len(pairs)}  # no "ops": an older raw file
    res = {"calibration": calib, "executor": "test", "results": [
        {"strategy": s, "chunks": 4, "size_bytes": 1 << 20, "times_s": [0.05, 0.051, 0.049]}
        for s in ("flat_ring", "hierarchical")]}
    raw = tmp_path / "v.csv.raw.jsonl"
    raw.write_text(json.dumps({"config": "2x2 5ms 1000M", "topology": specmod.topology_to_data(topo),
                               "result": res}) + "\n")
    base = tmp_path / "before.csv"
    validate.write_csv([dict(r, predicted_ms=100.0, error_pct=100.0)
                        for r in validate.rows_for("2x2 5ms 1000M", topo, res)], str(base))
    out = tmp_path / "after.csv"
    assert validate.recompute([str(raw)], str(out), [str(base)]) == 0
    text = capsys.readouterr().out
    assert "before (" in text and "median |error| 100.0%" in text and "after (" in text
    rows = list(csv.DictReader(out.open()))
    assert [r["strategy"] for r in rows] == ["flat_ring", "hierarchical"]
    assert all(float(r["calib_call_overhead_ms"]) == pytest.approx(2.0, rel=1e-3) for r in rows)


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
    from experiments.emulate.spec import effective_topology, parse_list
    from hdc.units import parse_time

    with pytest.raises(UserError, match="--one-way-delays"):
        parse_list("10 parsecs", parse_time, "--one-way-delays")
    with pytest.raises(UserError, match="one site"):
        effective_topology("single-site-3072")
    with pytest.raises(UserError):
        effective_topology("tiny-2site", ranks_per_site=0)


def test_warm_cases_pick_one_case_per_strategy_near_16_mib():
    from experiments.emulate.worker import warm_cases

    mib = 1 << 20
    cases = [{"strategy": s, "size_bytes": n * mib, "chunks": 4} for n in (1, 4, 16, 64)
             for s in ("flat_ring", "hierarchical", "chunked")]
    cases.append({"strategy": "chunked", "size_bytes": 4 * mib, "chunks": 8})
    picked = [(cases[i]["strategy"], cases[i]["chunks"], cases[i]["size_bytes"] // mib) for i in warm_cases(cases)]
    assert sorted(picked) == [("chunked", 4, 16), ("chunked", 8, 4), ("flat_ring", 4, 16), ("hierarchical", 4, 16)]
    # every size beyond 16 MiB: the smallest
    big = [{"strategy": "x", "size_bytes": n * mib} for n in (64, 32)]
    assert [big[i]["size_bytes"] for i in warm_cases(big)] == [32 * mib]


def test_shipped_measurements_stay_predicted():
    """The 12 emulated configs measured here (experiments/emulate/measured/, 126 cases), with
    today's model, meet the issue's targets: a model change that loses accuracy on real gloo
    fails here. When shipped: median |error| 2.7%, worst 17.8%, every ranking identical or a
    swap of strategies measured within 5% of each other (5 of 42)."""
    from experiments.emulate.validate import rows_from_raw, summarize
    from experiments.report_sections import shipped_measurements

    paths = shipped_measurements()
    rows = rows_from_raw([p for p in paths if "compressed" not in p])
    s = summarize(rows)
    assert s["cases"] == 126 and len({r["config"] for r in rows}) == 12
    assert s["median_abs_error_pct"] <= 5.0  # the target is 10%, its stretch 5%
    assert s["worst_abs_error_pct"] <= 25.0
    assert s["ranking_mismatches"] == [] and len(s["ranking_ties"]) <= 5


def test_shipped_compressed_measurements_stay_predicted():
    """compressed(hierarchical, int8) against hierarchical, 2 sites x 2 ranks, 10 ms, 100 Mbit/s
    and 1 Gbit/s, 1-16 MiB (docs/emulation.md): int8 is measured faster at 100 Mbit/s, and the
    new rows are predicted within the validation's accuracy (median |error| <= 5%, worst <= 20%;
    when shipped: 4.2% and 9.2%)."""
    from experiments.emulate.validate import rows_from_raw, summarize
    from experiments.report_sections import shipped_measurements

    rows = rows_from_raw([p for p in shipped_measurements() if "compressed" in p])
    assert len(rows) == 12 and summarize(rows)["ranking_mismatches"] == []
    new = [r for r in rows if r["strategy"] == "compressed"]
    errors = sorted(abs(r["error_pct"]) for r in new)
    assert statistics.median(errors) <= 5.0 and errors[-1] <= 20.0
    by = {(r["config"], r["size_MiB"], r["strategy"]): r["measured_median_ms"] for r in rows}
    for (config, size, strategy), ms in by.items():
        if strategy == "compressed" and "100M" in config:
            assert ms < by[(config, size, "hierarchical")] / 1.9


def test_one_forwarder_carries_every_wan_byte():
    from simulator.collectives import LibraryPipelining

    # 2 sites x 2 ranks, a 1 GB/s WAN that never binds, the delay line good for 100 MB/s: the
    # two groups' four directions share it, 25 MB/s each. Without the rendezvous the window
    # streams (s = 41.9 ms > L): per half L + 4s
    topo = _wan_pair(one_way_s=0.01, rate_Bps=1e9, ranks_per_site=2)
    plan = _all_reduce([(0, 2), (1, 3)], 8 << 20)
    pipe = LibraryPipelining(rendezvous=False, forwarder_Bps=1e8)
    assert _pipelined_s(topo, plan, pipe) == pytest.approx(2 * (0.01 + 4 * (1 << 20) / 25e6), rel=1e-9)
    # inside a site nothing crosses the forwarder
    local = _all_reduce([(0, 1), (2, 3)], 8 << 20)
    assert _pipelined_s(topo, local, pipe) == _pipelined_s(topo, local, LibraryPipelining(rendezvous=False))


def test_forwarder_capacity_from_the_delay_lines_cpu(tmp_path):
    import os

    calib = {"wan_all": {"pairs": 2, "sizes_bytes": [4096, 1 << 20, 16 << 20], "repeats": 7,
                         "forwarder_cpu_s": [0.01, 0.05, 1.4]}}
    # 2 pairs x 2 x 16 MiB x 7 runs in 1.4 CPU-s
    assert calibrate.forwarder_Bps(calib) == pytest.approx(2 * 2 * (16 << 20) * 7 / 1.4)
    assert calibrate.forwarder_Bps({"wan": {"pairs": 1, "sizes_bytes": [1 << 20], "repeats": 5}}) == 0.0
    # the clock reads another process's CPU time from /proc; here: this process's own
    assert calibrate.delayline_cpu_clock(None) is None
    assert calibrate.delayline_cpu_clock(str(tmp_path)) is None  # no delayline.pid
    (tmp_path / "delayline.pid").write_text(f"{os.getpid()}\n")
    clock = calibrate.delayline_cpu_clock(str(tmp_path))
    before = clock()
    sum(i * i for i in range(300_000))
    assert clock() >= before > 0
    # fit carries it into the model's pipeline
    topo = specmod.with_wan(load_topology("tiny-2site"), one_way_s=0.01, bandwidth_Bps=125e6)
    c = calibrate.Calibration(0.002, 1e-4, 6e8, 1.0, forwarder_Bps=3e8)
    assert calibrate.model_for(topo, c)[1].forwarder_Bps == 3e8


def test_emulate_run_means_this_projects_python():
    import sys

    from experiments.emulate.cli import project_python

    assert project_python(["python", "-m", "x"]) == [sys.executable, "-m", "x"]
    assert project_python(["python3", "t.py"]) == [sys.executable, "t.py"]
    assert project_python(["/usr/bin/python3", "t.py"]) == ["/usr/bin/python3", "t.py"]  # a path is the user's choice
