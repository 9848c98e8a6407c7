"""Core CLI commands: `hdc topology show|validate` and `hdc plan`."""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager

from hdc.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    top = sub.add_parser("topology", help="show or validate a topology (file or preset)")
    tsub = top.add_subparsers(dest="action", metavar="ACTION")
    tsub.required = True
    for action, help_ in (("show", "print a topology's sites, tiers and WAN links"),
                          ("validate", "check a topology file; exit 0 if valid, 2 with the field otherwise")):
        p = tsub.add_parser(action, help=help_, description=help_)
        p.add_argument("topology", metavar="PATH|PRESET",
                       help="a topology YAML file or a preset name (hdc topology list)")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(handler=_topology)
    lst = tsub.add_parser("list", help="list the topology presets")
    lst.set_defaults(handler=_topology_list)

    p = sub.add_parser("plan", help="print a strategy's plan with alpha-beta time per step",
                       description="Build the plan a strategy makes for one gradient buffer and print "
                                   "each step with its closed-form alpha-beta time.")
    p.add_argument("--topology", required=True, metavar="PATH|PRESET", help="topology file or preset")
    add_strategy_args(p)
    p.add_argument("--size", required=True, help="buffer size per rank, e.g. 1GiB, 64MiB")
    p.add_argument("--element-size", type=int, default=4, choices=(2, 4),
                   help="bytes per element (2 = bf16, 4 = fp32; default 4)")
    p.add_argument("--workload", metavar="PATH|PRESET", default=None,
                   help="use this workload's data-parallel groups (default: one group of all GPUs)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(handler=_plan)


def add_strategy_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """The strategy flags, generated from the strategy registry: --strategy NAME and one flag
    per knob of any registered strategy (a knob the chosen strategy does not take is an error)."""
    from hdc.strategies import STRATEGY_NAMES, knobs

    p.add_argument("--strategy", required=required, choices=STRATEGY_NAMES, help="communication strategy")
    for name, k in knobs().items():
        flag = "--" + name.replace("_", "-")
        text = f"{k['help']} (default {', '.join(f'{s}: {d!r}' for s, d in k['defaults'].items())})"
        if k["type"] is bool:
            p.add_argument(flag, dest=f"knob_{name}", action=argparse.BooleanOptionalAction, default=None,
                           help=text)
        else:
            p.add_argument(flag, dest=f"knob_{name}", default=None, metavar=name.upper(), type=_yaml_value,
                           help=text)


def _yaml_value(text: str):
    """A flag value as YAML would read it (numbers, booleans, names, mappings for --inner)."""
    from hdc.config import yaml_value

    try:
        return yaml_value(text, "flag value")
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None


def strategy_knobs(args: argparse.Namespace) -> dict:
    """{knob: value} for the knob flags given on the command line."""
    return {k[len("knob_"):]: v for k, v in vars(args).items() if k.startswith("knob_") and v is not None}


def strategy_from_args(args: argparse.Namespace):
    from hdc.strategies import strategy_from_dict

    return strategy_from_dict({"name": args.strategy, **strategy_knobs(args)})


LARGE_GPUS = 65_536  # from here on a command says what it is doing (2^20 GPUs take minutes)


@contextmanager
def announce_large(command: str, topology, what: str):
    """On a topology of LARGE_GPUS or more, one line on stderr before `what` starts and one with
    its time when it ends: minutes of silence otherwise."""
    if topology.num_gpus < LARGE_GPUS:
        yield
        return
    print(f"{command}: {topology.num_gpus:,} GPUs in {len(topology.sites)} site(s): {what} "
          f"(large topologies take minutes) ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    print(f"{command}: done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


def positive_int(flag: str, most: int | None = None):
    """An argparse type: an integer >= 1 (and <= `most`); the message names what is allowed."""
    allowed = "an integer >= 1" + (f" and <= {most}" if most is not None else "")

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        if v < 1 or (most is not None and v > most):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {v}")
        return v
    return parse


# Processes one command may start on this machine (`--jobs`, `--nproc`): more is a typo, and
# 10,000 would exhaust the machine before any work is done.
MAX_LOCAL_PROCESSES = 64


def _topology(args: argparse.Namespace) -> int:
    from hdc.config import to_dict
    from hdc.topology import load_topology

    topo = load_topology(args.topology)
    if args.action == "validate":
        print(f"ok: {topo.name} ({topo.num_gpus} GPUs in {len(topo.sites)} site(s))")
        return 0
    if args.json:
        print(json.dumps(to_dict(topo), indent=2))
    else:
        width = max(len(k) for k, _ in topo.summary())
        for k, v in topo.summary():
            print(f"{k:<{width}}  {v}")
        for a in topo.assumptions:
            print(f"- {a}")
    return 0


def _topology_list(args: argparse.Namespace) -> int:
    from hdc.topology import load_topology, preset_names

    for name in preset_names():
        t = load_topology(name)
        print(f"{name:<20} {t.num_gpus:>6} GPUs  {len(t.sites)} site(s)")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from hdc import cost
    from hdc.placement import place
    from hdc.topology import load_topology
    from hdc.units import UnitError, fmt_bytes, fmt_time, parse_size
    from hdc.workload import load_workload

    topo = load_topology(args.topology)
    try:
        size = parse_size(args.size)
    except UnitError as e:
        raise UserError(f"--size: {e}") from None
    if size < args.element_size:
        raise UserError(f"--size: must be at least one element ({args.element_size} bytes), got {args.size!r}")
    groups = None
    if args.workload:
        groups = place(topo, load_workload(args.workload).parallel).dp_groups()
    with announce_large("plan", topo, "building the plan and its alpha-beta costs"):
        plan = strategy_from_args(args).plan(topo, groups, size // args.element_size, args.element_size)
        times = {s.id: cost.step_time_s(topo, plan, s) for s in plan.steps}
        total = cost.plan_time_s(topo, plan)
        wan_total, wan_rank = cost.wan_bytes(topo, plan)
    if args.json:
        out = plan.to_dict()
        for s in out["steps"]:
            s["alpha_beta_s"] = times[s["id"]]
        out["alpha_beta_total_s"] = total
        out["wan_bytes_total"] = wan_total
        out["wan_bytes_per_rank_max"] = wan_rank
        print(json.dumps(out))
        return 0
    print(f"plan: {plan.strategy} on {topo.name}, {fmt_bytes(size)} per rank, "
          f"{len(plan.ranks)} ranks, {len(plan.steps)} steps")
    print(f"{'id':>4} {'op':<15} {'label':<13} {'tier':<11} {'groups':>6} {'size':>5} {'bytes':>11} "
          f"{'deps':<10} {'alpha-beta':>11}")
    for s in plan.steps:
        deps = ",".join(map(str, s.deps)) or "-"
        extra = (f" every {s.period}" + (f" at +{s.offset}" if s.offset else "") if s.period > 1 else "") + (f" after {s.trigger}" if s.trigger else "")
        print(f"{s.id:>4} {s.op:<15} {s.label:<13} {s.tier:<11} {len(s.groups):>6} "
              f"{max(len(g) for g in s.groups):>5} {fmt_bytes(plan.step_bytes(s)):>11} {deps:<10} "
              f"{fmt_time(times[s.id]):>11}{extra}")
    print(f"alpha-beta critical path: {fmt_time(total)}; WAN bytes per rank (max): {fmt_bytes(wan_rank)}, "
          f"total: {fmt_bytes(wan_total)}")
    return 0
