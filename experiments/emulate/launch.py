"""Start one process per rank inside its site's namespace, with the environment gloo (and NCCL,
where GPUs exist) needs to find its peers across the emulated WAN.

Rank r runs in the namespace of site `topology.locate(r).site`; rank 0's site address is the
rendezvous (MASTER_ADDR); GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME name the device holding
the site's address, so the ranks bind to it and cross-site traffic takes the emulated WAN.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Optional, Sequence

from experiments.emulate.netns import setns
from experiments.emulate.spec import EmulationSpec

RANK_NICE = int(os.environ.get("HDC_EMULATE_RANK_NICE", "-10"))  # see netns.DELAYLINE_NICE
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rank_env(spec: EmulationSpec, rank: int, master_port: int, topology_file: str,
             base: Optional[dict] = None) -> dict:
    site = spec.sites[spec.ranks_site[rank]]
    local_rank = sum(1 for r in range(rank) if spec.ranks_site[r] == site.index)
    env = dict(os.environ if base is None else base)
    env.update({
        "RANK": str(rank), "WORLD_SIZE": str(len(spec.ranks_site)), "LOCAL_RANK": str(local_rank),
        "MASTER_ADDR": spec.sites[spec.ranks_site[0]].addr, "MASTER_PORT": str(master_port),
        "GLOO_SOCKET_IFNAME": site.dev, "NCCL_SOCKET_IFNAME": site.dev,
        "HDC_TOPOLOGY": topology_file, "HDC_SITE": site.name, "HDC_SITE_ADDR": site.addr,
        "HDC_EMULATE_STATE": spec.state_dir,
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
        "PYTHONPATH": PROJECT_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
    })
    return env


def free_port(spec: EmulationSpec) -> int:
    """A port number for the rendezvous: each namespace starts with every port free, so a
    fixed range is safe; vary it by pid so two runs in a row do not meet TIME_WAIT."""
    return 29500 + os.getpid() % 2000


def start_ranks(spec: EmulationSpec, cmd: Sequence[str], topology_file: str, master_port: int | None = None,
                stdout=None, stderr=None, extra_env: Optional[dict] = None) -> list[subprocess.Popen]:
    port = master_port or free_port(spec)
    procs = []
    try:
        for rank in range(len(spec.ranks_site)):
            env = rank_env(spec, rank, port, topology_file)
            env.update(extra_env or {})
            ns = spec.sites[spec.ranks_site[rank]].netns
            procs.append(subprocess.Popen(list(cmd), env=env, cwd=os.getcwd(), stdout=stdout, stderr=stderr,
                                          stdin=subprocess.DEVNULL, preexec_fn=lambda ns=ns: _enter(ns)))
    except BaseException:
        stop(procs)
        raise
    return procs


def _enter(netns: str) -> None:
    """In the child before exec: join the site's namespace, raise priority (root only)."""
    setns(netns)
    if RANK_NICE:
        try:
            os.nice(RANK_NICE)
        except OSError:
            pass


def stop(procs: list[subprocess.Popen], grace_s: float = 3.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            if p.poll() is None:
                try:
                    p.send_signal(sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.05)


def wait_ranks(procs: list[subprocess.Popen], timeout_s: float) -> int:
    """Wait for every rank; if one fails (or the time runs out) stop the rest. Returns the
    first non-zero exit code (124 on timeout), else 0."""
    deadline = time.monotonic() + timeout_s
    rc = 0
    try:
        while [p.poll() for p in procs].count(None):  # poll every rank, not just the first
            bad = [p.returncode for p in procs if p.returncode not in (None, 0)]
            if bad:
                rc = bad[0]
                time.sleep(1.0)  # let peers print their side of the failure
                break
            if time.monotonic() > deadline:
                print(f"emulate: ranks still running after {timeout_s:g} s; stopping them", file=sys.stderr)
                rc = 124
                break
            time.sleep(0.05)
    finally:
        stop(procs)
    return rc or next((p.returncode for p in procs if p.returncode), 0)
