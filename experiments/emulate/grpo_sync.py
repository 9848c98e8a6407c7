"""A GRPO step's gradient sync under emulation beside its prediction: the pieces of
benchmarks/emulated_grpo.py that need no root (tests/test_emulated_grpo_unit.py)."""
from __future__ import annotations

import statistics

# Strategies whose sync is `bucketed` over size-capped buckets (chunked buckets by chunk and
# pipelines its chunks; the distributed optimizer adds a parameter phase: not predicted here).
STRATEGIES = ("flat_ring", "hierarchical")
MEASURED = {"sync_ms": "time/sync_s", "skew_ms": "time/sync_skew_s", "collective_ms": "time/sync_collective_s"}
PREDICTED = ("calibrated_ms", "uncalibrated_ms", "bound_ms")


def model_buckets(model, bucket_cap_bytes: int) -> tuple[list[int], int]:
    """(bucket numels, element size) as the trainer's DistGradientSync forms them
    (hdc.sync.bucket_numels over the trainable parameters, reverse registration order)."""
    from hdc.sync import bucket_numels

    params = list(reversed([p for p in model.parameters() if p.requires_grad]))
    esize = params[0].element_size()
    return bucket_numels([p.numel() for p in params], max(bucket_cap_bytes // esize, 1)), esize


def predict(topology, calibration, strategy_name: str, numels: list[int], esize: int) -> dict:
    """The trainer's gradient plan timed alone: calibrated (validate's model), uncalibrated, bound (ms)."""
    from hdc.cost import plan_time_s
    from hdc.strategies import make_strategy
    from hdc.sync import bucket_plans
    from experiments.emulate.calibrate import model_for
    from experiments.emulate.executor import predict_s
    from simulator.collectives import simulate_plan
    from simulator.network import Routes

    strategy, dp = make_strategy(strategy_name), [list(range(topology.num_gpus))]
    wire = {4: "fp32", 2: "bf16"}[esize]
    plan = bucket_plans(strategy, topology, dp, numels, wire).plan
    model_topo, pipeline = model_for(topology, calibration)
    calibrated, model = predict_s(model_topo, bucket_plans(strategy, model_topo, dp, numels, wire).plan, pipeline)
    uncalibrated = max((end for _, end in simulate_plan(Routes(topology), plan).values()), default=0.0)
    return {"plan": plan.strategy, "plan_steps": len(plan.steps), "model": model, "calibrated_ms": calibrated * 1e3,
            "uncalibrated_ms": uncalibrated * 1e3, "bound_ms": plan_time_s(topology, plan) * 1e3}


def summarize(rows: list[dict], alone_s: list[float], prediction: dict) -> dict:
    """Per measured quantity (ms) the median over steps 2..N (all steps when there is one), the
    median of the plan timed alone, the predictions, and each measurement over the calibrated one."""
    steady = rows[1:] or rows
    out = {k: statistics.median(r[metric] for r in steady) * 1e3 for k, metric in MEASURED.items()}
    out["alone_ms"] = statistics.median(alone_s) * 1e3
    out.update({k: prediction[k] for k in PREDICTED})
    for k in ("sync", "collective", "alone"):
        out[f"{k}_over_calibrated"] = out[f"{k}_ms"] / prediction["calibrated_ms"]
    out["steps"] = [r["step"] for r in steady]
    return out
