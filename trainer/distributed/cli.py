"""`hdc launch`: start a job's processes on real sites (torchrun) or all on this machine.

    hdc launch --topology T --site NAME --node-rank R --master HOST:PORT [--nodes-per-site K] -- CMD ...
    hdc launch --local --topology T -- CMD ...

Register with `register(subparsers)` (import path: trainer.distributed.cli:register).
"""
from __future__ import annotations

import argparse

from hdc.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "launch", help="start one process per GPU of a topology (torchrun per node, or all locally)",
        description="Start a command once per GPU of the topology. On real sites run this once per "
                    "node (it wraps torchrun); with --local every site's processes start on this "
                    "machine. The command learns its place from RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* "
                    "and HDC_TOPOLOGY, HDC_SITE, HDC_SITE_INDEX, HDC_NODE_RANK, HDC_TIMEOUT_S.")
    p.add_argument("--topology", required=True, metavar="PATH|PRESET",
                   help="topology file or preset (every site must see the same file)")
    p.add_argument("--local", action="store_true", help="start every rank of every site on this machine")
    p.add_argument("--site", metavar="NAME", help="this node's site (real sites)")
    p.add_argument("--nodes-per-site", type=int, metavar="K", default=None,
                   help="nodes in this site; checked against the topology (default: the topology's)")
    p.add_argument("--node-rank", type=int, metavar="R", default=None, help="this node's index within its site")
    p.add_argument("--master", metavar="HOST:PORT", help="rendezvous address: node 0 of the first site")
    p.add_argument("--master-port", type=int, default=None, help="--local: rendezvous port (default: a free one)")
    p.add_argument("--timeout-s", type=float, default=300.0,
                   help="timeout of every collective in seconds; a dead peer ends the run (default 300)")
    p.add_argument("--backend", choices=("gloo", "nccl"), default=None,
                   help="torch.distributed backend (default: nccl with GPUs, else gloo)")
    p.add_argument("--dry-run", action="store_true", help="print the environment and torchrun command; run nothing")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...", help="the command to run")
    p.set_defaults(handler=_launch)


def _launch(args: argparse.Namespace) -> int:
    from trainer.distributed.launch import launch_local, launch_site

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UserError("launch: give the command to run after --, e.g. -- hdc train recipe.yaml")
    if args.timeout_s <= 0:
        raise UserError(f"--timeout-s: must be > 0, got {args.timeout_s:g}")
    if args.local:
        for flag, value in (("--site", args.site), ("--node-rank", args.node_rank), ("--master", args.master)):
            if value is not None:
                raise UserError(f"{flag}: not used with --local (every site runs on this machine)")
        return launch_local(args.topology, cmd, master_port=args.master_port, timeout_s=args.timeout_s,
                            backend=args.backend)
    missing = [f for f, v in (("--site", args.site), ("--node-rank", args.node_rank), ("--master", args.master))
               if v is None]
    if missing:
        raise UserError(f"launch: {', '.join(missing)} required on real sites (or use --local)")
    return launch_site(args.topology, args.site, args.node_rank, args.master, cmd,
                       nodes_per_site=args.nodes_per_site, timeout_s=args.timeout_s, backend=args.backend,
                       dry_run=args.dry_run)
