"""`hdc simulate`: predict one training step of a workload on a topology with a strategy."""
from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from hdc.commands import add_strategy_args, positive_int

    p = sub.add_parser("simulate", help="predict a training step (time, MFU, scaling efficiency, links, memory)",
                       description="Simulate one training step in SimPy over the topology's network: "
                                   "pipeline compute, TP/PP/DP communication as the strategy's plan "
                                   "sends it, the optimizer; prints the breakdown and its assumptions.")
    p.add_argument("--topology", required=True, metavar="PATH|PRESET", help="topology file or preset")
    p.add_argument("--workload", required=True, metavar="PATH|PRESET", help="workload file or preset")
    add_strategy_args(p)
    p.add_argument("--compute-efficiency", type=float, default=None,
                   help="achieved fraction of peak FLOP/s (default: the SimConstants default)")
    p.add_argument("--calibrate-mfu", type=float, default=None, metavar="MFU",
                   help="first pick the compute efficiency at which the same GPUs in one site reach "
                        "this MFU (e.g. 0.51), then simulate")
    p.add_argument("--no-baseline", action="store_true", help="skip the single-site run (no scaling efficiency)")
    f = p.add_argument_group("faults (the single-site baseline stays healthy)")
    f.add_argument("--slow-gpu", metavar="FACTOR[@STAGE]", default=None,
                   help="one GPU computes FACTOR times slower (>= 1), in pipeline STAGE (default 0)")
    f.add_argument("--slow-site", metavar="NAME=FACTOR", default=None,
                   help="every GPU of site NAME computes FACTOR times slower")
    f.add_argument("--wan-bandwidth-factor", type=float, default=1.0, metavar="F",
                   help="fraction of nominal bandwidth every WAN link delivers, in (0, 1]")
    f.add_argument("--wan-links-failed", type=int, default=0, metavar="N",
                   help="parallel links down on every WAN connection (traffic fails over)")
    p.add_argument("--require-fit", action="store_true",
                   help="exit 2 when the peak memory estimate exceeds the GPU's memory (default: a warning)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--timeline", metavar="OUT.json", default=None,
                   help="write per-rank spans (kind, start_s, end_s) for a Gantt chart")
    p.set_defaults(handler=_simulate)

    r = sub.add_parser("simulate-rl", help="predict a GRPO step across sites (generation, training, weight push)",
                       description="Simulate one GRPO step: where rollouts are generated, where the policy "
                                   "trains and how new weights reach the generators (colocated, split, or "
                                   "async K steps ahead); prints the phases, GPU-busy fractions per site, "
                                   "tokens/s and bytes per link tier.")
    r.add_argument("--topology", required=True, metavar="PATH|PRESET", help="topology file or preset")
    r.add_argument("--workload", required=True, metavar="PATH|PRESET",
                   help="RL workload file or preset (the files of workloads/rl/, e.g. deepscaler-1.5b)")
    add_strategy_args(r, required=False)
    r.add_argument("--placement", choices=("colocated", "split", "async"), default="colocated",
                   help="colocated: every GPU generates then trains; split: --generators generate, the rest "
                        "train; async: split with generation --async-steps ahead")
    r.add_argument("--generators", metavar="SITE[,SITE]|FRACTION", default=None,
                   help="split/async: the sites that generate, or the fraction of every site's nodes")
    r.add_argument("--async-steps", type=positive_int("--async-steps"), default=1, metavar="K",
                   help="async: generation runs K steps ahead of training (default 1)")
    r.add_argument("--push-wire", choices=("bf16", "int8"), default="bf16",
                   help="weight push format: bf16 weights or int8 deltas (default bf16)")
    r.add_argument("--json", action="store_true", help="print the result as one JSON object")
    r.add_argument("--timeline", metavar="OUT.json", default=None,
                   help="write the simulated steps' spans (group, phase, step, start_s, end_s)")
    r.set_defaults(handler=_simulate_rl)


def _simulate_rl(args: argparse.Namespace) -> int:
    from hdc.commands import strategy_from_args
    from simulator.rl import placement_from_args, simulate_rl

    if args.strategy is None:
        args.strategy = "hierarchical"
    result = simulate_rl(args.topology, args.workload,
                         placement_from_args(args.placement, args.generators, args.async_steps, args.push_wire),
                         strategy_from_args(args))
    if args.timeline:
        _write_json(args.timeline, result.timeline())
    print(result.to_json() if args.json else result.format())
    return 0


def _write_json(path: str, data) -> None:
    from hdc.errors import UserError

    try:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
    except OSError as e:
        raise UserError(f"--timeline: cannot write {path}: {e.strerror}") from None


def _simulate(args: argparse.Namespace) -> int:
    from hdc.commands import announce_large, strategy_from_args
    from hdc.errors import UserError
    from hdc.topology import load_topology
    from hdc.workload import load_workload
    from simulator import SimConstants, calibrate_compute_efficiency, simulate, single_site

    topo, work = load_topology(args.topology), load_workload(args.workload)
    strategy = strategy_from_args(args)
    faults = faults_from_args(args)  # every flag checked before the calibration simulates anything
    constants = SimConstants()
    if args.compute_efficiency is not None:
        if not 0 < args.compute_efficiency <= 1:
            raise UserError(f"--compute-efficiency: must be in (0, 1], got {args.compute_efficiency}")
        constants = constants.with_(compute_efficiency=args.compute_efficiency)
    if args.calibrate_mfu is not None:
        if not 0 < args.calibrate_mfu < 1:
            raise UserError(f"--calibrate-mfu: must be in (0, 1), got {args.calibrate_mfu}")
        one = topo if len(topo.sites) == 1 else single_site(topo)
        constants = constants.with_(compute_efficiency=calibrate_compute_efficiency(
            one, work, strategy, args.calibrate_mfu, constants))
    parts = "one step" + ("" if args.no_baseline or len(topo.sites) == 1 else " and its single-site baseline")
    with announce_large("simulate", topo, f"simulating {parts}"):
        result = simulate(topo, work, strategy, constants, baseline=not args.no_baseline,
                          timeline=args.timeline is not None, faults=faults)
    warning = result.fit_warning()
    if warning and args.require_fit:
        raise UserError(f"--require-fit: {warning.removeprefix('warning: ')}")
    if warning:
        print(warning, file=sys.stderr)
    if args.calibrate_mfu is not None:
        result.assumptions.insert(0, f"compute efficiency calibrated so the same GPUs in one site reach "
                                     f"MFU {args.calibrate_mfu:.1%}")
    if args.timeline:
        _write_json(args.timeline, result.timeline())
    print(result.to_json() if args.json else result.format())
    return 0


def faults_from_args(args: argparse.Namespace):
    """The --slow-gpu/--slow-site/--wan-* flags as a validated Faults object."""
    from hdc.config import from_dict
    from hdc.errors import UserError
    from simulator import Faults

    data: dict = {"wan_bandwidth_factor": args.wan_bandwidth_factor, "wan_links_failed": args.wan_links_failed}
    try:
        if args.slow_gpu:
            factor, _, stage = args.slow_gpu.partition("@")
            data["slow_gpu_factor"] = float(factor)
            data["slow_gpu_stage"] = int(stage) if stage else 0
        if args.slow_site:
            name, sep, factor = args.slow_site.partition("=")
            if not sep or not name:
                raise ValueError
            data["slow_site"], data["slow_site_factor"] = name, float(factor)
    except ValueError:
        raise UserError("--slow-gpu takes FACTOR[@STAGE] (e.g. 1.2@3); --slow-site takes NAME=FACTOR "
                        "(e.g. dc-b=1.1)") from None
    try:
        return from_dict(Faults, data)
    except UserError as e:
        flag = {"wan_bandwidth_factor": "--wan-bandwidth-factor", "wan_links_failed": "--wan-links-failed",
                "slow_gpu_factor": "--slow-gpu", "slow_gpu_stage": "--slow-gpu", "slow_site_factor": "--slow-site"}
        msg = str(e)
        for field_name, flag_name in flag.items():
            msg = msg.replace(f"{field_name}:", f"{flag_name}:")
        raise UserError(msg) from None
