"""What the userspace delay line costs, and the 4 MB gloo all-reduce reference points (root).

    .venv/bin/python benchmarks/delayline_overhead.py [--repeats 20] [--quick]

Part 1 — the delay line's own cost: one TCP stream pushed through it (0 ms delay, unshaped,
then shaped to 1 Gbit/s), with the line's CPU seconds read from its stats file: CPU per GB,
packets per second, and the share of one core it takes at 1 Gbit/s. On a 2-core machine that
share is taken from the ranks.
Part 2 — 2 sites × 1 rank, 4 MB all-reduce (median of --repeats after 3 warm-ups, common start
instant): direct veth (no delay line) as the baseline, then through the delay line at 0 ms,
10 ms, 10 ms + 1 Gbit/s, 10 ms + 100 Mbit/s and 1 ms + 1 Gbit/s, each with the ratio to the
baseline and the alpha-beta time of a 2-rank ring all-reduce on that path. Kernel-default TCP
settings (as in /work/shared/NOTES.md); `--warm` sets tcp_slow_start_after_idle=0 as validate does.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hdc.cost import ring_all_reduce_s  # noqa: E402
from hdc.topology import load_topology  # noqa: E402
from experiments.emulate import launch, netcheck, netns  # noqa: E402
from experiments.emulate.spec import build_spec, with_ranks_per_site, with_wan, write_topology  # noqa: E402

PREFIX = "hdcbench"
SIZE_BYTES = 4_000_000


def _up(one_way_s: float, bw_Bps: float | None, mode: str, warm: bool):
    topo = with_ranks_per_site(with_wan(load_topology("tiny-2site"), one_way_s=max(one_way_s, 1e-6),
                                        bandwidth_Bps=bw_Bps or 125e6), 1)
    spec = build_spec(topo, prefix=PREFIX, mode=mode)
    spec.extra = {"shaped": bw_Bps is not None,
                  "sysctl": {"net.ipv4.tcp_slow_start_after_idle": "0"} if warm else {}}
    netns.up(spec, shape_bandwidth=bw_Bps is not None)
    spec.extra["topology_file"] = write_topology(topo, os.path.join(spec.state_dir, "topology.yaml"))
    return spec


def _stats() -> dict:
    return netns.status(PREFIX)["delayline_stats"] or {}


def line_cost(size_bytes: int) -> list[tuple[str, float, float, float, float]]:
    rows = []
    for label, bw in (("unshaped", None), ("1 Gbit/s", 125e6)):
        spec = _up(0.0, bw, "delayline", warm=True)
        try:
            time.sleep(1.2)
            before = _stats()
            t0 = time.monotonic()
            bps = netcheck.tcp_throughput_Bps(spec, 0, 1, size_bytes=size_bytes, warmup_bytes=0)
            wall = time.monotonic() - t0
            time.sleep(1.2)  # the stats file is written once a second
            after = _stats()
        finally:
            netns.down(PREFIX, quiet=True)
        cpu = (after["cpu_user_s"] + after["cpu_system_s"]) - (before.get("cpu_user_s", 0) + before.get("cpu_system_s", 0))
        pkts = after["forwarded_packets"] - before.get("forwarded_packets", 0)
        rows.append((label, bps * 8 / 1e6, cpu / (size_bytes / 1e9), pkts / wall, cpu / wall))
    return rows


def allreduce_ms(one_way_s: float, bw_Bps: float | None, mode: str, repeats: int, warm: bool) -> float:
    spec = _up(one_way_s, bw_Bps, mode, warm)
    try:
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "ar.json")
            procs = launch.start_ranks(spec, [sys.executable, "-m", "experiments.emulate.allreduce_bench", "--size",
                                              str(SIZE_BYTES), "--repeats", str(repeats), "--json", out],
                                       spec.extra["topology_file"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if launch.wait_ranks(procs, timeout_s=300):
                raise RuntimeError("all-reduce benchmark failed")
            with open(out) as fh:
                return json.load(fh)["median_s"] * 1e3
    finally:
        netns.down(PREFIX, quiet=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--stream-bytes", type=int, default=256 << 20, help="bytes of the part-1 TCP stream")
    ap.add_argument("--warm", action="store_true", help="tcp_slow_start_after_idle=0 in part 2")
    ap.add_argument("--quick", action="store_true", help="fewer repeats, smaller stream")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.quick:
        args.repeats, args.stream_bytes = 8, 64 << 20
    print(f"load average at start: {os.getloadavg()[0]:.2f} (2-core machine; other work adds noise)")
    print("\n== delay line cost (one TCP stream, 0 ms)")
    print(f"{'path':<10} {'Mbit/s':>8} {'CPU s/GB':>9} {'packets/s':>10} {'core share':>11}")
    for label, mbps, cpu_per_gb, pps, share in line_cost(args.stream_bytes):
        print(f"{label:<10} {mbps:>8.0f} {cpu_per_gb:>9.2f} {pps:>10.0f} {share * 100:>10.0f}%")
    print(f"\n== 4 MB gloo all-reduce, 2 sites x 1 rank, median of {args.repeats}"
          + (" (warm TCP)" if args.warm else " (kernel-default TCP)"))
    cases = [("direct veth", 0.0, None, "direct"), ("delay line 0 ms", 0.0, None, "delayline"),
             ("10 ms", 0.010, None, "delayline"), ("10 ms + 1 Gbit/s", 0.010, 125e6, "delayline"),
             ("10 ms + 100 Mbit/s", 0.010, 12.5e6, "delayline"), ("1 ms + 1 Gbit/s", 0.001, 125e6, "delayline")]
    base = None
    print(f"{'path':<20} {'measured ms':>12} {'x direct':>9} {'alpha-beta ms':>14}")
    for label, d, bw, mode in cases:
        ms = allreduce_ms(d, bw, mode, args.repeats, args.warm)
        base = base or ms
        ab = ring_all_reduce_s(2, SIZE_BYTES, d, bw) * 1e3 if bw else 2 * d * 1e3
        print(f"{label:<20} {ms:>12.1f} {ms / base:>9.2f} {ab:>14.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
