"""Data-parallel GRPO against single-process GRPO: the same recipe, seed and global batch,
with per-prompt seeded rollouts, must give the same losses and final weights (used by
tests/test_trainer_dp.py; runs inside `spawn_world`)."""
from __future__ import annotations

import math
from pathlib import Path

import torch

TIER = {"latency": "20us", "bandwidth": "2GB/s"}


def topology(sites: int, per_site: int):
    from hdc.topology import topology_from_dict

    names = [f"site-{chr(97 + i)}" for i in range(sites)]
    return topology_from_dict({
        "name": f"dp-{sites}x{per_site}", "sites": [{"name": n, "nodes": 1, "gpus_per_node": per_site,
                                                   "intra_node": TIER, "intra_pod": TIER} for n in names],
        "wan": [{"sites": [a, b], "rtt": "1ms", "bandwidth": "1Gbps"} for a, b in zip(names, names[1:])]})


def grpo_args(out: str, world: int, **kw):
    from trainer.config import GRPOConfig

    base = dict(output_dir=out, learning_rate=1e-3, num_generations=4, per_device_train_batch_size=16 // world,
                gradient_accumulation_steps=2, max_completion_length=16, max_steps=3, save_steps=100, seed=3,
                loss_type="dr_grpo", beta=0.04, deterministic_rollouts=True, torch_num_threads=1)
    return GRPOConfig(**{**base, **kw})


def build(rank: int, world: int, assets_root: str, out: str, strategy, sites: int, extra: dict,
          shard_within_site: bool = False):
    """The GRPOTrainer of this process (a world of `world`, or alone when world == 1); with
    `shard_within_site`, FSDP2 shards the model inside each site (HSDPGradientSync); `extra`
    holds GRPOConfig fields, and `lora` (LoraSpec fields) to train adapters."""
    from trainer.data import load_jsonl
    from trainer.grpo import GRPOTrainer
    from trainer.lora import LoraSpec

    extra = dict(extra)
    lora = extra.pop("lora", None)

    sync = None
    if world > 1:
        from hdc.strategies import strategy_from_dict
        from trainer.distributed.grad_sync import DistGradientSync
        from trainer.distributed.hsdp import HSDPGradientSync

        # a name gets these knobs where it takes them; a mapping is the whole strategy
        spec = strategy if isinstance(strategy, dict) else {"name": strategy, "chunks": 3, "every": 2, "fragments": 2}
        topo, chosen = topology(sites, world // sites), strategy_from_dict(spec, lenient=True)
        sync = (HSDPGradientSync(topo, chosen, micro_batches=2, timeout_s=60) if shard_within_site else
                DistGradientSync(topo, chosen, micro_batches=2, bucket_cap_bytes=200_000, timeout_s=60))
    root = Path(assets_root)
    # length varies within every group, so every step has a gradient (accuracy alone may be all-equal)
    return GRPOTrainer(model=str(root / "sft"), reward_funcs=["accuracy", "format", "length"],
                       args=grpo_args(out, world, **extra), train_dataset=load_jsonl(str(root / "data" / "train.jsonl")),
                       grad_sync=sync, lora=None if lora is None else LoraSpec(**lora))


def run(rank: int, world: int, assets_root: str, out: str, strategy, sites: int, extra: dict,
        shard_within_site: bool = False) -> dict:
    """Train a few steps in this process (see build)."""
    trainer = build(rank, world, assets_root, out, strategy, sites, extra, shard_within_site)
    sync = trainer.grad_sync
    losses, divergence, rewards, wan_bytes, wan_plan, wan_grad = [], [], [], [], [], []
    plans = getattr(sync, "plans", None)  # a multi-process sync's plan (LocalSync has none)
    while trainer.step < trainer.args.max_steps:
        if plans is not None:
            sync.last_param_spans = []
            update = trainer.updates
        m = trainer.train_step()
        trainer.step += 1
        losses.append(m["loss"])
        rewards.append(m["rewards/total/mean"])
        divergence.append(getattr(sync, "last_divergence", None))
        if plans is not None:  # cross-site bytes of the parameter sync: measured by the executor, and the plan's
            plan = plans.plan
            wan_bytes.append(sum(sp["bytes"] for sp in sync.last_param_spans if sp["tier"] == "wan"))
            wan_grad.append(sum(wire_bytes(sp) for sp in sync.last_spans if sp["tier"] == "wan"))
            wan_plan.append(sum(n * plan.wire_bytes(st) for st in plans.param_steps  # completed this update
                                if st.tier == "wan" and update >= st.lag and st.active(update - st.lag)
                                for g, (_, n) in zip(st.groups, st.regions) if rank in g))
    # numpy, not tensors: torch would pass tensors through shared memory that dies with the process
    from transformers import AutoModelForCausalLM

    from trainer.lora import export_state_dict

    weights = {k: v.detach().numpy().copy() for k, v in export_state_dict(trainer.model).items()}
    start = {k: v.numpy() for k, v in AutoModelForCausalLM.from_pretrained(trainer.model_path).state_dict().items()}
    moved = max(float(abs(weights[k] - start[k]).max()) for k in start)
    return {"losses": losses, "weights": weights if rank == 0 else None, "divergence": divergence, "moved": moved,
            "rewards": rewards, "wan_param_bytes": wan_bytes, "wan_param_bytes_plan": wan_plan,
            "wan_grad_bytes": wan_grad, "plan_numel": None if plans is None else plans.plan.numel,
            "trainable_numel": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "optimizer_state_bytes": sum(v.numel() * v.element_size() for st in trainer.optimizer.state.values()
                                         for k, v in st.items() if torch.is_tensor(v) and k != "step")}


def differences(reference: dict, results: list[dict]) -> list[str]:
    """Where a multi-process run departs from the single-process one (`single`): any rank's
    losses beyond 1e-5 relative (1e-7 absolute), or final weights beyond 1% of the largest
    update training made (Adam turns summation-order noise in near-zero gradients into steps of
    up to lr, so a bare relative bound on weights means nothing). Empty when they match."""
    out = []
    for r in results:
        for i, (a, b) in enumerate(zip(r["losses"], reference["losses"])):
            if not math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7):
                out.append(f"loss at step {i + 1}: {a!r} vs {b!r}")
    bound = 0.01 * reference["moved"]
    for name, w in reference["weights"].items():
        diff = float(abs(results[0]["weights"][name] - w).max())
        if diff > bound:
            out.append(f"{name}: differs by {diff:.2e} > 1% of the largest update ({reference['moved']:.2e})")
    return out


def wire_bytes(span: dict) -> float:
    """Bytes one member of a span's group sends for it (a ring's): the region's bytes x (p-1)/p,
    twice for an all-reduce."""
    p = len(span["group"])
    return span["bytes"] * (p - 1) / p * (2 if span["op"] == "all_reduce" else 1)


def single(assets_root: str, out: str, extra: dict) -> dict:
    torch.set_num_threads(1)
    return run(0, 1, assets_root, out, "flat_ring", 1, extra)
