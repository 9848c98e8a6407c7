"""One plan for both executors: the simulator's step model and the trainer's DistGradientSync
take their data-parallel plan from hdc.sync.sync_plans, so for every registered strategy on
every preset they receive the same plan, step for step and byte for byte."""
import math

import pytest
import torch

from hdc.placement import place
from hdc.strategies import REGISTRY, strategy_from_dict
from hdc.sync import bucket_numels, sync_plans
from hdc.topology import load_topology, preset_names
from hdc.workload import load_workload, workload_from_dict
from simulator.step import dp_plan, run_step
from simulator.model import SimConstants
from trainer.distributed.grad_sync import model_sync_plans

TINY = {"model": {"name": "tiny", "layers": 4, "hidden": 256, "heads": 4, "kv_heads": 4, "ffn": 1024,
                  "vocab": 1000, "seq_len": 128},
        "parallel": {"tp": 1, "pp": 1, "global_batch_size": 24}, "bucket_numel": 300_000, "grad_bytes": 4,
        "param_bytes": 4}


def strategies():
    """Every registered strategy with its defaults, plus the variants that plan differently."""
    out = [strategy_from_dict(name) for name in REGISTRY]
    out += [strategy_from_dict(s) for s in (
        {"name": "chunked", "chunks": 3, "overlap_backward": True},
        {"name": "chunked", "chunks": 2, "inflight": 2, "inner": "distributed_optimizer"},
        {"name": "local_sgd", "every": 3, "inner": "flat_ring"},
        {"name": "distributed_optimizer", "hierarchical": False})]
    return out


def cases():
    """(topology preset, workload) for every preset: the published workloads where they fit, a
    small data-parallel one on the tiny presets."""
    for topo_name in preset_names():
        topo = load_topology(topo_name)
        if topo.num_gpus <= 64:
            w = dict(TINY, parallel={**TINY["parallel"], "dp": topo.num_gpus,
                                     "global_batch_size": 24 * topo.num_gpus // math.gcd(24, topo.num_gpus)})
            yield topo_name, workload_from_dict(w)
            continue
        w = load_workload("nemotron-4-340b")
        if len(topo.sites) == 3:  # three sites of 1,024 GPUs: 10 replicas of 96 GPUs each
            raw = {"model": "nemotron-4-340b", "parallel": {"tp": 8, "pp": 12, "dp": 30, "vpp": 8,
                                                             "global_batch_size": 1440}}
            w = workload_from_dict(raw)
        yield topo_name, w


def meta_model(param_numels):
    """A module whose trainable parameters (registration order) are backward's order reversed,
    on the meta device: the sizes of a 340B-parameter stage cost no memory."""
    return torch.nn.ParameterList([torch.nn.Parameter(torch.empty(n, device="meta"))
                                   for n in reversed(param_numels)])


@pytest.mark.parametrize("topo_name,workload", list(cases()), ids=[c[0] for c in cases()])
def test_simulator_and_trainer_get_the_same_plan(topo_name, workload):
    topo = load_topology(topo_name)
    placement = place(topo, workload.parallel)
    groups = placement.dp_groups()[:workload.parallel.pp]  # the simulator's (aggregate) groups
    wires = {4: "fp32", 2: "bf16"}
    model = meta_model(workload.param_numels())
    for strategy in strategies():
        sim = dp_plan(strategy, topo, workload, groups)
        ours = model_sync_plans(strategy, topo, groups, model, workload.bucket_numel * workload.grad_bytes,
                                wires[workload.grad_bytes], wires[workload.param_bytes]).plan
        assert sim.steps == ours.steps, strategy.describe()
        assert sim.numel == ours.numel and [sim.step_bytes(s) for s in sim.steps] == \
            [ours.step_bytes(s) for s in ours.steps]
        assert all(s.wire for s in sim.steps)  # every step says what it sends


def test_the_simulated_step_runs_that_plan():
    topo = load_topology("tiny-2site")
    w = workload_from_dict(dict(TINY, parallel={**TINY["parallel"], "dp": 4}))
    for strategy in strategies():
        stats = run_step(topo, w, strategy, SimConstants())
        assert stats.plan.steps == dp_plan(strategy, topo, w, [[0, 1, 2, 3]]).steps


def test_workload_bucketing_equals_the_trainers_bucketing_of_the_same_parameters():
    w = load_workload("llama-3-8b")
    assert bucket_numels(w.param_numels(), w.bucket_numel) == w.buckets()
    # a model's parameters: DDP's rule, one bucket per parameter over the cap, never split
    assert bucket_numels([10, 100, 10, 100, 10, 100], 110) == [110, 110, 110]
    assert bucket_numels([10, 100, 10, 100, 10, 100], 109) == [10, 100, 10, 100, 10, 100]
    assert bucket_numels([500, 1, 1], 100) == [500, 2]


def test_chunked_and_local_sgd_plan_the_same_in_both_executors_on_tiny_2site():
    """The two mismatches issue I found: chunked(chunks=2) was 24 plan steps in the simulator and
    6 in the trainer, local_sgd made 4 cross-site syncs in one and 1 in the other."""
    topo = load_topology("tiny-2site")
    numels = [300_000] * 3 + [50_000]  # four buckets
    for spec, steps, wan_syncs in (({"name": "chunked", "chunks": 2}, 4 * 2 * 3, 0),
                                   ({"name": "local_sgd", "every": 2}, 4 * 4, 4)):
        plans = sync_plans(strategy_from_dict(spec), topo, [[0, 1, 2, 3]], numels, 300_000)
        assert len(plans.plan.steps) == steps
        assert sum(s.label == "outer-ar-wan" for s in plans.plan.steps) == wan_syncs
        trainer = model_sync_plans(strategy_from_dict(spec), topo, [[0, 1, 2, 3]], meta_model(numels), 1_200_000)
        assert trainer.plan.steps == plans.plan.steps


def test_what_the_optimizer_sees_is_read_from_the_plan():
    topo = load_topology("tiny-2site")
    numels, cap = [1000, 1000], 1000
    flat = sync_plans(strategy_from_dict("hierarchical"), topo, [[0, 1, 2, 3]], numels, cap)
    assert not flat.sharded(0) and flat.grad_divisor(0) == 4 and flat.param_sync is None
    zero = sync_plans(strategy_from_dict("distributed_optimizer"), topo, [[0, 1, 2, 3]], numels, cap)
    assert zero.sharded(0) and zero.grad_divisor(0) == 4 and zero.param_sync == "gather"
    assert sum(n for r in range(4) for _, n in zero.owned(r)) == 2000
    local = sync_plans(strategy_from_dict({"name": "local_sgd", "every": 5, "outer_lr": 0.7,
                                           "outer_momentum": 0.9}), topo, [[0, 1, 2, 3]], numels, cap)
    assert not local.sharded(0) and local.grad_divisor(0) == 2  # gradients: the two ranks of a site
    assert local.param_sync == "average" and local.param_divisor(0) == 2 and local.period == 5
    assert local.outer == (0.7, 0.9, 0.0) and local.param_due(10) and not local.param_due(11)


def test_docs_strategy_table_is_generated_from_the_registry():
    from hdc.strategies.docs import DOC, render

    assert render(DOC.read_text()) == DOC.read_text(), "run python -m hdc.strategies.docs --write"


def test_recipe_distributed_section_takes_every_knob_of_the_registry(tmp_path):
    from hdc.errors import UserError
    from hdc.strategies import LocalSGD, Hierarchical, knobs
    from trainer.config import DistributedConfig, from_dict

    assert set(knobs()) <= {f for f in DistributedConfig.__dataclass_fields__}
    d = from_dict(DistributedConfig, {"strategy": "local_sgd", "every": 4, "outer_lr": 0.7, "outer_momentum": 0.9})
    assert d.build_strategy() == LocalSGD(Hierarchical(), every=4, outer_lr=0.7, outer_momentum=0.9)
    for data, msg in (({"strategy": "hierarchical", "chunks": 2}, "distributed.chunks: not a knob of strategy"),
                      ({"strategy": "chunked", "chunks": 0}, "chunks: must be an integer >= 1"),
                      ({"strategy": "chunked", "inflight": 1e9}, "inflight: must be an integer >= 1 and <= 64")):
        with pytest.raises(UserError, match=msg):
            from_dict(DistributedConfig, data, "distributed")
