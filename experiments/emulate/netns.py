"""Build, inspect and remove the emulated sites.

`up(spec)`:
  delayline mode (no netem on this kernel): per site a namespace with a persistent TUN device
    `<prefix>t<i>` holding 10.77.<i>.1/16; the kernel routes other sites' addresses into the
    TUN; the delay line process reads them, holds each packet for the pair's one-way delay and
    writes it into the destination site's TUN. Bandwidth is shaped on the TUN's egress by the
    kernel (tbf for one peer, htb + u32 classes per peer otherwise): TCP meets backpressure,
    never userspace drops.
  netem / direct mode: a veth pair per pair of sites, the site address on each end, netem
    `delay` (netem mode) and tbf on each end. `direct` is the same without delay: the
    reference for what the machine does with no WAN at all.
`down(prefix)` kills the delay line and every process left in our namespaces, then deletes
every namespace named `<prefix>-*` (devices inside go with them). Idempotent.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

from hdc.errors import UserError
from experiments.emulate.spec import EmulationSpec, state_dir

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
CMD_TIMEOUT_S = 15.0
# The delay line is the network: on a busy 2-core machine it must not wait behind unrelated
# work, or packets leave late. It runs SCHED_FIFO at a low real-time priority (it sleeps in
# select between packets and uses a fraction of a core; the kernel's RT throttling caps it at
# 95% anyway); HDC_EMULATE_DELAYLINE_RT=0 runs it as an ordinary process at nice -15 instead.
DELAYLINE_RT_PRIORITY = int(os.environ.get("HDC_EMULATE_DELAYLINE_RT", "10"))


def require_root() -> None:
    if os.geteuid() != 0:
        raise UserError("emulation needs root (network namespaces, TUN devices, tc); run as root or with sudo")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run one command (ip, tc, sysctl) with a timeout; failures raise with its stderr."""
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {p.stderr.strip() or p.stdout.strip()}")
    return p


def setns(name: str) -> None:
    """Move the calling thread into network namespace `name` (/run/netns/<name>)."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


@contextmanager
def in_netns(name: str):
    """Run a block inside a namespace and come back (thread-level, like `ip netns exec`)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        setns(name)
        yield
    finally:
        _libc.setns(home, CLONE_NEWNET)
        os.close(home)


def list_netns(prefix: str) -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return sorted(line.split()[0] for line in out.splitlines()
                  if line.strip() and line.split()[0].startswith(prefix + "-"))


def netem_available() -> bool:
    """Does this kernel have the netem qdisc? (Tried in a throwaway namespace.)"""
    ns = f"hdcprobe{os.getpid() % 100000}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return sh("tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
                  check=False).returncode == 0
    finally:
        sh("ip", "netns", "del", ns, check=False)


def resolve_mode(mode: str) -> str:
    if mode == "auto":
        return "netem" if netem_available() else "delayline"
    if mode == "netem" and not netem_available():
        raise UserError("--mode netem: this kernel has no netem qdisc; use --mode delayline (or auto)")
    return mode


# ------------------------------------------------------------------ shaping
BURST_S = 0.002  # the shaper's bucket: ~2 ms of line rate...
BURST_MIN_MTUS = 4  # ...and at least 4 full packets (the simulator models the same bucket)


def _rate_args(bandwidth_Bps: float, mtu_bytes: int) -> tuple[str, str, str]:
    bits = int(bandwidth_Bps * 8)
    burst = max(BURST_MIN_MTUS * mtu_bytes, int(bandwidth_Bps * BURST_S))
    limit = max(1 << 20, int(bandwidth_Bps * 0.05))  # ~50 ms of queue: TCP backs off before it
    return f"{bits}bit", str(burst), str(limit)


def shape(ns: str, dev: str, peers: list[tuple[str, float]], mtu_bytes: int, parent: str = "root") -> None:
    """Egress shaping of `dev` in `ns`: one peer -> tbf; several -> htb class + u32 filter each.
    peers: (destination address or prefix, bandwidth Bps)."""
    if len(peers) == 1:
        rate, burst, limit = _rate_args(peers[0][1], mtu_bytes)
        sh("tc", "-n", ns, "qdisc", "add", "dev", dev, *parent.split(), "tbf", "rate", rate,
           "burst", burst, "limit", limit)
        return
    sh("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "r2q", "1000")
    for k, (dst, bps) in enumerate(peers, start=1):
        rate, burst, limit = _rate_args(bps, mtu_bytes)
        sh("tc", "-n", ns, "class", "add", "dev", dev, "parent", "1:", "classid", f"1:{k}", "htb",
           "rate", rate, "ceil", rate, "burst", burst, "cburst", burst)
        sh("tc", "-n", ns, "qdisc", "add", "dev", dev, "parent", f"1:{k}", "bfifo", "limit", limit)
        sh("tc", "-n", ns, "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1",
           "u32", "match", "ip", "dst", dst, "flowid", f"1:{k}")


# ------------------------------------------------------------------ up / down / status
def up(spec: EmulationSpec, shape_bandwidth: bool = True, ready_timeout_s: float = 20.0) -> EmulationSpec:
    """Create everything `spec` describes. Anything left by an earlier run is removed first."""
    require_root()
    down(spec.prefix, quiet=True)
    os.makedirs(spec.state_dir, exist_ok=True)
    _write_state(spec)  # first, so a crash half-way is still cleaned up by `down`
    try:
        for s in spec.sites:
            sh("ip", "netns", "add", s.netns)
            sh("ip", "-n", s.netns, "link", "set", "lo", "up")
            sh("ip", "netns", "exec", s.netns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
               "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
            for key, val in spec.extra.get("sysctl", {}).items():
                p = sh("ip", "netns", "exec", s.netns, "sysctl", "-qw", f"{key}={val}", check=False)
                if p.returncode:
                    raise UserError(f"--sysctl {key}={val}: {p.stderr.strip() or 'refused'}")
        if spec.mode == "delayline":
            _up_tun(spec, shape_bandwidth)
            _start_delayline(spec, ready_timeout_s)
        else:
            _up_veth(spec, shape_bandwidth)
    except BaseException:
        down(spec.prefix, quiet=True)
        raise
    return spec


def _up_tun(spec: EmulationSpec, shape_bandwidth: bool) -> None:
    for s in spec.sites:
        sh("ip", "-n", s.netns, "tuntap", "add", "dev", s.dev, "mode", "tun")
        sh("ip", "-n", s.netns, "link", "set", s.dev, "mtu", str(spec.mtu_bytes), "txqueuelen", "10000")
        sh("ip", "-n", s.netns, "addr", "add", f"{s.addr}/16", "dev", s.dev)
        sh("ip", "-n", s.netns, "link", "set", s.dev, "up")
        if shape_bandwidth:
            peers = [(f"{o.addr}/32", spec.bandwidth_Bps[s.index][o.index]) for o in spec.sites if o is not s]
            shape(s.netns, s.dev, peers, spec.mtu_bytes)


def _up_veth(spec: EmulationSpec, shape_bandwidth: bool) -> None:
    n = len(spec.sites)
    for a in range(n):
        for b in range(a + 1, n):
            sa, sb = spec.sites[a], spec.sites[b]
            da, db = f"{spec.prefix}{a}v{b}", f"{spec.prefix}{b}v{a}"
            sh("ip", "link", "add", da, "netns", sa.netns, "mtu", str(spec.mtu_bytes), "type", "veth",
               "peer", "name", db, "netns", sb.netns, "mtu", str(spec.mtu_bytes))
            for s, dev, o in ((sa, da, sb), (sb, db, sa)):
                sh("ip", "-n", s.netns, "addr", "add", f"{s.addr}/32", "dev", dev)
                sh("ip", "-n", s.netns, "link", "set", dev, "up")
                sh("ip", "-n", s.netns, "route", "add", f"{o.addr}/32", "dev", dev, "src", s.addr)
                parent = "root"
                if spec.mode == "netem":
                    delay_us = int(round(spec.one_way_s[s.index][o.index] * 1e6))
                    sh("tc", "-n", s.netns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem",
                       "delay", f"{delay_us}us", "limit", "100000")
                    parent = "parent 1:1"
                if shape_bandwidth:
                    shape(s.netns, dev, [(f"{o.addr}/32", spec.bandwidth_Bps[s.index][o.index])],
                          spec.mtu_bytes, parent=parent)


def _start_delayline(spec: EmulationSpec, ready_timeout_s: float) -> None:
    d = spec.state_dir
    log = open(os.path.join(d, "delayline.log"), "ab")
    proc = subprocess.Popen([sys.executable, "-m", "experiments.emulate.delayline", "--state-dir", d],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                            preexec_fn=_delayline_priority,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    log.close()
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if os.path.exists(os.path.join(d, "delayline.ready")):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = _tail(os.path.join(d, "delayline.log"))
    raise RuntimeError(f"delay line did not start (exit {proc.poll()}): {tail}")


def _delayline_priority() -> None:
    try:
        if DELAYLINE_RT_PRIORITY > 0:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(DELAYLINE_RT_PRIORITY))
        else:
            os.nice(-15)
    except OSError:
        pass


def _tail(path: str, n: int = 800) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read()[-n:].decode(errors="replace")
    except OSError:
        return ""


def _write_state(spec: EmulationSpec) -> None:
    path = os.path.join(spec.state_dir, "state.json")
    with open(path + ".tmp", "w") as fh:
        json.dump(spec.to_dict(), fh, indent=1)
    os.replace(path + ".tmp", path)


def read_state(prefix: str) -> EmulationSpec | None:
    try:
        with open(os.path.join(state_dir(prefix), "state.json")) as fh:
            return EmulationSpec.from_dict(json.load(fh))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _our_delaylines(prefix: str) -> list[int]:
    """Pids of delay-line processes serving this prefix (matched on their command line)."""
    needle = f"experiments.emulate.delayline\0--state-dir\0{state_dir(prefix)}\0".encode()
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as fh:
                    if needle in fh.read() + b"\0":
                        pids.append(int(name))
            except OSError:
                pass
    return pids


def _kill(pids: list[int], timeout_s: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        pids = [p for p in pids if _alive(p)]
        if not pids:
            return


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def down(prefix: str, quiet: bool = False) -> list[str]:
    """Remove everything `up` made for this prefix; returns what was removed. Idempotent."""
    require_root()
    removed = []
    dl = _our_delaylines(prefix)
    if dl:
        _kill(dl)
        removed.append(f"delay line (pid {', '.join(map(str, dl))})")
    for ns in list_netns(prefix):
        pids = [int(p) for p in sh("ip", "netns", "pids", ns, check=False).stdout.split() if p.isdigit()]
        if pids:
            _kill(pids)
            removed.append(f"{len(pids)} process(es) in {ns}")
        sh("ip", "netns", "del", ns, check=False)
        removed.append(f"namespace {ns}")
    d = state_dir(prefix)
    if os.path.isdir(d):
        for name in os.listdir(d):
            os.unlink(os.path.join(d, name))
        os.rmdir(d)
        removed.append(f"state {d}")
    if not quiet:
        print("\n".join(f"removed {r}" for r in removed) or f"nothing to remove for prefix {prefix!r}")
    return removed


def status(prefix: str) -> dict:
    """What is up: namespaces, delay-line process and its counters, the spec in force."""
    spec = read_state(prefix)
    out = {"prefix": prefix, "namespaces": list_netns(prefix), "delayline_pids": _our_delaylines(prefix),
           "spec": spec.to_dict() if spec else None, "delayline_stats": None}
    try:
        with open(os.path.join(state_dir(prefix), "delayline.stats.json")) as fh:
            out["delayline_stats"] = json.load(fh)
    except (OSError, ValueError):
        pass
    return out


def is_up(prefix: str) -> bool:
    spec = read_state(prefix)
    if spec is None or sorted(s.netns for s in spec.sites) != list_netns(prefix):
        return False
    return spec.mode != "delayline" or bool(_our_delaylines(prefix))
