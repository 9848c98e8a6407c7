"""The pieces of benchmarks/emulated_grpo.py that need no root: the split of a step's sync wait
into skew and collective from every rank's stamps (trainer.grpo.sync_wait_parts), the trainer's
buckets and plan, the three predictions and the summary over steps 2..N."""
from __future__ import annotations


import pytest
import torch

from hdc.topology import load_topology
from experiments.emulate import calibrate, spec as specmod
from trainer.grpo import sync_wait_parts

from experiments.emulate import grpo_sync as eg


def test_sync_wait_parts_separates_waiting_for_the_last_rank_from_the_sync():
    # rank 2 enters 200 ms after rank 0; everyone is out 120 ms after rank 2 came in
    stamps = [[(10.00, 10.31)], [(10.05, 10.32)], [(10.20, 10.30)]]
    skew, collective = sync_wait_parts(stamps)
    assert skew == pytest.approx(0.20) and collective == pytest.approx(0.12)
    longest_wait = max(d - e for rank in stamps for e, d in rank)  # what time/sync_s's finish() part is
    assert longest_wait <= skew + collective == pytest.approx(10.32 - 10.00)


def test_sync_wait_parts_sums_updates_and_one_rank_has_no_skew():
    two_updates = [[(0.0, 0.1), (1.0, 1.3)], [(0.05, 0.1), (1.2, 1.3)]]
    assert sync_wait_parts(two_updates) == pytest.approx((0.05 + 0.2, 0.05 + 0.1))
    assert sync_wait_parts([[(5.0, 5.25)]]) == pytest.approx((0.0, 0.25))


def test_model_buckets_fill_in_reverse_registration_order_up_to_the_cap():
    model = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 10), torch.nn.Linear(10, 10))
    # reversed: bias3 10, weight3 100, bias2 10, weight2 100, bias1 10, weight1 100 (4 bytes each)
    assert eg.model_buckets(model, 440) == ([110, 110, 110], 4)
    assert eg.model_buckets(model, 439) == ([10, 100, 10, 100, 10, 100], 4)
    model[2].requires_grad_(False)  # frozen parameters have no gradient to sync
    assert eg.model_buckets(model, 10 ** 6) == ([220], 4)


def test_benchmark_plan_is_the_trainers_plan():
    """The benchmark predicts hdc.sync.bucket_plans over the trainer's buckets; DistGradientSync
    takes hdc.sync.sync_plans over the model's parameters: the same steps."""
    from hdc.strategies import make_strategy
    from hdc.sync import bucket_plans, sync_plans

    topo = specmod.with_ranks_per_site(load_topology("tiny-2site"), 2)
    model = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 10), torch.nn.Linear(10, 10))
    numels, esize = eg.model_buckets(model, 440)
    params = [p.numel() for p in reversed(list(model.parameters()))]
    for name in eg.STRATEGIES:
        ours = bucket_plans(make_strategy(name), topo, [[0, 1, 2, 3]], numels).plan
        theirs = sync_plans(make_strategy(name), topo, [[0, 1, 2, 3]], params, 440 // esize).plan
        assert ours.steps == theirs.steps and ours.numel == theirs.numel


def test_predictions_use_the_calibrated_pipeline_on_the_trainers_plan():
    from hdc.cost import plan_time_s
    from hdc.strategies import make_strategy
    from hdc.sync import bucket_plans

    topo = specmod.with_ranks_per_site(specmod.with_wan(load_topology("tiny-2site"), one_way_s=0.01,
                                                        bandwidth_Bps=125e6), 2)
    c = calibrate.Calibration(call_overhead_s=0.0, local_latency_s=1e-4, local_Bps=1e9, wan_efficiency=0.9)
    bare = eg.predict(topo, c, "hierarchical", [365_568], 4)
    slow = eg.predict(topo, calibrate.Calibration(0.003, 1e-4, 1e9, 0.9), "hierarchical", [365_568], 4)
    # one bucket, hierarchical: reduce-scatter in the site, all-reduce across, all-gather, one after another
    assert bare["plan_steps"] == 3 and "pipelined" in bare["model"]
    assert slow["calibrated_ms"] == pytest.approx(bare["calibrated_ms"] + 3 * 3.0, rel=1e-9)
    # gloo's ready notices cross the 10 ms WAN before the data (rendezvous); the bound has none
    assert bare["calibrated_ms"] > bare["bound_ms"] + 10.0
    plan = bucket_plans(make_strategy("hierarchical"), topo, [[0, 1, 2, 3]], [365_568]).plan
    assert bare["bound_ms"] == pytest.approx(plan_time_s(topo, plan) * 1e3)
    assert slow["uncalibrated_ms"] == bare["uncalibrated_ms"]  # the constants do not touch it


def test_summary_takes_medians_over_steps_after_the_first():
    rows = [{"step": i + 1, "time/sync_s": s, "time/sync_skew_s": k, "time/sync_collective_s": c}
            for i, (s, k, c) in enumerate([(0.5, 0.3, 0.2), (0.10, 0.04, 0.06), (0.12, 0.05, 0.07),
                                           (0.11, 0.06, 0.05)])]
    pred = {"calibrated_ms": 50.0, "uncalibrated_ms": 30.0, "bound_ms": 25.0}
    s = eg.summarize(rows, [0.047, 0.045, 0.052], pred)
    assert s["steps"] == [2, 3, 4]
    assert (s["sync_ms"], s["skew_ms"], s["collective_ms"], s["alone_ms"]) == pytest.approx((110.0, 50.0, 60.0, 47.0))
    assert s["collective_over_calibrated"] == pytest.approx(1.2) and s["sync_over_calibrated"] == pytest.approx(2.2)
    assert s["alone_over_calibrated"] == pytest.approx(0.94) and s["bound_ms"] == 25.0
    assert eg.summarize(rows[:1], [0.05], pred)["steps"] == [1]  # one step: nothing to drop
