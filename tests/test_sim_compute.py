"""The shape-aware compute model and the workload inputs it reads, against hand-computed numbers."""
import pytest

from hdc.errors import UserError
from hdc.topology import topology_from_dict
from hdc.workload import workload_from_dict
from simulator import SimConstants, simulate
from simulator.compute import GENERATIONS, gemm_shape_efficiency, layer_ops, layer_times
from simulator.memory import activation_bytes, estimate

MODEL = {"name": "m", "layers": 4, "hidden": 1024, "heads": 8, "kv_heads": 8, "ffn": 4096, "vocab": 1000,
         "seq_len": 512, "gated_mlp": False}


def work(**kw):
    parallel = kw.pop("parallel", {})
    return workload_from_dict({"model": MODEL, "parallel": {"global_batch_size": 8, **parallel}, **kw})


def test_gemm_shape_efficiency_tile_and_wave_quantization():
    h100 = GENERATIONS["hopper"]  # 132 SMs, 256 x 128 tiles
    # 256 x 128 output: one tile on 132 SMs -> 1/132 of the GPU
    assert gemm_shape_efficiency(h100, 256, 128) == pytest.approx(1 / 132)
    # 257 rows: 2 x 1 tiles, half the second tile wasted: (257·128)/(512·128) · 2/132
    assert gemm_shape_efficiency(h100, 257, 128) == pytest.approx(257 / 512 * 2 / 132)
    # 132 full tiles: exactly one wave
    assert gemm_shape_efficiency(h100, 256 * 12, 128 * 11) == pytest.approx(1.0)
    assert gemm_shape_efficiency(GENERATIONS["generic"], 3, 5) == 1.0


def test_layer_flops_match_palm_count():
    w = work()
    ops = {op.name: op for op in layer_ops(w, 2)}
    T, d = 512, 1024
    assert ops["qkv"].flops == 2 * T * d * 3 * d
    assert ops["fc1"].flops == 2 * T * d * 4 * d
    assert ops["attention"].flops == 4 * T * 512 * d
    # forward GEMMs + attention = 2·(matmul params per layer)·T + 4·T·s·d (PaLM, forward third)
    fwd = sum(op.flops for op in ops.values())
    assert fwd == 2 * T * 12 * d * d + 4 * T * 512 * d


def test_recompute_adds_forward_work_to_backward():
    gpu = dict(peak_flops=1e12, efficiency=1.0, generation="generic", act_bytes=2)
    none = layer_times(work(recompute="none"), gpu["peak_flops"], 1.0, "generic", 2)
    sel = layer_times(work(recompute="selective"), gpu["peak_flops"], 1.0, "generic", 2)
    full = layer_times(work(recompute="full"), gpu["peak_flops"], 1.0, "generic", 2)
    assert none.forward_s == sel.forward_s == full.forward_s
    assert sel.backward_s - none.backward_s == pytest.approx(4 * 512 * 512 * 1024 / 1e12)  # attention core again
    assert full.backward_s - none.backward_s == pytest.approx(none.forward_s)


def test_fp8_doubles_gemm_rate_on_hopper_only_for_gemms():
    bf16 = layer_times(work(), 1e12, 1.0, "generic", 2)
    fp8 = layer_times(work(fp8=True), 1e12, 1.0, "generic", 2)
    gemms = sum(bf16.by_op[n][0] for n in ("qkv", "proj", "fc1", "fc2"))
    assert bf16.forward_s - fp8.forward_s == pytest.approx(gemms / 2)


def test_fp8_on_ampere_is_refused():
    t = topology_from_dict({"name": "a", "gpu": {"generation": "ampere", "peak_flops": "312TFLOPS"},
                            "sites": [{"name": "a", "nodes": 1, "gpus_per_node": 8,
                                       "intra_node": {"latency": "3us", "bandwidth": "300GB/s"},
                                       "intra_pod": {"latency": "5us", "bandwidth": "200Gbps"}}]})
    with pytest.raises(UserError, match="fp8: the GPU generation ampere has no FP8"):
        simulate(t, work(fp8=True), "hierarchical", SimConstants(), baseline=False)


def test_activation_memory_by_recompute():
    # per layer and micro-batch (Korthikanti et al. 2022, Table 2), tp 1, 4 layers, 1 stage
    sbh = 512 * 1 * 1024
    assert activation_bytes(work(recompute="selective")) == 34 * sbh * 4
    assert activation_bytes(work(recompute="full")) == 2 * sbh * 4
    assert activation_bytes(work(recompute="none", flash_attention=False)) == sbh * (34 + 5 * 8 * 512 / 1024) * 4
    assert activation_bytes(work(recompute="none")) == 34 * sbh * 4


def test_grad_and_param_bytes_and_fsdp_memory():
    w = work(grad_bytes=1, param_bytes=1, parallel={"dp": 4})
    n = w.params_per_rank
    m = estimate(w, distributed_optimizer=False)
    assert (m.weights_bytes, m.grads_bytes, m.optimizer_bytes) == (n, n, 12 * n)
    z3 = estimate(work(shard_params=True, parallel={"dp": 4}), distributed_optimizer=False)
    per_layer = 12 * 1024 * 1024 + 2 * 1024
    assert z3.weights_bytes == pytest.approx(n * 2 / 4 + 2 * per_layer * 2)
    assert z3.optimizer_bytes == pytest.approx(n * 12 / 4)


def test_uneven_stages_and_their_parameters():
    w = workload_from_dict({"model": {**MODEL, "layers": 10}, "parallel": {"pp": 4, "first_stage_layers": 1,
                            "last_stage_layers": 1, "global_batch_size": 8}})
    assert w.stage_layers() == [1, 4, 4, 1]
    m = w.model
    assert w.params_per_rank == 4 * m.params_per_layer  # a middle stage outweighs embedding + 1 layer


def test_context_parallel_splits_tokens_and_sends_kv_on_its_tier():
    w = work(parallel={"cp": 2, "tp": 1})
    assert {op.name: op for op in layer_ops(w, 2)}["qkv"].shape[0] == 256  # 512 tokens / cp 2
    t = topology_from_dict({"name": "two-nodes", "sites": [{"name": "a", "nodes": 2, "gpus_per_node": 1,
                            "intra_node": {"latency": "3us", "bandwidth": "450GB/s"},
                            "intra_pod": {"latency": "5us", "bandwidth": "400Gbps"}}]})
    r = simulate(t, w, "hierarchical", SimConstants(), baseline=False)
    # K and V of 256 tokens x 1024 x 2 B per layer; one ring step each way (2 messages of GPU ->
    # leaf -> GPU: 2 links each); fwd + 2x bwd; 4 layers; 8 micro-batches
    assert r.tiers["intra_pod"].bytes == pytest.approx(256 * 1024 * 2 * 2 * 2 * 2 * 3 * 4 * 8)


def test_gradients_not_overlapped_wait_for_backward():
    t = topology_from_dict({"name": "two", "sites": [{"name": "a", "nodes": 2, "gpus_per_node": 1,
                            "intra_node": {"latency": "3us", "bandwidth": "450GB/s"},
                            "intra_pod": {"latency": "5us", "bandwidth": "1Gbps"}}]})
    big = {"model": {**MODEL, "layers": 8}, "parallel": {"dp": 2, "global_batch_size": 2}, "bucket_numel": 10_000_000}
    on = simulate(t, workload_from_dict(big), "hierarchical", SimConstants(), baseline=False)
    off = simulate(t, workload_from_dict({**big, "overlap_grad_reduce": False}), "hierarchical", SimConstants(),
                   baseline=False)
    assert off.step_time_s > on.step_time_s


@pytest.mark.parametrize("data, message", [
    ({"recompute": "some"}, "recompute: must be one of none, selective, full, got 'some'"),
    ({"grad_bytes": 8}, "grad_bytes: must be one of 1, 2, 4, got 8"),
    ({"param_bytes": 3}, "param_bytes: must be one of 1, 2, 4, got 3"),
    ({"fp8": "yes"}, "fp8: must be true or false, got 'yes'"),
    ({"overlap_grad_reduce": 1}, "overlap_grad_reduce: must be true or false, got 1"),
    ({"parallel": {"cp": 0}}, "parallel.cp: must be an integer > 0"),
    ({"parallel": {"cp": 3}}, "parallel.cp: must divide the model's seq_len (512), got 3"),
    ({"parallel": {"pp": 2, "first_stage_layers": 5}}, "parallel.first_stage_layers: first 5 and last None"),
    ({"parallel": {"first_stage_layers": 2}}, "uneven stages need pp >= 2"),
    ({"parallel": {"pp": 2}, "shard_params": True}, "shard_params: FSDP / ZeRO-3 is modelled without pipeline"),
])
def test_new_workload_fields_bad_input(data, message):
    parallel = {"global_batch_size": 8, **data.pop("parallel", {})}
    with pytest.raises(UserError) as e:
        workload_from_dict({"model": MODEL, "parallel": parallel, **data})
    assert message in str(e.value)


def test_nemotron_presets_fit_80gb_with_the_distributed_optimizer_and_tp1_does_not():
    from hdc.strategies import make_strategy
    from hdc.topology import load_topology
    from hdc.workload import load_workload

    two, work = load_topology("nemotron-2dc"), load_workload("nemotron-4-340b")
    strat = make_strategy("chunked", chunks=8, inner="distributed_optimizer", overlap_backward=True)
    r = simulate(two, work, strat, SimConstants(), baseline=False)
    assert r.fits and r.memory.total_bytes < 80e9 and r.fit_warning() is None
    work.parallel.tp, work.parallel.dp, work.parallel.global_batch_size = 1, 256, 3072
    r = simulate(two, work, strat, SimConstants(), baseline=False)
    assert not r.fits and "does not fit" in r.fit_warning()


def test_fsdp_gathers_every_layer_twice_and_reduce_scatters_once_per_micro_batch():
    t = topology_from_dict({"name": "two-nodes", "sites": [{"name": "a", "nodes": 2, "gpus_per_node": 1,
                            "intra_node": {"latency": "3us", "bandwidth": "450GB/s"},
                            "intra_pod": {"latency": "5us", "bandwidth": "400Gbps"}}]})
    w = work(parallel={"dp": 2}, shard_params=True)  # 4 layers, 8 / 2 = 4 micro-batches per replica
    r = simulate(t, w, "hierarchical", SimConstants(), baseline=False)
    P = 12 * 1024 * 1024 + 2 * 1024  # parameters of one layer
    # per layer and micro-batch: 3 collectives (2 all-gathers, 1 reduce-scatter) of 2 messages of P/2
    # elements x 2 B, each crossing 2 links (GPU -> leaf -> GPU); one site: no cross-site sync
    assert r.tiers["intra_pod"].bytes == pytest.approx(3 * 2 * 2 * P * 4 * 4)
    slow = topology_from_dict({"name": "slow", "sites": [{"name": "a", "nodes": 2, "gpus_per_node": 1,
                               "intra_node": {"latency": "3us", "bandwidth": "450GB/s"},
                               "intra_pod": {"latency": "5us", "bandwidth": "1Gbps"}}]})
    assert simulate(slow, w, "hierarchical", SimConstants(), baseline=False).breakdown.tp_exposed_s > 0.1


def test_elementwise_elements_follow_sequence_parallelism():
    from simulator.compute import elementwise_elems_per_token

    d, f = 1024, 4096  # plain MLP: GeLU reads f, writes f
    assert elementwise_elems_per_token(work(parallel={"tp": 2})) == 10 * d / 2 + 2 * f / 2
    assert elementwise_elems_per_token(work(parallel={"tp": 2}, sequence_parallel=False)) == 10 * d + 2 * f / 2


def test_without_overlap_the_gradient_sync_is_its_closed_form_time_after_backward():
    from hdc import cost
    from simulator.step_inputs import workload_sync_plans

    t = topology_from_dict({"name": "two", "sites": [{"name": "a", "nodes": 2, "gpus_per_node": 1,
                            "intra_node": {"latency": "3us", "bandwidth": "450GB/s"},
                            "intra_pod": {"latency": "5us", "bandwidth": "10Gbps"}}]})
    from hdc.strategies import make_strategy

    # one bucket: the whole buffer's all-reduce starts when backward ends and nothing hides it
    w = work(parallel={"dp": 2}, overlap_grad_reduce=False, bucket_numel=10**9)
    r = simulate(t, w, "hierarchical", SimConstants(), baseline=False)
    plan = workload_sync_plans(make_strategy("hierarchical"), t, w, [[0, 1]]).plan
    assert r.breakdown.dp_exposed_s == pytest.approx(cost.plan_time_s(t, plan), rel=0.01)


@pytest.mark.parametrize("data, message", [
    ({"sequence_parallel": "yes"}, "sequence_parallel: must be true or false, got 'yes'"),
    ({"flash_attention": 0}, "flash_attention: must be true or false, got 0"),
    ({"shard_params": "on"}, "shard_params: must be true or false, got 'on'"),
])
def test_more_bad_workload_input(data, message):
    with pytest.raises(UserError) as e:
        workload_from_dict({"model": MODEL, "parallel": {"global_batch_size": 8}, **data})
    assert message in str(e.value)


def test_bad_gpu_generation():
    with pytest.raises(UserError) as e:
        topology_from_dict({"name": "x", "gpu": {"generation": "volta"},
                            "sites": [{"name": "a", "nodes": 1, "gpus_per_node": 1,
                                       "intra_node": {"latency": "3us", "bandwidth": "450GB/s"},
                                       "intra_pod": {"latency": "5us", "bandwidth": "400Gbps"}}]})
    assert "gpu.generation: must be one of ampere, hopper, generic, got 'volta'" in str(e.value)
