"""One simulator prediction as a flat row (for sweeps, the report and CSVs)."""
from __future__ import annotations

from typing import Any

from hdc.config import from_dict


def constants_from(sim: dict):
    from simulator import SimConstants

    return from_dict(SimConstants, sim or {}, "sim")


def result_row(result) -> dict[str, Any]:
    b = result.breakdown
    wan = result.tiers.get("wan")
    return {
        "step_time_s": result.step_time_s, "mfu": result.mfu, "scaling_efficiency": result.scaling_efficiency,
        "single_site_step_time_s": result.single_site_step_time_s, "tokens_per_s": result.tokens_per_s,
        "compute_s": b.compute_s, "tp_exposed_s": b.tp_exposed_s, "pp_exposed_s": b.pp_exposed_s,
        "dp_exposed_s": b.dp_exposed_s, "bubble_s": b.bubble_s, "optimizer_s": b.optimizer_s,
        "wan_bytes": wan.bytes if wan else 0.0, "wan_utilization": wan.utilization if wan else 0.0,
        "memory_per_gpu_bytes": result.memory.total_bytes, "fits": result.fits, "strategy_desc": result.strategy,
    }


def simulate_row(parts: dict, cache=None) -> dict[str, Any]:
    from simulator import simulate

    result = simulate(parts["topology"], parts["workload"], parts["strategy"], constants_from(parts["sim"]),
                      faults=parts.get("faults"), cache=cache)
    return result_row(result)
