"""DistGradientSync on a small nn.Linear stack, 2 and 4 processes (2 sites), against
single-process training on the concatenated batch."""
import pytest

WORLDS = (2, 4)


@pytest.fixture(scope="module")
def results():
    from trainer.selfcheck.sync import all_cases
    from trainer.distributed.local import spawn_world

    return {w: spawn_world(all_cases, w) for w in WORLDS}


@pytest.mark.multiproc
@pytest.mark.parametrize("world", WORLDS)
def test_averaged_gradients_equal_full_batch(results, world):
    rows = [r for rank in results[world] for r in rank["grads"] if r["case"] != "all_reduce_sum"]
    assert {r["case"] for r in rows} == {"flat_ring", "hierarchical", "chunked", "distributed_optimizer"}
    assert {r["micro_batches"] for r in rows} == {1, 2}
    for r in rows:
        assert r["max_err"] < 1e-6, r
        assert r["buckets"] > 1 and r["spans"] >= r["buckets"], r  # synced bucket by bucket
        assert r["plan_is_sync_plans"], r  # attach() ran hdc.sync's plan for this model
    # overlap: with one micro-batch the first bucket's collective starts during backward
    assert all(r["first_start_s"] < r["finish_called_s"] for r in rows if r["micro_batches"] == 1)
    keys = rows[0]["span_keys"]
    assert {"rank", "kind", "label", "step_id", "start_s", "end_s", "bytes"} <= set(keys)


@pytest.mark.multiproc
@pytest.mark.parametrize("world", WORLDS)
def test_bf16_grad_dtype_halves_the_bytes_on_the_wire(results, world):
    for rank in results[world]:
        fp32, bf16 = rank["grad_dtype"]
        assert fp32["wires"] == ["fp32"] and bf16["wires"] == ["bf16"]
        assert bf16["bytes"] * 2 == fp32["bytes"] > 0
        assert fp32["max_rel_err"] < 1e-6 and bf16["max_rel_err"] < 1e-2, (fp32, bf16)
        assert bf16["grad_dtypes"] == ["torch.float32"]  # written back in the parameters' dtype


@pytest.mark.multiproc
@pytest.mark.parametrize("world", WORLDS)
def test_all_reduce_sum(results, world):
    sums = [r["value"] for rank in results[world] for r in rank["grads"] if r["case"] == "all_reduce_sum"]
    assert sums == [[float(world), float(sum(range(world)))]] * world


@pytest.mark.multiproc
@pytest.mark.parametrize("world", WORLDS)
def test_sharded_adamw_equals_full_batch_adamw(results, world):
    for rank in results[world]:
        for r in rank["adamw"]:
            assert r["max_err"] < 1e-5, r
            assert r["moved"] > 1e-3, r  # the parameters did change
            assert r["grad_norm_err"] < 1e-5, r  # global norm from the shards (for clipping)
            assert r["shard_numel"] <= -(-r["total_numel"] // world) + 5, r  # ~1/world of the model
            assert r["state_numel"] == 2 * r["shard_numel"], r  # AdamW moments for the shard only


@pytest.mark.multiproc
@pytest.mark.parametrize("world", WORLDS)
def test_local_sgd_syncs_every_h_steps_and_reports_divergence(results, world):
    for rank in results[world]:
        for r in rank["local_sgd"]:
            if r["sync_step"]:
                assert r["spread"] == 0.0, r  # every rank holds the same parameters
                assert r["divergence"] > 0, r
                assert r["expected_err"] < 1e-6, r  # the average / DiLoCo Nesterov outer step
                assert r["param_spans"] >= 1, r
            else:
                assert r["spread"] > 0, r  # the sites drifted apart (different data)
