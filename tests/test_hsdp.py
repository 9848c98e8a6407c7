"""Sharding inside a site (distributed.shard_within_site): FSDP2 shards each site, the hdc
strategy's cross-site plan runs on each rank's shard through FSDP2's all-reduce hook.

2 sites x 2 ranks on CPU/gloo, the small tiny model. With per-prompt seeded rollouts the
sharded run must equal single-process training as the unsharded data-parallel run does
(tests/test_trainer_dp.py: losses within 1e-5 relative, weights within 1% of the largest
change training made); it must hold about half the parameter + gradient + optimizer bytes
per rank; kill -9 and --resume must end with the uninterrupted run's weights; bad input is
one line and exit 2."""
import subprocess
import sys
from pathlib import Path

import pytest

from hdc.errors import UserError
from hdc.strategies import Hierarchical, strategy_from_dict
from hdc.sync import bucket_plans, check_shard_topology
from trainer.selfcheck.grpo import differences, run, single, topology
from trainer.distributed.hsdp import padded_shard_numel
from trainer.distributed.local import spawn_world
from trainer.selfcheck.assets import tiny_assets

from trainer.selfcheck.runs import kill_after_step_5_and_resume

ROOT = Path(__file__).resolve().parents[1]
from trainer.selfcheck.memory import compare as compare_memory

CROSS_SITE = [[0, 2], [1, 3]]  # rank j of every site, for 2 sites x 2 ranks


def test_hierarchical_over_one_rank_per_site_is_the_wan_all_reduce():
    plans = bucket_plans(Hierarchical(), topology(2, 2), CROSS_SITE, [300, 120])
    steps = [(s.op, s.tier, s.phase, s.groups, s.regions, s.trigger) for s in plans.plan.steps]
    assert steps == [("all_reduce", "wan", "grad", ((0, 2), (1, 3)), ((0, 300), (0, 300)), "bucket:0"),
                     ("all_reduce", "wan", "grad", ((0, 2), (1, 3)), ((300, 120), (300, 120)), "bucket:1")]
    assert plans.grad_divisor(0) == 2 and not plans.sharded(0) and plans.param_sync is None


def test_local_sgd_over_cross_site_groups_only_averages_parameters():
    plans = bucket_plans(strategy_from_dict({"name": "local_sgd", "every": 4}), topology(2, 2), CROSS_SITE, [50])
    assert {(s.op, s.phase, s.period) for s in plans.plan.steps} == {("all_reduce", "param", 4)}
    assert plans.param_sync == "average" and plans.param_divisor(0) == 2


def test_fsdp_shard_sizes_and_site_checks():
    assert padded_shard_numel((3, 5), 2) == 10 and padded_shard_numel((7,), 2) == 4 and padded_shard_numel((1, 4), 4) == 4
    check_shard_topology(topology(2, 3))  # any site size FSDP2 can pad to
    with pytest.raises(UserError, match=r"^distributed.shard_within_site: every site needs the same number of ranks, "
                                        r"at least 2; topology dp-2x1 has 1, 1"):
        check_shard_topology(topology(2, 1))


def _hdc(*argv):
    code = "import sys; from hdc.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("strategy, problem", [
    ("flat_ring", "flat_ring: one ring over every rank has no in-site phase for FSDP2 to do; use hierarchical"),
    ("distributed_optimizer", "distributed_optimizer: FSDP2 already shards the optimizer state inside each site"),
])
def test_refused_strategy_exits_2_with_one_line_and_writes_nothing(tmp_path, strategy, problem):
    out = tmp_path / "run"
    sets = ["--set", "distributed.shard_within_site=true", "--set", f"distributed.strategy={strategy}"]
    message = f"error: distributed.shard_within_site: true does not work with strategy {strategy}"
    for argv in (["train", "recipes/tiny-arith.yaml", "--out", str(out), "--topology", "tiny-2site", *sets],
                 ["recipe", "validate", "recipes/tiny-arith.yaml", *sets]):
        done = _hdc(*argv)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(message) and f"({problem}" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()


def test_sites_of_one_rank_exit_2_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    done = _hdc("train", "recipes/tiny-arith.yaml", "--out", str(out), "--nproc", "1", "--strategy", "hierarchical",
                "--set", "distributed.shard_within_site=true")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: distributed.shard_within_site: every site needs the same number of ranks, "
                                  "at least 2; topology local-1 has 1"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()


STOCK_LINEAR = {"onednn_linear": False}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    # MKL's linear layers on both sides: FSDP2's sharded layers run F.linear (grpo.onednn_linear leaves DTensors
    # alone), and Adam turns another kernel's summation order in near-zero gradients into visible steps
    ref = single(str(tiny_assets().root), str(tmp_path_factory.mktemp("single")), STOCK_LINEAR)
    assert all(loss != 0 for loss in ref["losses"]) and ref["moved"] > 1e-4, "the reference run must learn something"
    return ref


@pytest.mark.multiproc
@pytest.mark.parametrize("strategy", ["hierarchical", pytest.param("chunked", marks=pytest.mark.slow)])
def test_sharded_run_matches_single_process(reference, strategy, tmp_path):
    results = spawn_world(run, 4, args=(str(tiny_assets().root), str(tmp_path), strategy, 2, STOCK_LINEAR, True),
                          timeout_s=600)
    assert differences(reference, results) == []


@pytest.mark.multiproc
def test_sharded_local_sgd_averages_shards_and_compressed_trains(tmp_path):
    root = str(tiny_assets().root)
    local = spawn_world(run, 4, args=(root, str(tmp_path / "l"), "local_sgd", 2, {"max_steps": 4}, True), timeout_s=600)
    div = [d for d in local[0]["divergence"] if d is not None]
    assert len(set(div)) == 2 and min(div) > 0, "two outer syncs (every 2 of 4 steps), the sites had drifted apart"
    lossy = spawn_world(run, 4, args=(root, str(tmp_path / "c"), "compressed", 2, {}, True), timeout_s=600)
    assert lossy[0]["moved"] > 1e-4


@pytest.mark.multiproc
def test_sharded_ranks_hold_half_the_bytes():
    rows = compare_memory(str(tiny_assets(sft_steps=1, num_train=200).root))
    base, sharded = ({k: r[k] for k in ("params", "grads", "optimizer")} for r in rows.values())
    for k in base:  # 2 ranks per site: half of each, up to FSDP2's padding of dim 0
        assert 0.5 <= sharded[k] / base[k] <= 0.51, (k, sharded[k], base[k])


@pytest.mark.multiproc
def test_kill9_of_a_sharded_run_then_resume_is_exact(tmp_path):
    out = kill_after_step_5_and_resume(tmp_path, strategy="hierarchical", batch_size=4,
                                       distributed={"topology": "tiny-2site", "shard_within_site": True})
    names = {p.name for p in (out / "checkpoints" / "step-00000005").iterdir()}
    assert {f"optimizer.rank{r}.pt" for r in range(4)} | {"model.safetensors"} <= names
