"""`hdc simulate`: predict one training step of a workload on a topology with a strategy."""
from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    from hdc.commands import add_strategy_args

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
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--timeline", metavar="OUT.json", default=None,
                   help="write per-rank spans (kind, start_s, end_s) for a Gantt chart")
    p.set_defaults(handler=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    from hdc.commands import strategy_from_args
    from hdc.errors import UserError
    from hdc.topology import load_topology
    from hdc.workload import load_workload
    from simulator import SimConstants, calibrate_compute_efficiency, simulate, single_site

    topo, work = load_topology(args.topology), load_workload(args.workload)
    strategy = strategy_from_args(args)
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
    result = simulate(topo, work, strategy, constants, baseline=not args.no_baseline,
                      timeline=args.timeline is not None)
    if args.calibrate_mfu is not None:
        result.assumptions.insert(0, f"compute efficiency calibrated so the same GPUs in one site reach "
                                     f"MFU {args.calibrate_mfu:.1%}")
    if args.timeline:
        try:
            with open(args.timeline, "w", encoding="utf-8") as fh:
                json.dump(result.timeline(), fh)
        except OSError as e:
            raise UserError(f"--timeline: cannot write {args.timeline}: {e.strerror}") from None
    print(result.to_json() if args.json else result.format())
    return 0
