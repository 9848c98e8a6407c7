"""CLI of the emulation: `hdc emulate up|down|status|run` and `hdc validate`.

Wire it with `experiments.emulate.cli:register`. Handlers return exit codes; user mistakes
raise UserError (one line, exit 2); everything that builds namespaces needs root.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from hdc.errors import UserError
from hdc.units import parse_bandwidth, parse_time
from experiments.emulate.spec import effective_topology, parse_list


def register(sub: argparse._SubParsersAction) -> None:
    em = sub.add_parser("emulate", help="emulated sites on this machine (network namespaces + WAN delay)",
                        description="Build one network namespace per site of a topology, joined by a WAN "
                                    "with the topology's one-way delay and bandwidth; run ranks inside.")
    esub = em.add_subparsers(dest="action", metavar="ACTION")
    esub.required = True
    p = esub.add_parser("up", help="create the sites and the WAN between them (root)")
    _topology_args(p, required=True)
    p.add_argument("--mode", choices=("auto", "delayline", "netem", "direct"), default="auto",
                   help="WAN delay by the userspace delay line, by netem (if the kernel has it), or "
                        "none ('direct' veth); auto: netem if present, else the delay line")
    p.add_argument("--mtu", type=int, default=9000, help="MTU of the WAN devices in bytes (default 9000)")
    p.add_argument("--sysctl", action="append", default=[], metavar="KEY=VALUE",
                   help="a sysctl to set in every site namespace (repeatable), e.g. "
                        "net.ipv4.tcp_congestion_control=cubic")
    p.set_defaults(handler=_up)
    p = esub.add_parser("down", help="remove everything `up` made (idempotent)")
    _prefix_arg(p)
    p.set_defaults(handler=_down)
    p = esub.add_parser("status", help="show the emulated sites, the WAN and the delay line")
    _prefix_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--check", action="store_true", help="also measure the UDP RTT from site 0 to each site")
    p.set_defaults(handler=_status)
    p = esub.add_parser("run", help="run CMD once per rank, each inside its site's namespace",
                        description="Start one process per rank of the emulated topology inside its "
                                    "site's namespace with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, "
                                    "MASTER_PORT, GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME, HDC_TOPOLOGY, "
                                    "HDC_SITE set. Usage: hdc emulate run [--topology T] -- CMD ...")
    _topology_args(p, required=False)
    p.add_argument("--timeout-s", type=float, default=3600.0, help="stop every rank after this long")
    p.add_argument("--master-port", type=int, default=None, help="rendezvous port (default: picked)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command and its arguments")
    p.set_defaults(handler=_run)

    from experiments.emulate.validate import add_validate_args

    v = sub.add_parser("validate", help="measured collectives on emulated sites vs the simulator's prediction",
                       description="For each (strategy, size): time the real executor's sync under emulation "
                                   "(median and spread over repeats, warm-up excluded), the simulator's "
                                   "prediction from calibrated constants, and the alpha-beta bound; CSV out.")
    _topology_args(v, required=False, sweep=True)  # required unless --recompute
    add_validate_args(v)
    v.set_defaults(handler=_validate)


def _prefix_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prefix", default="hdc", help="name prefix of namespaces/devices (default hdc)")


def _topology_args(p: argparse.ArgumentParser, required: bool, sweep: bool = False) -> None:
    p.add_argument("--topology", required=required, metavar="PATH|PRESET", help="topology file or preset")
    if sweep:
        p.add_argument("--one-way-delays", default=None, metavar="LIST",
                       help="override every WAN link's one-way delay; a comma list sweeps, e.g. 1ms,10ms,20ms")
        p.add_argument("--bandwidths", default=None, metavar="LIST",
                       help="override every WAN link's bandwidth; a comma list sweeps, e.g. 100Mbps,1Gbps")
    else:
        p.add_argument("--one-way-delay", default=None, help="override every WAN link's one-way delay, e.g. 10ms")
        p.add_argument("--bandwidth", default=None,
                       help="override every WAN link's bandwidth, e.g. 100Mbps; 'unlimited' = no shaping")
    p.add_argument("--ranks-per-site", type=int, default=None, help="override: every site one node of N ranks")
    _prefix_arg(p)


def _single(args, name: str, parse):
    return parse_list(getattr(args, name), parse, "--" + name.replace("_", "-"))[0]


def _up(args: argparse.Namespace) -> int:
    from experiments.emulate import netns
    from experiments.emulate.spec import build_spec, write_topology

    netns.require_root()
    bw = _single(args, "bandwidth", parse_bandwidth)
    topo = effective_topology(args.topology, _single(args, "one_way_delay", parse_time), bw, args.ranks_per_site)
    if not 1280 <= args.mtu <= 65535:
        raise UserError(f"--mtu: must be in 1280..65535, got {args.mtu}")
    sysctl = {}
    for kv in args.sysctl:
        if "=" not in kv:
            raise UserError(f"--sysctl {kv!r}: expected KEY=VALUE")
        k, v = kv.split("=", 1)
        sysctl[k] = v
    mode = netns.resolve_mode(args.mode)
    spec = build_spec(topo, prefix=args.prefix, mode=mode, mtu_bytes=args.mtu)
    spec.extra = {"shaped": bw != "unlimited", "sysctl": sysctl}
    netns.up(spec, shape_bandwidth=bw != "unlimited")
    spec.extra["topology_file"] = write_topology(topo, os.path.join(spec.state_dir, "topology.yaml"))
    netns._write_state(spec)
    print(f"up: {len(spec.sites)} sites of {topo.name} ({mode}), {topo.num_gpus} ranks")
    _print_spec(spec)
    return 0


def _down(args: argparse.Namespace) -> int:
    from experiments.emulate import netns
    from experiments.emulate.spec import check_prefix

    netns.down(check_prefix(args.prefix))
    return 0


def _print_spec(spec) -> None:
    for s in spec.sites:
        ranks = [r for r, i in enumerate(spec.ranks_site) if i == s.index]
        print(f"  site {s.name:<12} netns {s.netns:<20} {s.dev:<9} {s.addr:<11} ranks {ranks}")
    shaped = spec.extra.get("shaped", True)
    for a in spec.sites:
        for b in spec.sites:
            if a is not b:
                bw = f"{spec.bandwidth_Bps[a.index][b.index] * 8 / 1e6:g} Mbit/s" if shaped else "unshaped"
                d = "no delay (direct)" if spec.mode == "direct" else \
                    f"one way {spec.one_way_s[a.index][b.index] * 1e3:g} ms"
                print(f"  {a.name} -> {b.name}: {d}, {bw}")


def _status(args: argparse.Namespace) -> int:
    from experiments.emulate import netcheck, netns
    from experiments.emulate.spec import check_prefix

    netns.require_root()
    st = netns.status(check_prefix(args.prefix))
    spec = netns.read_state(args.prefix)
    if args.check and spec is not None and netns.is_up(args.prefix):
        st["rtt_ms"] = {s.name: [round(x * 1e3, 3) for x in netcheck.udp_rtt_s(spec, 0, s.index, count=10)]
                        for s in spec.sites[1:]}
    if args.json:
        print(json.dumps(st, indent=1))
        return 0
    if not st["namespaces"] and st["spec"] is None:
        print(f"nothing is up (prefix {args.prefix})")
        return 0
    up = netns.is_up(args.prefix)
    print(f"{'up' if up else 'PARTIAL (run `hdc emulate down`)'}: prefix {args.prefix}, "
          f"mode {spec.mode if spec else '?'}, topology {spec.topology_name if spec else '?'}")
    print(f"  namespaces: {', '.join(st['namespaces']) or '-'}; delay line pid(s): "
          f"{', '.join(map(str, st['delayline_pids'])) or '-'}")
    if spec:
        _print_spec(spec)
    dl = st["delayline_stats"]
    if dl:
        print(f"  delay line: {dl['forwarded_packets']} packets, {dl['forwarded_bytes'] / 1e6:.1f} MB forwarded, "
              f"{dl['dropped_packets']} dropped, mean lateness {dl['mean_lateness_s'] * 1e6:.0f} us, "
              f"CPU {dl['cpu_user_s'] + dl['cpu_system_s']:.2f} s")
    for name, rtts in st.get("rtt_ms", {}).items():
        print(f"  UDP RTT to {name}: {sorted(rtts)[len(rtts) // 2] if rtts else 'lost'} ms (median of {len(rtts)})")
    return 0


def project_python(cmd: list[str]) -> list[str]:
    """`python` (or python3) means this project's interpreter, the one with hdc and torch, not the system's."""
    return [sys.executable, *cmd[1:]] if cmd[:1] in (["python"], ["python3"]) else list(cmd)


def _run(args: argparse.Namespace) -> int:
    from experiments.emulate import launch, netns
    from experiments.emulate.spec import build_spec

    netns.require_root()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise UserError("emulate run: give the command after --, e.g. hdc emulate run -- python train.py")
    cmd = project_python(cmd)
    spec = netns.read_state(args.prefix)
    if spec is None or not netns.is_up(args.prefix):
        raise UserError(f"emulate run: nothing is up for prefix {args.prefix!r}; run `hdc emulate up --topology ...` first")
    if args.topology:
        bw = _single(args, "bandwidth", parse_bandwidth)
        want = build_spec(effective_topology(args.topology, _single(args, "one_way_delay", parse_time), bw,
                                             args.ranks_per_site), prefix=args.prefix, mode=spec.mode)
        if (want.ranks_site, want.one_way_s) != (spec.ranks_site, spec.one_way_s) or \
                (spec.extra.get("shaped", True) and want.bandwidth_Bps != spec.bandwidth_Bps):
            raise UserError(f"--topology {args.topology}: differs from what is up ({spec.topology_name}); "
                            f"run `hdc emulate up` with it first")
    procs = launch.start_ranks(spec, cmd, spec.extra["topology_file"], args.master_port)
    old = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        rc = launch.wait_ranks(procs, args.timeout_s)
    finally:
        signal.signal(signal.SIGTERM, old)
        launch.stop(procs)
    if rc:
        print(f"emulate run: a rank exited with status {rc}", file=sys.stderr)
    return rc


def _validate(args: argparse.Namespace) -> int:
    from experiments.emulate.validate import run_validate

    return run_validate(args)
