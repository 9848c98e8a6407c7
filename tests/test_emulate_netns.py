"""Emulated sites for real (root): namespaces, the delay line, tbf shaping, `run`, cleanup.

Marked `emulation`; skipped with the reason when not root or without ip/TUN. Every test uses
the prefix `hdctest` and a fixture that tears everything down afterwards, pass or fail.
Run: .venv/bin/python -m pytest -m emulation tests/test_emulate_*.py -q
"""
from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

import pytest

from hdc.topology import load_topology, topology_from_dict
from experiments.emulate import launch, netcheck, netns
from experiments.emulate.spec import build_spec, with_ranks_per_site, with_wan, write_topology

PREFIX = "hdctest"

pytestmark = [
    pytest.mark.emulation,
    pytest.mark.skipif(os.geteuid() != 0, reason="emulation tests need root (network namespaces, TUN, tc)"),
    pytest.mark.skipif(shutil.which("ip") is None or shutil.which("tc") is None,
                       reason="emulation tests need iproute2 (ip, tc)"),
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="emulation tests need /dev/net/tun"),
]


@pytest.fixture
def emu():
    """up(spec) for the test; everything under PREFIX removed afterwards, whatever happened."""
    made = []

    def make(topology, mode="delayline", shape=True):
        spec = build_spec(topology, prefix=PREFIX, mode=mode)
        spec.extra = {"shaped": shape, "sysctl": {}}
        netns.up(spec, shape_bandwidth=shape)
        spec.extra["topology_file"] = write_topology(topology, os.path.join(spec.state_dir, "topology.yaml"))
        made.append(spec)
        return spec
    try:
        yield make
    finally:
        netns.down(PREFIX, quiet=True)
        assert netns.list_netns(PREFIX) == []


def _two_sites(one_way_s=0.010, bw=125e6, ranks=1):
    return with_ranks_per_site(with_wan(load_topology("tiny-2site"), one_way_s=one_way_s, bandwidth_Bps=bw), ranks)


def test_up_status_down_is_complete_and_idempotent(emu):
    spec = emu(_two_sites())
    assert netns.is_up(PREFIX)
    st = netns.status(PREFIX)
    assert st["namespaces"] == [s.netns for s in spec.sites] and len(st["delayline_pids"]) == 1
    removed = netns.down(PREFIX, quiet=True)
    assert any("namespace" in r for r in removed) and any("delay line" in r for r in removed)
    assert netns.status(PREFIX)["namespaces"] == [] and not netns.is_up(PREFIX)
    assert netns.down(PREFIX, quiet=True) == []  # second time: nothing left to remove
    assert not os.path.exists(spec.state_dir)


def test_down_never_touches_other_prefixes(emu):
    emu(_two_sites())
    other = "hdcother-keep"
    subprocess.run(["ip", "netns", "add", other], check=True)
    try:
        netns.down(PREFIX, quiet=True)
        assert other in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    finally:
        subprocess.run(["ip", "netns", "del", other])


def test_ping_rtt_is_twice_the_one_way_delay(emu):
    spec = emu(_two_sites(one_way_s=0.010))
    rtts = netcheck.udp_rtt_s(spec, 0, 1, count=15)
    assert len(rtts) >= 12
    med = statistics.median(rtts)
    assert 0.0199 <= med <= 0.0235, f"median RTT {med * 1e3:.2f} ms for 10 ms one way"


def test_per_direction_delays_with_three_sites(emu):
    topo = topology_from_dict({
        "name": "skewed-3site", "site_defaults": {"nodes": 1, "gpus_per_node": 1,
                                                  "intra_node": {"latency": "20us", "bandwidth": "2GB/s"},
                                                  "intra_pod": {"latency": "20us", "bandwidth": "2GB/s"}},
        "sites": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
        "wan": [{"sites": ["a", "b"], "rtt": "6ms", "bandwidth": "1Gbps"},
                {"sites": ["a", "c"], "rtt": "20ms", "bandwidth": "1Gbps"},
                {"sites": ["b", "c"], "rtt": "16ms", "bandwidth": "1Gbps"}]})
    spec = emu(topo)
    # each pair its own delay (the direct link is the lowest-latency route for every pair here;
    # the emulator follows the topology's WAN routing, as the model does)
    for (a, b), want_s in {(0, 1): 0.006, (0, 2): 0.020, (1, 2): 0.016}.items():
        med = statistics.median(netcheck.udp_rtt_s(spec, a, b, count=9, gap_s=0.005))
        assert want_s - 1e-4 <= med <= want_s + 0.0035, f"{a}->{b}: {med * 1e3:.2f} ms, want {want_s * 1e3} ms"


def test_tbf_shapes_throughput_without_exceeding_the_rate(emu):
    spec = emu(_two_sites(one_way_s=0.005, bw=12.5e6))  # 100 Mbit/s
    bps = netcheck.tcp_throughput_Bps(spec, 0, 1, size_bytes=6 << 20, warmup_bytes=2 << 20)
    assert 0.80 * 12.5e6 <= bps <= 1.03 * 12.5e6, f"{bps * 8 / 1e6:.1f} Mbit/s through a 100 Mbit/s tbf"
    stats = netns.status(PREFIX)["delayline_stats"]
    assert stats is None or stats["dropped_packets"] < 50  # only stray non-IPv4 packets


def test_run_sets_rank_environment_inside_each_site(emu, tmp_path):
    spec = emu(_two_sites(ranks=2))
    code = ("import os, socket, sys; e = os.environ; "
            "open(sys.argv[1] + '/' + e['RANK'], 'w').write(' '.join([e['WORLD_SIZE'], e['LOCAL_RANK'], "
            "e['MASTER_ADDR'], e['GLOO_SOCKET_IFNAME'], e['HDC_SITE'], str(os.path.exists(e['HDC_TOPOLOGY'])), "
            "os.readlink('/proc/self/ns/net')]))")
    procs = launch.start_ranks(spec, [sys.executable, "-c", code, str(tmp_path)], spec.extra["topology_file"])
    assert launch.wait_ranks(procs, timeout_s=60) == 0
    lines = {int(p.name): p.read_text().split() for p in tmp_path.iterdir()}
    assert sorted(lines) == [0, 1, 2, 3]
    assert [lines[r][3] for r in range(4)] == [f"{PREFIX}t0", f"{PREFIX}t0", f"{PREFIX}t1", f"{PREFIX}t1"]
    assert [lines[r][4] for r in range(4)] == ["site-a", "site-a", "site-b", "site-b"]
    assert {lines[r][2] for r in range(4)} == {"10.77.0.1"} and all(lines[r][5] == "True" for r in range(4))
    assert lines[0][6] == lines[1][6] != lines[2][6] == lines[3][6]  # same site, same namespace


def test_gloo_all_reduce_crosses_the_delay(emu, tmp_path):
    spec = emu(_two_sites(one_way_s=0.010))
    out = tmp_path / "ar.json"
    procs = launch.start_ranks(spec, [sys.executable, "-m", "experiments.emulate.allreduce_bench", "--size", "64KB",
                                      "--repeats", "5", "--warmup", "1", "--json", str(out)],
                               spec.extra["topology_file"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert launch.wait_ranks(procs, timeout_s=120) == 0
    import json

    med = json.loads(out.read_text())["median_s"]
    assert 0.020 <= med <= 0.2, f"2-rank all-reduce across 10 ms one way took {med * 1e3:.1f} ms"


def test_down_cleans_up_after_a_crash(emu):
    spec = emu(_two_sites())
    # a rank left running inside a site and the delay line killed hard: what Ctrl-C/crash leaves
    stray = launch.start_ranks(spec, [sys.executable, "-c", "import time; time.sleep(120)"],
                               spec.extra["topology_file"])
    os.kill(netns.status(PREFIX)["delayline_pids"][0], signal.SIGKILL)
    time.sleep(0.2)
    assert not netns.is_up(PREFIX)
    netns.down(PREFIX, quiet=True)
    assert all(p.wait(timeout=10) is not None for p in stray)
    assert netns.list_netns(PREFIX) == [] and not os.path.exists(spec.state_dir)


def test_cli_up_run_down(tmp_path):
    env = dict(os.environ)
    hdc = [sys.executable, "-c", "import sys; from tests.test_emulate_netns import _cli; sys.exit(_cli(sys.argv[1:]))"]
    try:
        r = subprocess.run(hdc + ["emulate", "up", "--topology", "tiny-2site", "--ranks-per-site", "1",
                                  "--one-way-delay", "2ms", "--prefix", PREFIX], capture_output=True, text=True,
                           timeout=60, env=env)
        assert r.returncode == 0, r.stderr
        r = subprocess.run(hdc + ["emulate", "run", "--prefix", PREFIX, "--", sys.executable, "-c",
                                  "import os; print('site', os.environ['HDC_SITE'])"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and sorted(r.stdout.split()) == sorted("site site-a site site-b".split())
        r = subprocess.run(hdc + ["emulate", "status", "--prefix", PREFIX], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "up:" in r.stdout
    finally:
        r = subprocess.run(hdc + ["emulate", "down", "--prefix", PREFIX], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and netns.list_netns(PREFIX) == []
    r = subprocess.run(hdc + ["emulate", "run", "--prefix", PREFIX, "--", "true"], capture_output=True, text=True)
    assert r.returncode == 2 and "nothing is up" in r.stderr


def _cli(argv):
    """The `hdc` entry point with this package registered (until it is wired in)."""
    from hdc.cli import _Parser
    from hdc.errors import UserError
    from experiments.emulate.cli import register

    p = _Parser(prog="hdc")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    register(sub)
    try:
        a = p.parse_args(argv)
        return a.handler(a) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
