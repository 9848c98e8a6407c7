"""`hdc simulate-rl`: each phase's cost model against a hand computation, the placements'
step composition (colocated, split, async K), the weight push's bytes, and bad input."""
import json
import math

import pytest

from hdc.cli import main
from hdc.config import from_dict
from hdc.errors import UserError
from hdc.topology import topology_from_dict
from simulator import SimConstants
from simulator.rl import (Lengths, RLConstants, RLPlacement, _Decoder, decode_cost, forward_pass_s,
                          kv_bytes_per_token, rl_workload_from_dict, simulate_rl)


def two_sites(nodes=2, rtt="10ms", bandwidth="100Gbps"):
    return topology_from_dict({
        "name": "rl-2site", "gpu": {"name": "h100", "peak_flops": "989TFLOPS", "memory": "80GB",
                                       "generation": "hopper"},
        "site_defaults": {"nodes": nodes, "gpus_per_node": 8,
                          "intra_node": {"latency": "3us", "bandwidth": "450GB/s"},
                          "intra_pod": {"latency": "5us", "bandwidth": "400Gbps"}},
        "sites": [{"name": "a"}, {"name": "b"}],
        "wan": [{"sites": ["a", "b"], "rtt": rtt, "bandwidth": bandwidth}]})


def workload(**kw):
    data = {"model": "llama-3-8b", "prompts_per_step": 64, "num_generations": 8,
            "prompt_length": {"mean": 256, "max": 512}, "completion_length": {"mean": 1024, "max": 4096},
            "beta": 0.04, "train": {"tp": 8, "micro_batch_size": 1}, **kw}
    return rl_workload_from_dict(data)


def placement(**kw):
    return from_dict(RLPlacement, kw, "placement")


def test_forward_pass_and_kv_bytes_by_hand():
    from hdc.topology import GPU

    m = workload().model  # llama-3-8b: 32 layers, 32 heads × 128, 8 KV heads
    # untiled ('generic'), GEMMs and attention compute-bound: PaLM's forward FLOPs over peak × efficiency,
    # plus the elementwise ops (norms, residuals, SwiGLU) read and written at HBM bandwidth
    gpu, c = GPU(peak_flops=1e15, generation="generic"), SimConstants(compute_efficiency=0.5)
    tokens, s = 64 * 2048, 2048
    flops = tokens * (2 * (m.matmul_params - 2 * m.hidden * m.layers) + 4 * 32 * 32 * 128 * s)  # norms: no GEMM
    elementwise_bytes = 32 * tokens * 2 * (10 * 4096 + 3 * 14336)
    expected = flops / (1e15 * 0.5) + elementwise_bytes / c.hbm_Bps("generic")
    assert forward_pass_s(m, s, 64, 1, gpu, c) == pytest.approx(expected, rel=1e-3)
    assert kv_bytes_per_token(m, 1, 2) == 2 * 32 * 8 * 128 * 2 == 131072
    assert kv_bytes_per_token(m, 2, 2) == 65536
    assert kv_bytes_per_token(m, 16, 2) == 2 * 32 * 1 * 128 * 2  # KV heads replicated past 8


def test_decode_span_is_the_sum_of_its_iterations():
    topo, work = two_sites(), workload()
    dec = _Decoder(work, topo, SimConstants(), RLConstants())
    for n, ctx, k in ((1, 100, 50), (256, 256 * 300, 400), (4096, 10, 7)):
        explicit = sum(max(dec.compute_per_seq * n, dec.weights_s + dec.kv_per_token_s * (ctx + n * i))
                       + dec.overhead_s + dec.tp_fixed_s + dec.tp_per_seq_s * n for i in range(k))
        assert dec.span(n, ctx, k) == pytest.approx(explicit, rel=1e-12)


def test_continuous_batching_refills_slots_and_static_batches_wait_for_the_longest():
    topo = two_sites()
    work = workload()
    dec = _Decoder(work, topo, SimConstants(), RLConstants())
    # equal lengths: waves of `slots` sequences, each `length` iterations
    same = decode_cost(work, dec, [100] * 10, [50] * 10, slots=4)
    assert same.iterations == 50 * 3
    assert same.time_s == pytest.approx(2 * dec.span(4, 400, 50) + dec.span(2, 200, 50))
    # one long, one short: vLLM drops to one sequence after the short one ends; hf computes both
    vllm = decode_cost(work, dec, [100, 100], [10, 1000], slots=8)
    assert vllm.time_s == pytest.approx(dec.span(2, 200, 10) + dec.span(1, 110, 990))
    hf = decode_cost(rl_workload_from_dict({**_raw(), "backend": "hf"}), dec, [100, 100], [10, 1000], slots=8)
    assert hf.iterations == 1000 and hf.time_s == pytest.approx(dec.span(2, 200, 1000))
    assert hf.time_s > vllm.time_s
    assert vllm.tail_s == pytest.approx(dec.span(1, 110, 990))  # the long tail: one sequence left


def _raw():
    return {"model": "llama-3-8b", "prompts_per_step": 64, "num_generations": 8,
            "prompt_length": {"mean": 256, "max": 512}, "completion_length": {"mean": 1024, "max": 4096}}


@pytest.mark.parametrize("mean,top", [(1024, 4096), (3500, 4096), (50, 50), (1, 4096), (2000, 2001)])
def test_lengths_keep_their_mean_and_longest(mean, top):
    lengths = from_dict(Lengths, {"mean": mean, "max": top})
    counts = lengths.counts(1000)
    assert sum(c for _, c in counts) == 1000
    assert max(n for n, _ in counts) == top
    got = sum(n * c for n, c in counts) / 1000
    assert got == pytest.approx(mean, rel=0.05, abs=top / 1000 + 1)


def test_histogram_lengths_are_shares():
    lengths = from_dict(Lengths, {"histogram": {100: 3, 1000: 1}})
    assert lengths.counts(8) == [(100, 6), (1000, 2)]
    assert lengths.longest == 1000


def test_placements_compose_the_phases():
    topo, work = two_sites(), workload()
    col = simulate_rl(topo, work, placement(kind="colocated"))
    d = col.phases_s
    assert col.step_time_s == pytest.approx(sum(d.values()), rel=1e-9)
    split = simulate_rl(topo, work, placement(kind="split", generator_sites=["b"]))
    s = split.phases_s
    assert split.step_time_s == pytest.approx(sum(s.values()), rel=1e-9)  # sync: nothing overlaps
    asy = simulate_rl(topo, work, placement(kind="async", generator_sites=["b"], async_steps=1))
    a = asy.phases_s
    assert a == s  # same phases, overlapped
    assert asy.step_time_s == pytest.approx(max(a["generate"] + a["score"], a["logprobs"] + a["train"],
                                                (a["generate"] + a["score"] + a["logprobs"] + a["train"]
                                                 + a["push"]) / 2), rel=1e-9)
    assert asy.step_time_s < split.step_time_s and asy.staleness_steps == 1 and split.staleness_steps == 0
    # split: half the GPUs generate, twice the sequences per engine; decode reads the weights once
    # per iteration whatever the batch, so it takes longer but far less than twice as long
    assert split.engines == col.engines // 2
    assert d["generate"] < s["generate"] < 1.5 * d["generate"]
    assert set(split.busy["b"]) == set(split.busy["a"])
    assert split.busy["b"]["train"] == 0 and split.busy["a"]["generate"] == 0
    spans = asy.timeline()["spans"]
    assert {x["rank"] for x in spans} == {"generators", "trainers", "network"}


def test_a_deeper_async_lag_never_slows_the_step():
    topo, work = two_sites(rtt="40ms", bandwidth="10Gbps"), workload()
    times = [simulate_rl(topo, work, placement(kind="async", generator_sites=["b"], async_steps=k)).step_time_s
             for k in (1, 2, 3)]
    assert times[0] >= times[1] - 1e-9 >= times[2] - 2e-9


def test_weight_push_crosses_the_wan_once_per_generating_site():
    topo, work = two_sites(bandwidth="100Gbps"), workload()
    m = work.model
    bf16 = simulate_rl(topo, work, placement(kind="split", generator_sites=["b"]))
    assert bf16.bytes_by_tier["wan"] - bf16.train_step["tiers"].get("wan", {"bytes": 0})["bytes"] == m.num_params * 2
    # one copy over a 100 Gb/s link at 90% goodput, 5 ms one way, then a pipelined broadcast to
    # site b's 16 engines over 400 Gb/s NICs (5 hops of 5 us), then each engine loads it in HBM
    wan_s = 0.005 + m.num_params * 2 / (100e9 / 8 * 0.9)
    fan_s = m.num_params * 2 / (400e9 / 8) + 5 * 5e-6
    load_s = m.num_params * 2 * 2 / SimConstants().hbm_Bps("hopper")
    assert bf16.phases_s["push"] == pytest.approx(wan_s + fan_s + load_s)
    int8 = simulate_rl(topo, work, placement(kind="split", generator_sites=["b"], push_wire="int8"))
    assert int8.phases_s["push"] < 0.55 * bf16.phases_s["push"]
    frac = simulate_rl(topo, work, placement(kind="split", generator_fraction=0.5))
    assert frac.bytes_by_tier["wan"] == frac.train_step["tiers"]["wan"]["bytes"]  # generators in every site
    col = simulate_rl(topo, work, placement(kind="colocated"))
    assert col.phases_s["push"] < 0.01 * bf16.phases_s["push"]


def test_slow_wan_hurts_colocated_training_but_not_split_training():
    work = workload()
    fast, slow = two_sites(bandwidth="400Gbps"), two_sites(bandwidth="1Gbps")
    col = [simulate_rl(t, work, placement(kind="colocated")).phases_s["train"] for t in (fast, slow)]
    split = [simulate_rl(t, work, placement(kind="split", generator_sites=["b"])).phases_s["train"]
             for t in (fast, slow)]
    assert col[1] > 2 * col[0]
    assert split[1] == pytest.approx(split[0])  # the trainers are all in site a


def test_kv_memory_limits_the_batch_and_too_big_a_model_is_refused():
    topo = two_sites()
    small = simulate_rl(topo, workload(max_num_seqs=100000), placement(kind="colocated"))
    kv = 131072 * (256 + 1024)  # bytes per sequence, llama-3-8b at tp 1
    weights = workload().model.num_params * 2
    assert small.slots_per_engine == int((80e9 * 0.9 - weights) // kv)
    with pytest.raises(Exception, match="generation_tp"):
        simulate_rl(topo, workload(model="nemotron-4-340b", train={"tp": 8, "pp": 8}), placement(kind="colocated"))


def test_cli_prints_json_and_a_timeline(tmp_path, capsys):
    out = tmp_path / "t.json"
    rc = main(["simulate-rl", "--topology", "nemotron-2dc", "--workload", "deepscaler-1.5b", "--placement",
               "async", "--generators", "dc-b", "--json", "--timeline", str(out)])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["staleness_steps"] == 1 and math.isfinite(res["step_time_s"])
    assert set(res["phases_s"]) == {"generate", "score", "logprobs", "train", "push"}
    spans = json.loads(out.read_text())["spans"]
    assert spans and all(s["end_s"] >= s["start_s"] for s in spans)
    assert main(["simulate-rl", "--topology", "nemotron-2dc", "--workload", "deepscaler-1.5b"]) == 0
    assert "step time" in capsys.readouterr().out


@pytest.mark.parametrize("args,field", [
    (["--placement", "split"], "--generators"),
    (["--placement", "split", "--generators", "dc-z"], "generator_sites"),
    (["--placement", "split", "--generators", "1.5"], "generator_fraction"),
    (["--placement", "split", "--generators", "dc-a,dc-b"], "generator_sites"),
    (["--placement", "async", "--generators", "dc-b", "--async-steps", "0"], "--async-steps"),
    (["--placement", "colocated", "--generators", "dc-b"], "placement.kind"),
    (["--push-wire", "fp4"], "--push-wire"),
    (["--workload", "no-such-rl"], "RL workload"),
    (["--timeline", "/no/such/folder/rl.json"], "--timeline"),
])
def test_bad_flags_are_one_line_and_exit_2(args, field, capsys):
    base = ["simulate-rl", "--topology", "nemotron-2dc", "--workload", "deepscaler-1.5b"]
    if "--workload" in args:
        base = base[:3]
    assert main(base + args) == 2
    err = capsys.readouterr().err.strip()
    assert field in err and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("change,field", [
    ({"completion_length": {"mean": 5000, "max": 4096}}, "completion_length.mean"),
    ({"completion_length": {"mean": float("nan"), "max": 4096}}, "completion_length.mean"),
    ({"completion_length": {"max": 4096}}, "completion_length"),
    ({"completion_length": {"histogram": {0: 1}}}, "completion_length.histogram"),
    ({"completion_length": {"histogram": {10: -1}}}, "completion_length.histogram"),
    ({"completion_length": {"histogram": {10: 1}, "mean": 3}}, "completion_length"),
    ({"num_generations": 1}, "num_generations"),
    ({"beta": -0.1}, "beta"),
    ({"backend": "sglang"}, "backend"),
    ({"kv_cache_fraction": 0}, "kv_cache_fraction"),
    ({"train": {"pp": 3}}, "train.pp"),
    ({"model": "gpt-5"}, "model"),
    ({"train": {"recompute": "half"}}, "train.recompute"),
    ({"generation_tp": 3}, "generation_tp"),
    ({"prompts_per_step": float("inf")}, "prompts_per_step"),
])
def test_bad_rl_workloads_name_the_field(change, field, tmp_path, capsys):
    import yaml

    path = tmp_path / "rl.yaml"
    path.write_text(yaml.safe_dump({**_raw(), **change}))
    rc = main(["simulate-rl", "--topology", "nemotron-2dc", "--workload", str(path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and field in err and "\n" not in err, err


def test_a_row_holds_every_phase_flat():
    r = simulate_rl(two_sites(), workload(), placement(kind="split", generator_sites=["b"]))
    row = r.row()
    assert row["step_time_s"] == r.step_time_s and row["push_s"] == r.phases_s["push"]
    assert all(isinstance(v, (int, float, str)) for v in row.values())


def test_a_sweep_varies_placement_and_wan_for_simulate_rl(tmp_path, capsys):
    import csv

    import yaml

    grid = {"base": {"topology": "rl-2dc", "workload": "deepscaler-1.5b", "strategy": "hierarchical"},
            "grid": {"placement": [{"kind": "colocated"}, {"kind": "async", "generator_sites": ["dc-b"]}],
                     "topology.wan[0].bandwidth": ["1Gbps", "100Gbps"]},
            "evaluate": "simulate_rl"}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid))
    out = tmp_path / "rl.csv"
    assert main(["sweep", "--grid", str(path), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 4 and {"step_time_s", "generate_s", "push_s", "staleness_steps"} <= set(rows[0])
    from dataclasses import replace

    from hdc.topology import load_topology

    topo = load_topology("rl-2dc")  # the row equals the API's answer for the same inputs
    slow = replace(topo, wan=[replace(topo.wan[0], bandwidth_Bps=1e9 / 8)])
    want = simulate_rl(slow, "deepscaler-1.5b", placement(kind="async", generator_sites=["dc-b"]), "hierarchical")
    got = [r for r in rows if r["topology.wan[0].bandwidth"] == "1Gbps" and r["staleness_steps"] == "1"]
    assert len(got) == 1 and float(got[0]["step_time_s"]) == pytest.approx(want.step_time_s, rel=1e-9)
    # a placement section outside simulate_rl, and faults inside it, are refused before any work
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**grid, "evaluate": "simulate"}))
    assert main(["sweep", "--grid", str(bad), "--out", str(tmp_path / "x.csv")]) == 2
    assert "placement: only for evaluate simulate_rl" in capsys.readouterr().err
    bad.write_text(yaml.safe_dump({**grid, "base": {**grid["base"], "faults": {"slow_gpu_factor": 2}}}))
    assert main(["sweep", "--grid", str(bad), "--out", str(tmp_path / "y.csv")]) == 2
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "y.csv").exists()


def test_how_a_trainer_lays_out_its_batches():
    """padding, shared_prompt and behaviour_logprobs: what hdc's (and TRL's) trainer does vs packing."""
    packed = workload()
    assert packed.train_seq_len == round(packed.prompt_length.average + packed.completion_length.average)
    padded = workload(padding="padded")
    assert padded.train_seq_len == 512 + 4096
    shared = workload(padding="padded", shared_prompt=True)
    assert shared.train_seq_len == round(512 / 8 + 4096)
    topo = two_sites()
    auto = simulate_rl(topo, workload(backend="vllm"), placement(), "hierarchical")
    sampler = simulate_rl(topo, workload(backend="vllm", behaviour_logprobs="sampler"), placement(), "hierarchical")
    assert auto.detail_s["behaviour_s"] > 0 and sampler.detail_s["behaviour_s"] == 0
    reused = simulate_rl(topo, workload(backend="vllm", behaviour_logprobs="sampler", num_iterations=2), placement(),
                         "hierarchical")
    assert reused.detail_s["behaviour_s"] > 0  # a reused batch needs its behaviour log-probs whatever the engine
    hf = simulate_rl(topo, workload(backend="hf"), placement(), "hierarchical")
    hf_shared = simulate_rl(topo, workload(backend="hf", shared_prompt=True), placement(), "hierarchical")
    assert hf_shared.detail_s["prefill_s"] < hf.detail_s["prefill_s"] / 4  # one prefill per prompt, not per row


def test_forward_and_decode_efficiencies_default_to_the_step_models():
    topo, work = two_sites(), workload()
    base = simulate_rl(topo, work, placement(), "hierarchical")
    same = simulate_rl(topo, work, placement(), "hierarchical",
                       rl_constants=RLConstants(forward_compute_efficiency=SimConstants().compute_efficiency,
                                                decode_compute_efficiency=SimConstants().compute_efficiency))
    assert same.step_time_s == pytest.approx(base.step_time_s, rel=1e-12)
    slow = simulate_rl(topo, work, placement(), "hierarchical",
                       rl_constants=RLConstants(forward_compute_efficiency=0.2))
    assert slow.detail_s["reference_s"] > 3 * base.detail_s["reference_s"]
    assert slow.phases_s["train"] == pytest.approx(base.phases_s["train"], rel=1e-12)


@pytest.mark.parametrize("field, value, allowed", [("padding", "ragged", "packed"),
                                                   ("behaviour_logprobs", "engine", "sampler")])
def test_bad_batch_layout_names_the_field(field, value, allowed):
    with pytest.raises(UserError, match=rf"^{field}: must be one of .*{allowed}.*got .{value}."):
        workload(**{field: value})
