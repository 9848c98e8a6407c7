"""Start the processes of a job: on real sites through torchrun, or all on this machine.

Rank r is GPU r of the topology (site-major, then node, then local index), so a process
knows its place from RANK and the topology. Both launchers also export:

    HDC_TOPOLOGY        the topology file or preset, as given to `hdc launch`
    HDC_SITE            this process's site name        HDC_SITE_INDEX   its index
    HDC_NODE_RANK       node index within the site      HDC_NODES_PER_SITE
    HDC_TIMEOUT_S       collective timeout (seconds)    HDC_BACKEND      if --backend given
    HDC_LOCAL=1         with --local

`init_from_env()` reads them in the launched command.
"""
from __future__ import annotations

import codecs
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Optional, Sequence

from hdc.commands import MAX_LOCAL_PROCESSES
from hdc.errors import UserError
from hdc.topology import Topology, load_topology

DEFAULT_TIMEOUT_S = 300.0  # = trainer.distributed.groups.DEFAULT_TIMEOUT_S; this module must not import torch


@dataclass
class DistEnv:
    """Where this process sits, as `hdc launch` described it."""
    rank: int
    world_size: int
    local_rank: int
    backend: str
    topology: Optional[Topology]
    site: Optional[str]
    timeout_s: float


def init_from_env(timeout_s: Optional[float] = None, backend: Optional[str] = None) -> DistEnv:
    """Initialize torch.distributed from the launcher's environment (env:// rendezvous)."""
    import torch.distributed as dist

    from trainer.distributed.groups import init_distributed

    timeout = float(timeout_s or os.environ.get("HDC_TIMEOUT_S") or DEFAULT_TIMEOUT_S)
    backend = init_distributed(backend=backend, timeout_s=timeout)
    topo_arg = os.environ.get("HDC_TOPOLOGY")
    topo = load_topology(topo_arg) if topo_arg else None
    rank = dist.get_rank()
    site = topo.sites[topo.locate(rank).site].name if topo is not None and rank < topo.num_gpus else None
    return DistEnv(rank=rank, world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                   backend=backend, topology=topo, site=site, timeout_s=timeout)


# ---------------------------------------------------------------------- real sites (torchrun)
def parse_master(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--master: must be HOST:PORT, e.g. 10.0.0.1:29500, got {text!r}")
    return host, int(port)


def torchrun_command(topology_arg: str, site: str, node_rank: int, master: str, cmd: Sequence[str], *,
                     nodes_per_site: Optional[int] = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                     backend: Optional[str] = None) -> tuple[list[str], dict[str, str]]:
    """The torchrun argv and the extra environment for one node of a multi-site job."""
    topo = load_topology(topology_arg)
    si = topo.site_index(site)
    s = topo.sites[si]
    if nodes_per_site is not None and nodes_per_site != s.nodes:
        raise UserError(f"--nodes-per-site: topology {topo.name} gives site {site} {s.nodes} node(s), "
                        f"got {nodes_per_site}")
    if not 0 <= node_rank < s.nodes:
        raise UserError(f"--node-rank: must be 0..{s.nodes - 1} for site {site}, got {node_rank}")
    gpn = {x.gpus_per_node for x in topo.sites}
    if len(gpn) > 1:
        raise UserError(f"topology {topo.name}: torchrun needs the same gpus_per_node in every site, "
                        f"got {sorted(gpn)}")
    host, port = parse_master(master)
    global_node = sum(x.nodes for x in topo.sites[:si]) + node_rank
    argv = [sys.executable, "-m", "torch.distributed.run",
            f"--nnodes={sum(x.nodes for x in topo.sites)}", f"--nproc-per-node={s.gpus_per_node}",
            f"--node-rank={global_node}", f"--master-addr={host}", f"--master-port={port}",
            "--max-restarts=0", "--no-python", *cmd]
    env = _hdc_env(topology_arg, topo, si, node_rank, timeout_s, backend)
    return argv, env


def _hdc_env(topology_arg: str, topo: Topology, site: int, node: int, timeout_s: float,
             backend: Optional[str]) -> dict[str, str]:
    env = {"HDC_TOPOLOGY": topology_arg, "HDC_SITE": topo.sites[site].name, "HDC_SITE_INDEX": str(site),
           "HDC_NODE_RANK": str(node), "HDC_NODES_PER_SITE": str(topo.sites[site].nodes),
           "HDC_TIMEOUT_S": f"{timeout_s:g}"}
    if backend:
        env["HDC_BACKEND"] = backend
    return env


def launch_site(topology_arg: str, site: str, node_rank: int, master: str, cmd: Sequence[str], *,
                nodes_per_site: Optional[int] = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                backend: Optional[str] = None, dry_run: bool = False, out: Optional[IO] = None) -> int:
    argv, env = torchrun_command(topology_arg, site, node_rank, master, cmd, nodes_per_site=nodes_per_site,
                                 timeout_s=timeout_s, backend=backend)
    out = out or sys.stdout
    if dry_run:
        for k, v in env.items():
            print(f"{k}={v}", file=out)
        print(" ".join(argv), file=out)
        return 0
    return subprocess.call(argv, env={**os.environ, **env})


# ---------------------------------------------------------------------- every site on this machine
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_env(topology_arg: str, topo: Topology, rank: int, master_port: int, timeout_s: float,
              backend: Optional[str]) -> dict[str, str]:
    loc = topo.locate(rank)
    env = _hdc_env(topology_arg, topo, loc.site, loc.node, timeout_s, backend)
    env.update({"RANK": str(rank), "WORLD_SIZE": str(topo.num_gpus),
                # every process runs on this machine: LOCAL_RANK indexes the machine's GPUs
                "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(topo.num_gpus),
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(master_port), "HDC_LOCAL": "1",
                "PYTHONUNBUFFERED": "1"})
    return env


def launch_local(topology_arg: str, cmd: Sequence[str], *, master_port: Optional[int] = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, backend: Optional[str] = None, grace_s: float = 5.0,
                 out: Optional[IO] = None) -> int:
    """Run `cmd` once per GPU of the topology on this machine, output prefixed by rank and site.
    Returns 0 if every rank succeeded; else the first failing rank's exit code, after stopping
    the others (SIGTERM, then SIGKILL after `grace_s`)."""
    if not cmd:
        raise UserError("launch: give the command to run after --, e.g. hdc launch --local ... -- python train.py")
    out = out or sys.stdout
    topo = load_topology(topology_arg)
    if topo.num_gpus > MAX_LOCAL_PROCESSES:
        raise UserError(f"topology {topology_arg}: {topo.num_gpus:,} GPUs would be {topo.num_gpus:,} processes on "
                        f"this machine; at most {MAX_LOCAL_PROCESSES} (run a real site with hdc launch per node)")
    port = master_port or free_port()
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    readers = []

    def pump(stream, prefix: str) -> None:
        # each line, and each redraw of a progress bar (tqdm ends them with \r, not \n), as soon as it
        # is complete, with the rank's prefix; an incomplete tail waits for its end, so two ranks'
        # output never mixes on one line
        decode, tail = codecs.getincrementaldecoder("utf-8")(errors="replace").decode, ""
        for raw in iter(lambda: stream.read1(65536), b""):
            *done, tail = re.split(r"(?<=[\r\n])", tail + decode(raw))
            with lock:
                for piece in done:
                    out.write(piece if piece == "\r" else prefix + piece)
                out.flush()
        if tail:
            with lock:
                out.write(prefix + tail)
                out.flush()
        stream.close()

    base = dict(os.environ)
    base.setdefault("GLOO_SOCKET_IFNAME", "lo")
    try:
        for r in range(topo.num_gpus):
            env = {**base, **local_env(topology_arg, topo, r, port, timeout_s, backend)}
            try:
                p = subprocess.Popen(list(cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
            except FileNotFoundError:
                raise UserError(f"launch: command not found: {cmd[0]!r}") from None
            procs.append(p)
            site = topo.sites[topo.locate(r).site].name
            t = threading.Thread(target=pump, args=(p.stdout, f"[{r} {site}] "), daemon=True)
            t.start()
            readers.append(t)
        rc = _watch(procs, topo, out, lock, grace_s)
    except KeyboardInterrupt:
        _stop(procs, grace_s)
        rc = 130
    for t in readers:
        t.join(timeout=2)
    return rc


def _watch(procs: list[subprocess.Popen], topo: Topology, out: IO, lock, grace_s: float) -> int:
    while True:
        codes = [p.poll() for p in procs]
        failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            r, c = failed[0]
            site = topo.sites[topo.locate(r).site].name
            with lock:
                out.write(f"hdc launch: rank {r} ({site}) exited with code {c}; stopping the other ranks\n")
                out.flush()
            _stop(procs, grace_s)
            return c if c > 0 else 1
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.05)


def _stop(procs: list[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM the process groups we started, then SIGKILL what is left after grace_s."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    for p in live:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
