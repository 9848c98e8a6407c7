"""The whole-step model: aggregation is exact on symmetric topologies, runs are
deterministic, memory matches a hand computation, the CLI prints what the API returns."""
import json

import pytest

from hdc.cli import main
from hdc.topology import topology_from_dict
from hdc.workload import workload_from_dict
from simulator import SimConstants, simulate
from simulator.memory import estimate
from simulator.pipeline import schedule


def small_topology(pods=1):
    return topology_from_dict({
        "name": "small-2site", "gpu": {"name": "h100"},
        "site_defaults": {"nodes": 4, "gpus_per_node": 4, "pods": pods,
                          "intra_node": {"latency": "3us", "bandwidth": "450GB/s"},
                          "intra_pod": {"latency": "5us", "bandwidth": "400Gbps"},
                          "intra_site": {"latency": "7us", "bandwidth": "400Gbps"}},
        "sites": [{"name": "a"}, {"name": "b"}],
        "wan": [{"sites": ["a", "b"], "rtt": "10ms", "bandwidth": "400Gbps", "links": 2}]})


SMALL_YAML = """name: small-2site
site_defaults:
  nodes: 4
  gpus_per_node: 4
  intra_node: {latency: 3us, bandwidth: 450GB/s}
  intra_pod: {latency: 5us, bandwidth: 400Gbps}
sites: [{name: a}, {name: b}]
wan: [{sites: [a, b], rtt: 10ms, bandwidth: 400Gbps, links: 2}]
"""


def small_workload(vpp=2):
    return workload_from_dict({
        "model": {"name": "m", "layers": 8, "hidden": 1024, "heads": 8, "kv_heads": 8, "ffn": 4096,
                  "vocab": 32000, "seq_len": 1024},
        "parallel": {"tp": 2, "pp": 2, "dp": 8, "vpp": vpp, "micro_batch_size": 1, "global_batch_size": 32},
        "bucket_numel": 5_000_000})


@pytest.mark.parametrize("strategy", ["flat_ring", "hierarchical", "distributed_optimizer", "local_sgd", "chunked"])
def test_aggregated_run_equals_every_rank_run_on_symmetric_topology(strategy):
    t, w = small_topology(), small_workload()
    fast = simulate(t, w, strategy, baseline=False)
    full = simulate(t, w, strategy, baseline=False, aggregate=False)
    assert fast.step_time_s == pytest.approx(full.step_time_s, rel=1e-9)
    for tier, use in full.tiers.items():
        assert fast.tiers[tier].bytes == pytest.approx(use.bytes, rel=1e-9)


@pytest.mark.parametrize("strategy", ["flat_ring", "hierarchical", "distributed_optimizer"])
def test_rounds_as_one_flow_match_message_by_message(strategy):
    # pods=2 breaks latency symmetry a little (5 vs 7 us hops); still within 1%
    t, w = small_topology(pods=2), small_workload(vpp=1)
    fast = simulate(t, w, strategy, baseline=False)
    exact = simulate(t, w, strategy, baseline=False, aggregate=False, rounds="exact")
    assert fast.step_time_s == pytest.approx(exact.step_time_s, rel=0.01)


def test_deterministic():
    t, w = small_topology(), small_workload()
    a = simulate(t, w, "chunked", timeline=True)
    b = simulate(t, w, "chunked", timeline=True)
    assert a.to_dict() == b.to_dict() and a.spans == b.spans


def test_breakdown_sums_to_step_time_and_mfu_follows():
    t, w = small_topology(), small_workload()
    r = simulate(t, w, "hierarchical", SimConstants(compute_efficiency=0.5))
    b = r.breakdown
    parts = b.compute_s + b.tp_exposed_s + b.pp_exposed_s + b.dp_exposed_s + b.bubble_s + b.optimizer_s
    assert parts == pytest.approx(r.step_time_s, rel=1e-6)
    assert r.mfu == pytest.approx(w.step_flops() / (r.step_time_s * 32 * t.gpu.peak_flops))
    assert 0 < r.scaling_efficiency <= 1.0 + 1e-9


def test_single_stage_no_comm_is_pure_compute():
    # a slow generic GPU (no tiling): every GEMM and the attention core compute-bound, the
    # elementwise ops memory-bound
    t = topology_from_dict({"name": "one", "gpu": {"peak_flops": "1TFLOPS"},
                            "sites": [{"name": "a", "nodes": 1, "gpus_per_node": 1,
                                       "intra_node": {"latency": "3us", "bandwidth": "450GB/s"},
                                       "intra_pod": {"latency": "5us", "bandwidth": "400Gbps"}}]})
    w = workload_from_dict({"model": {"name": "m", "layers": 2, "hidden": 256, "heads": 4, "kv_heads": 4,
                                      "ffn": 1024, "vocab": 1000, "seq_len": 128},
                            "parallel": {"dp": 1, "global_batch_size": 4}, "recompute": "none"})
    c = SimConstants(compute_efficiency=0.5)
    r = simulate(t, w, "hierarchical", c, baseline=False)
    tokens, L, d = 4 * 128, 2, 256
    # PaLM model FLOPs less the norms' weights (counted in N, but no matmul): 6 · 2d · L per token
    matmul_flops = w.step_flops() - 6 * 2 * d * L * tokens
    # per token and layer: 2 norms + 2 residual adds = 10 d elements, the gated MLP's SwiGLU 3 f;
    # 2 bytes each, forward once and backward twice
    elementwise_bytes = 3 * 2 * tokens * L * (10 * d + 3 * 1024)
    assert r.breakdown.compute_s == pytest.approx(matmul_flops / (1e12 * 0.5) + elementwise_bytes / 3.35e12)
    assert r.step_time_s == pytest.approx(r.breakdown.compute_s + r.breakdown.optimizer_s)


def test_interleaved_schedule_runs_every_op_once():
    for pp, vpp, m in ((4, 1, 3), (4, 1, 8), (4, 2, 8), (3, 4, 6)):
        for s in range(pp):
            ops = schedule(pp, vpp, m, s)
            assert sorted(ops) == sorted((k, j, i) for k in "FB" for j in range(vpp) for i in range(m))


def test_memory_llama3_8b_adam_dp8_zero1_by_hand():
    w = workload_from_dict({"model": "llama-3-8b", "parallel": {"tp": 1, "pp": 1, "dp": 8, "global_batch_size": 8},
                            "grad_bytes": 4, "param_bytes": 2})
    # per layer: q,o 2·4096·4096 + k,v 2·4096·1024 + MLP 3·4096·14336 + norms 2·4096 = 218,112,000
    n = 32 * 218_112_000 + 2 * 128_256 * 4096  # + input embedding and output projection
    assert n == 8_030_257_152
    mem = estimate(w, distributed_optimizer=True)
    assert mem.weights_bytes == 2 * n
    assert mem.grads_bytes == 4 * n
    assert mem.optimizer_bytes == 12 * n / 8  # fp32 master, m, v sharded over 8 ranks
    assert mem.activations_bytes == 8192 * 4096 * 34 * 32  # s·h·34 per layer, one micro-batch in flight
    assert estimate(w, distributed_optimizer=False).optimizer_bytes == 12 * n


def test_cli_json_and_timeline(tmp_path, capsys):
    topo = tmp_path / "t.yaml"
    work = tmp_path / "w.yaml"
    topo.write_text(SMALL_YAML)
    work.write_text("model: {name: m, layers: 8, hidden: 1024, heads: 8, kv_heads: 8, ffn: 4096, vocab: 32000, "
                    "seq_len: 1024}\nparallel: {tp: 2, pp: 2, dp: 8, vpp: 2, global_batch_size: 32}\n"
                    "bucket_numel: 5000000\n")
    out = tmp_path / "tl.json"
    rc = main(["simulate", "--topology", str(topo), "--workload", str(work), "--strategy", "chunked",
               "--chunks", "2", "--json", "--timeline", str(out)])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["step_time_s"] > 0 and "breakdown" in data and "wan" in data["tiers"]
    spans = json.loads(out.read_text())["spans"]
    assert {"forward", "backward", "optimizer"} <= {s["kind"] for s in spans}
    assert all(s["end_s"] >= s["start_s"] for s in spans)
    rc = main(["simulate", "--topology", str(topo), "--workload", str(work), "--strategy", "hierarchical"])
    assert rc == 0 and "scaling efficiency" in capsys.readouterr().out


def test_cli_user_errors(capsys):
    assert main(["simulate", "--topology", "nope", "--workload", "llama-3-8b", "--strategy", "flat_ring"]) == 2
    assert "nope" in capsys.readouterr().err


def test_a_lagged_parameter_sync_overlaps_the_step_unless_it_is_longer_than_its_lag():
    """streaming_local_sgd with delay: the fragment's WAN sync runs beside the next step's
    compute instead of after the optimizer; only what exceeds `lag` steps is exposed."""
    from hdc.strategies import strategy_from_dict

    t = "nemotron-2dc"
    blocking = strategy_from_dict({"name": "streaming_local_sgd", "every": 8, "fragments": 4})
    overlapped = strategy_from_dict({"name": "streaming_local_sgd", "every": 8, "fragments": 4, "delay": 1})
    idle = simulate(t, "nemotron-4-340b", blocking, SimConstants(), baseline=False, train_step=1)  # none due
    a = simulate(t, "nemotron-4-340b", blocking, SimConstants(), baseline=False, train_step=0)
    b = simulate(t, "nemotron-4-340b", overlapped, SimConstants(), baseline=False, train_step=0)
    assert b.step_time_s < a.step_time_s  # the fragment no longer waits behind the optimizer
    assert b.step_time_s >= idle.step_time_s  # and it shares the network with the step's own syncs
