"""The real executor against hdc's numpy reference and torch.distributed.all_reduce.

One spawned world per size (2, 4, 6 gloo processes on loopback, arranged as 2×1×1, 2×1×2
and 3×1×2 sites × nodes × GPUs) runs every strategy case; the tests below read its results.
"""
import numpy as np
import pytest

from hdc.strategies import DistributedOptimizer, Hierarchical, bucketed
from trainer.dist.checks import SIZES, strategy_cases, topology_for_world

WORLDS = (2, 4, 6)


@pytest.fixture(scope="module")
def world_results():
    from trainer.dist.checks import executor_cases
    from trainer.dist.local import spawn_world

    return {w: [r for rank in spawn_world(executor_cases, w) for r in rank] for w in WORLDS}


def _bad(results, key):
    return [(r["case"], r["numel"], r["train_step"], r["rank"], r["max_err"]) for r in results if not r[key]]


@pytest.mark.multiproc
@pytest.mark.parametrize("world", WORLDS)
def test_every_strategy_matches_reference_and_all_reduce(world_results, world):
    results = world_results[world]
    cases = {name for name, _, _ in strategy_cases()}
    assert {r["case"] for r in results} >= cases
    assert {r["numel"] for r in results} == set(SIZES)  # 1 and 7 and 1001: not divisible by groups
    assert len({r["rank"] for r in results}) == world
    assert not _bad(results, "ok_reference")
    assert not _bad(results, "ok_all_reduce")


@pytest.mark.multiproc
@pytest.mark.parametrize("world", WORLDS)
def test_bucket_lists_equal_flat_buffer(world_results, world):
    assert not _bad(world_results[world], "ok_buckets")


@pytest.mark.multiproc
def test_local_sgd_runs_param_steps_only_on_sync_steps(world_results):
    steps = {(r["train_step"], r["steps"]) for r in world_results[4] if r["case"] == "local_sgd" and r["numel"] == 1001}
    by_step = dict(steps)
    assert by_step[0] > by_step[1]  # step 0 adds the outer all-reduce + all-gather


def test_owned_regions_cover_the_buffer_once_per_bucketed_plan():
    from hdc.reference import owned_regions

    topo = topology_for_world(6)
    plan = bucketed(DistributedOptimizer(), topo, [range(6)], [10, 7, 1], 4)
    covered = np.zeros(plan.numel, int)
    for rank in range(6):
        regions = owned_regions(plan, rank)
        assert len(regions) == 3  # one shard per bucket
        for off, n in regions:
            covered[off:off + n] += 1
    assert (covered == 1).all()


def test_flat_buffers_regions_across_buckets():
    import torch

    from trainer.dist.executor import FlatBuffers

    parts = [torch.arange(3.0), torch.arange(3.0, 5.0), torch.arange(5.0, 9.0)]
    buf = FlatBuffers(parts)
    assert buf.numel == 9
    assert buf.view(3, 2) is not None and buf.view(2, 2) is None
    assert buf.read(2, 5).tolist() == [2, 3, 4, 5, 6]
    buf.write(2, torch.zeros(5))
    assert torch.cat(parts).tolist() == [0, 1, 0, 0, 0, 0, 0, 7, 8]


def test_issue_order_lets_chunks_pipeline():
    """Per group, steps issue in (dependency depth, id) order: chunk c+1's reduce-scatter comes
    before chunk c's all-gather, so it can run while chunk c crosses the WAN."""
    from trainer.dist.executor import _depth

    topo = topology_for_world(4)
    plan = bucketed(Hierarchical(), topo, [range(4)], [8, 8, 8], 4)
    level = _depth(plan)
    site = sorted((s for s in plan.steps if s.label in ("rs-site", "ag-site")), key=lambda s: (level[s.id], s.id))
    assert [(s.label, s.chunk) for s in site][:3] == [("rs-site", 0), ("rs-site", 1), ("ag-site", 0)]


def test_error_reasons_are_readable():
    from trainer.dist.executor import _reason

    assert _reason(RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:1")).startswith("peer unreachable")
    assert _reason(RuntimeError("Timed out waiting 5000ms for recv")).startswith("timed out")
