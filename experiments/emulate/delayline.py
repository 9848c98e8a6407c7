"""The userspace delay line: the WAN between emulated sites where the kernel has no netem.

One process attaches to every site's TUN device (entering each site's namespace with setns),
reads the IPv4 packets the kernel routes into it, and writes each one into the destination
site's TUN once it has been held for the pair's one-way delay. The delay of a pair is a
constant, so each (src, dst) queue releases in arrival order: a FIFO per pair is a heap
ordered by release time. Bandwidth is not limited here; the kernel's tbf/htb on the TUN's
egress does it, with backpressure to TCP. Packets to unknown addresses are dropped and counted.

    python -m experiments.emulate.delayline --state-dir /run/hdc-emulate/hdc

reads state.json there, writes delayline.pid, delayline.ready and (every second and at exit)
delayline.stats.json: packets and bytes forwarded, drops, lateness, CPU seconds used.
SIGTERM/SIGINT end it; the persistent TUN devices stay until `down` deletes the namespaces.
"""
from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import resource
import select
import signal
import struct
import sys
import time
from collections import deque

from experiments.emulate.netns import in_netns
from experiments.emulate.spec import ADDR_NET, EmulationSpec

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
READ_BATCH = 64  # packets read from one TUN before looking at the clock again
PR_SET_TIMERSLACK = 29


def open_tun(netns: str, dev: str) -> int:
    """Attach to the persistent TUN `dev` inside namespace `netns`; non-blocking fd."""
    with in_netns(netns):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", dev.encode(), IFF_TUN | IFF_NO_PI))
    return fd


class DelayLine:
    """The forwarding loop over already-open TUN fds; `delay_s[a][b]` is the a→b one-way delay."""

    def __init__(self, fds: list[int], delay_s: list[list[float]], site_of_addr):
        self.fds, self.delay_s, self.site_of_addr = fds, delay_s, site_of_addr
        n = len(fds)
        self.queues = {(a, b): deque() for a in range(n) for b in range(n) if a != b}
        self.forwarded = self.bytes = self.dropped = self.write_errors = 0
        self.late_sum_s = self.late_max_s = 0.0
        self.fd_site = {fd: i for i, fd in enumerate(fds)}

    def read_ready(self, fd: int, now: float) -> None:
        src = self.fd_site[fd]
        for _ in range(READ_BATCH):
            try:
                pkt = os.read(fd, 65536)
            except BlockingIOError:
                return
            if len(pkt) < 20 or pkt[0] >> 4 != 4:
                self.dropped += 1
                continue
            dst = self.site_of_addr(pkt[16:20])
            if dst is None or dst == src:
                self.dropped += 1
                continue
            self.queues[(src, dst)].append((now + self.delay_s[src][dst], pkt))

    def release_due(self, now: float) -> float | None:
        """Write every packet whose time has come; return the next release time (or None)."""
        nxt = None
        for (src, dst), q in self.queues.items():
            while q and q[0][0] <= now:
                due, pkt = q.popleft()
                try:
                    os.write(self.fds[dst], pkt)
                except (BlockingIOError, OSError):
                    self.write_errors += 1
                    continue
                late = now - due
                self.late_sum_s += late
                self.late_max_s = max(self.late_max_s, late)
                self.forwarded += 1
                self.bytes += len(pkt)
            if q and (nxt is None or q[0][0] < nxt):
                nxt = q[0][0]
        return nxt

    def stats(self) -> dict:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {"forwarded_packets": self.forwarded, "forwarded_bytes": self.bytes,
                "dropped_packets": self.dropped, "write_errors": self.write_errors,
                "mean_lateness_s": self.late_sum_s / max(self.forwarded, 1), "max_lateness_s": self.late_max_s,
                "cpu_user_s": ru.ru_utime, "cpu_system_s": ru.ru_stime, "time": time.time()}

    def run(self, stop, stats_cb=None, stats_every_s: float = 1.0) -> None:
        next_stats = time.monotonic() + stats_every_s
        nxt = None
        while not stop():
            now = time.monotonic()
            timeout = 0.2 if nxt is None else max(0.0, min(0.2, nxt - now))
            ready, _, _ = select.select(self.fds, [], [], timeout)
            now = time.monotonic()
            for fd in ready:
                self.read_ready(fd, now)
            nxt = self.release_due(now)
            if stats_cb and now >= next_stats:
                stats_cb(self.stats())
                next_stats = now + stats_every_s


def address_map(spec: EmulationSpec):
    prefix = bytes(int(x) for x in ADDR_NET.split("."))
    n = len(spec.sites)

    def site_of(addr4: bytes):
        if addr4[:2] != prefix or addr4[2] >= n:
            return None
        return addr4[2]
    return site_of


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.emulate.delayline", description=__doc__.split("\n")[0])
    ap.add_argument("--state-dir", required=True, help="the emulation's state folder (holds state.json)")
    args = ap.parse_args(argv)
    with open(os.path.join(args.state_dir, "state.json")) as fh:
        spec = EmulationSpec.from_dict(json.load(fh))
    try:  # wake up within a few µs of the requested time, not the default 50 µs slack
        ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    fds = [open_tun(s.netns, s.dev) for s in spec.sites]
    line = DelayLine(fds, spec.one_way_s, address_map(spec))
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(1))

    def write_stats(st: dict) -> None:
        path = os.path.join(args.state_dir, "delayline.stats.json")
        with open(path + ".tmp", "w") as fh:
            json.dump(st, fh)
        os.replace(path + ".tmp", path)

    with open(os.path.join(args.state_dir, "delayline.pid"), "w") as fh:
        fh.write(f"{os.getpid()}\n")
    open(os.path.join(args.state_dir, "delayline.ready"), "w").close()
    print(f"delay line up: {len(fds)} sites, one-way delays (ms) "
          f"{[[round(d * 1e3, 3) for d in row] for row in spec.one_way_s]}", flush=True)
    try:
        line.run(lambda: bool(stopping), write_stats)
    finally:
        if os.path.isdir(args.state_dir):
            write_stats(line.stats())
    return 0


if __name__ == "__main__":
    sys.exit(main())
