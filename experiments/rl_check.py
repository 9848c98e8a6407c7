"""simulate-rl checked against hdc's own trainer: a short probe calibrates the cost model on this
machine, then the model predicts the per-phase times `hdc train` logs.

The probe (`probe_worker`, one process per trainer rank, all at once, each with the run's
threads, so the ranks' contention for the cores is in the numbers; run before and again after
the run, since this machine's speed drifts over minutes) times, on the run's own model:
  train     forward + backward (+ log-softmax loss) of 16 x 48    -> the CPU's peak FLOP/s for the
            and 32 x 96 tokens                                       step model (compute_efficiency 1)
  forward   no-grad passes of the same                           -> `forward_compute_efficiency`
  decode    the run's generation backend (hdc's fast_generation  -> `decode_iteration_overhead_s`,
            for hf, the vLLM engine, built first as the trainer     `decode_compute_efficiency`,
            does, for vllm) on 24 and 160 completions of 24 tokens  fitted through decode_cost itself
  memory    a 64 MiB copy                                        -> `hbm_bandwidth_Bps`
  score     the recipe's reward functions on 64 completions      -> `reward_s`
  push      vllm only: `update_weights`                          -> `push_load_Bps_factor`
  skew      how far apart the workers end those passes, started  -> the slowest rank's lag (the
            together (several ranks only)                           logged time/*_s are maxima over
                                                                    ranks) and the first rank's wait
                                                                    in the sync (time/sync_s)
None of the probe's shapes is a run's; nothing is fitted to the runs being predicted. The
gradient sync of the emulated runs is the trainer's own plan on `hdc validate`'s calibrated
model, its collective probe run in the same network namespaces right before the run
(experiments/emulate/calibrate.py).

`predict(measurement)` turns one stored measurement (experiments/rl_measured/*.json, written by
benchmarks/rl_trainer_check.py) into an RLWorkload and a topology and runs `simulate_rl`; the
completion lengths are the run's logged means and maxima (an input, as they are to simulate-rl).
"""
from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

from hdc.topology import GPU, Site, Tier, Topology

MEASURED_DIR = Path(__file__).resolve().parent / "rl_measured"
# trainer metric -> what simulate-rl predicts for it
PHASES = {"time/generate_s": "generate", "time/score_s": "score", "time/reference_s": "logprobs",
          "time/update_s": "update", "time/sync_s": "sync", "time/weight_sync_s": "push", "time/step_s": "step"}
FORWARD_SHAPES = ((16, 48), (32, 96))  # (sequences, tokens) of the probe's passes
DECODE_ROWS = (24, 160)  # completions per probe generate call: below and above the runs' 32-128 per rank
DECODE_TOKENS = 24
SKIP_STEPS = 2  # the first steps pay warm-up (allocator, vLLM's first batches): left out of the means


# ----------------------------------------------------------------------------- the probe
def _times(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def _median_time(fn, repeats: int = 5) -> float:
    return statistics.median(_times(fn, repeats))


def probe_worker(recipe_path: str, out_path: str, start_at: float) -> None:
    """One rank's probe: raw timings into `out_path` (JSON). Waits until `start_at` (wall clock)
    so every rank's probe runs at once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.config import load_recipe
    from trainer.data import format_prompt, load_jsonl
    from trainer.generation import HFGenerationBackend, SamplingParams, encode_prompts
    from trainer.rewards import bind_params, resolve_reward, score
    from trainer.run import reward_params

    recipe = load_recipe(recipe_path)
    args = recipe.grpo
    torch.set_num_threads(args.torch_num_threads or 1)
    torch.manual_seed(0)
    model_dir = recipe.model.name_or_path
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = load_jsonl(recipe.data.train_file, "data.train_file")
    rows = list(data.select(range(min(64, len(data)))))
    texts = [format_prompt(tokenizer, r[recipe.data.prompt_column], recipe.data.system_prompt,
                           recipe.data.use_chat_template) for r in rows]
    vocab = model.config.vocab_size
    if recipe.generation.backend == "vllm":  # built first, as the trainer does: its threads share the cores
        from trainer.vllm_backend import make_generation_backend

        backend = make_generation_backend(recipe.vllm, model_dir, tokenizer, args.max_prompt_length, args.seed)
    else:
        backend = HFGenerationBackend(model, tokenizer, args.max_prompt_length, shared_prefill=args.fast_generation)
    time.sleep(max(0.0, start_at - time.time()))
    raw: dict = {"forward": [], "train": [], "decode": [], "backend": recipe.generation.backend,
                 "started_at": time.time()}
    for seqs, tokens in FORWARD_SHAPES:
        x = torch.randint(0, vocab, (seqs, tokens))
        with torch.no_grad():
            raw["forward"].append([seqs, tokens, _median_time(lambda: model(x))])

        def step():
            logits = model(x).logits[:, :-1].float()
            loss = torch.log_softmax(logits, -1).gather(-1, x[:, 1:, None]).mean()
            loss.backward()
        reps = _times(step, 3)
        raw["train"].append([seqs, tokens, statistics.median(reps)])
        raw.setdefault("train_repeats", []).append(reps)
        model.zero_grad(set_to_none=True)
    raw["passes_done_at"] = time.time()  # the same passes, started together on every worker
    big = torch.empty(16 << 20, dtype=torch.float32)  # 64 MiB
    raw["copy_Bps"] = 2 * big.numel() * 4 / _median_time(lambda: big.clone())

    params = SamplingParams(DECODE_TOKENS, temperature=1.0)
    for rows_per_call in DECODE_ROWS:
        p = max(1, rows_per_call // args.num_generations)
        batch = texts[:p]
        backend.generate(batch, args.num_generations, params)  # warm-up
        for _ in range(3):
            t = time.perf_counter()
            gen = backend.generate(batch, args.num_generations, params)
            took = time.perf_counter() - t
            prompt_len = int(encode_prompts(tokenizer, batch, args.max_prompt_length)["input_ids"].shape[1])
            raw["decode"].append({"prompts": p, "prompt_tokens": prompt_len, "seconds": took,
                                  "lengths": [len(c) for c in gen.completion_ids]})
    if recipe.generation.backend == "vllm":
        raw["push_s"] = _median_time(lambda: backend.update_weights(model), 3)
        raw["push_bytes"] = sum(p.numel() * 4 for p in model.parameters())
    funcs = [bind_params(resolve_reward(s.func, f"rewards[{i}].func"), reward_params(recipe, s))
             for i, s in enumerate(recipe.rewards)]
    weights = [s.weight for s in recipe.rewards]
    completions = [f"<think>{r.get('answer', '')}</think><answer>{r.get('answer', '')}</answer>" for r in rows]
    prompts = [r[recipe.data.prompt_column] for r in rows]
    columns = {k: [r[k] for r in rows] for k in rows[0] if k != recipe.data.prompt_column}
    raw["score_s"] = _median_time(lambda: score(funcs, weights, prompts, completions, columns), 3) / len(completions)
    Path(out_path).write_text(json.dumps(raw))


def run_probe(recipe_path: str, procs: int, work: Path, python: str | None = None, env: dict | None = None) -> list:
    """`procs` probe workers at once (the run's process count); their raw timings (one session)."""
    import subprocess
    import sys

    work.mkdir(parents=True, exist_ok=True)
    start_at = time.time() + 20.0  # every worker has imported torch and loaded the model by then
    jobs, outs = [], []
    for r in range(procs):
        out = work / f"probe.{r}.json"
        outs.append(out)
        jobs.append(subprocess.Popen([python or sys.executable, "-m", "experiments.rl_check", "probe", recipe_path, str(out),
                                      repr(start_at)], cwd=Path(__file__).resolve().parents[1],
                                     env={**os.environ, **(env or {})}))
    for j in jobs:
        if j.wait(timeout=900) != 0:
            raise RuntimeError(f"probe worker failed with exit code {j.returncode}")
    return [json.loads(o.read_text()) for o in outs]


def merge_probes(sessions: list[list[dict]]) -> dict:
    """One probe from its sessions (before and after the run), each a list of the workers that
    ran together: every timing the median over all workers, the rank skew the sessions' mean."""
    runs = [r for session in sessions for r in session]
    out = dict(runs[0])
    out.pop("train_repeats", None)
    for key in ("copy_Bps", "score_s", "push_s"):
        if key in out:
            out[key] = statistics.median(r[key] for r in runs)
    for key in ("forward", "train"):
        out[key] = [[a, b, statistics.median(r[key][i][2] for r in runs)] for i, (a, b, _) in enumerate(out[key])]
    out["decode"] = [d for r in runs for d in r["decode"]]
    out["procs"], out["sessions"] = len(sessions[0]), len(sessions)
    # rank skew: the same passes, started together on every worker, end apart. The last ends
    # `rank_lag` after the mean (it is the one a logged time/*_s, the maximum over ranks, shows),
    # the first waits `rank_skew` for it in the sync: both as fractions of the mean duration
    skews, lags = [], []
    for session in sessions:
        if len(session) > 1:
            ends = [r["passes_done_at"] for r in session]
            took = statistics.mean(r["passes_done_at"] - r["started_at"] for r in session)
            skews.append((max(ends) - min(ends)) / took)
            lags.append((max(ends) - statistics.mean(ends)) / took)
    out["rank_skew"] = statistics.mean(skews) if skews else 0.0
    out["rank_lag"] = statistics.mean(lags) if lags else 0.0
    return out


# ----------------------------------------------------------------------------- the fit
def model_spec(config: dict, name: str = "tiny"):
    """The simulator's ModelSpec of a transformers config (config.json's fields)."""
    from hdc.config import from_dict
    from hdc.workload import ModelSpec

    heads = config["num_attention_heads"]
    spec = {"name": name, "layers": config["num_hidden_layers"], "hidden": config["hidden_size"], "heads": heads,
            "kv_heads": config.get("num_key_value_heads") or heads, "ffn": config["intermediate_size"],
            "vocab": config["vocab_size"], "seq_len": 128, "gated_mlp": True,
            "tied_embeddings": bool(config.get("tie_word_embeddings", False))}
    if config.get("head_dim"):
        spec["head_dim"] = config["head_dim"]
    return from_dict(ModelSpec, spec, "model")


def _solve(f, target: float, lo: float, hi: float) -> float:
    """x in [lo, hi] (geometric bisection) where the decreasing f(x) = target."""
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if f(mid) > target else (lo, mid)
    return math.sqrt(lo * hi)


def cpu_gpu(peak_flops: float) -> GPU:
    return GPU(name="cpu-rank", peak_flops=peak_flops, memory_bytes=64e9, generation="generic")


def _train_pass_s(model, seqs: int, tokens: int, peak: float, c) -> float:
    """Forward + backward of one micro-batch on `peak` at c's efficiency, as the step model times it."""
    from hdc.workload import Parallel, Workload
    from simulator.compute import layer_times, logits_times

    w = Workload(model=replace(model, seq_len=tokens), parallel=Parallel(micro_batch_size=seqs, global_batch_size=seqs))
    eff, hbm = c.compute_efficiency, c.hbm_Bps("generic")
    layer = layer_times(w, peak, eff, "generic", c.activation_bytes, hbm)
    lf, lb = logits_times(w, peak, eff, "generic", c.activation_bytes, hbm)
    return model.layers * (layer.forward_s + layer.backward_s) + lf + lb


def fit(raw: dict, model) -> dict:
    """The probe's timings as the cost model's constants (JSON-able: peak_flops, SimConstants and
    RLConstants fields, reward_s)."""
    from simulator.model import SimConstants
    from simulator.rl import forward_pass_s

    c = SimConstants(compute_efficiency=1.0, activation_bytes=4, hbm_bandwidth_Bps=raw["copy_Bps"])
    # the peak at which the step model's forward + backward passes (GEMMs and memory-bound
    # operators alike) take the probe's total time; then the no-grad passes' efficiency on it
    train_total = sum(t for _, _, t in raw["train"])
    peak = _solve(lambda x: sum(_train_pass_s(model, s, t, x, c) for s, t, _ in raw["train"]), train_total,
                  1e6, 1e15)
    fwd_total = sum(t for _, _, t in raw["forward"])
    fwd_eff = min(1.0, _solve(lambda e: sum(forward_pass_s(model, t, s, 1, cpu_gpu(peak),
                                                           replace(c, compute_efficiency=e))
                                            for s, t, _ in raw["forward"]), fwd_total, 1e-4, 1.0))
    # decode: simulate-rl's own decode model (simulator.rl.decode_cost: each iteration the larger
    # of its GEMMs and its weight + KV reads, plus a fixed overhead) on each probe's lengths; the
    # overhead is linear in it (least squares for each efficiency), the efficiency a 1-D search
    overhead, decode_eff = _fit_decode(raw, model, peak, replace(c, compute_efficiency=fwd_eff))
    out = {"peak_flops": peak, "forward_compute_efficiency": fwd_eff, "hbm_bandwidth_Bps": raw["copy_Bps"],
           "decode_iteration_overhead_s": overhead, "decode_compute_efficiency": decode_eff,
           "reward_s": raw["score_s"]}
    if "push_s" in raw:  # load time = bytes * factor / memory bandwidth
        out["push_load_Bps_factor"] = raw["push_s"] * raw["copy_Bps"] / raw["push_bytes"]
    return out


def _probe_workload(model, backend: str, rows: int, prompt_tokens: int, longest: int):
    from simulator.rl import Lengths, RLWorkload

    return RLWorkload(model=model, prompts_per_step=1, num_generations=max(2, rows),
                      prompt_length=Lengths(mean=prompt_tokens, max=prompt_tokens),
                      completion_length=Lengths(mean=longest, max=longest), backend=backend, weight_bytes=4,
                      max_num_seqs=rows)


def _fit_decode(raw: dict, model, peak: float, fc) -> tuple[float, float]:
    """(decode_iteration_overhead_s, decode_compute_efficiency) of the probe's generate calls."""
    from simulator.rl import RLConstants, _Decoder, decode_cost, forward_pass_s

    topo = one_rank(cpu_gpu(peak))
    c = replace(fc, compute_efficiency=1.0)
    cases = []
    for d in raw["decode"]:
        lengths = d["lengths"]
        work = _probe_workload(model, raw.get("backend", "hf"), len(lengths), d["prompt_tokens"], max(lengths))
        prefill = forward_pass_s(model, d["prompt_tokens"], d["prompts"], 1, topo.gpu, fc)
        cases.append((work, lengths, d["prompt_tokens"], d["seconds"] - prefill))

    def residual(eff: float) -> tuple[float, float]:
        xs, ys = [], []
        for work, lengths, p, target in cases:
            rc = RLConstants(decode_compute_efficiency=eff, decode_bandwidth_efficiency=1.0,
                             decode_iteration_overhead_s=0.0)
            cost = decode_cost(work, _Decoder(work, topo, c, rc), [p] * len(lengths), lengths, len(lengths))
            xs.append(cost.iterations)
            ys.append(target - cost.time_s)
        overhead = max(0.0, sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs))
        return sum((y - overhead * x) ** 2 for x, y in zip(xs, ys)), overhead

    lo, hi = math.log(1e-3), 0.0  # golden-section search on log(efficiency) in [0.001, 1]
    g = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if residual(math.exp(a))[0] < residual(math.exp(b))[0]:
            hi = b
        else:
            lo = a
    eff = math.exp((lo + hi) / 2)
    return residual(eff)[1], eff


# ----------------------------------------------------------------------------- the prediction
def _lengths(values: list[float], maxima: list[float]):
    from simulator.rl import Lengths

    top = max(1, round(statistics.mean(maxima)))
    return Lengths(mean=min(statistics.mean(values), top), max=top)


def one_rank(gpu: GPU) -> Topology:
    """One process on this machine: one site of one rank."""
    link = Tier(latency_s=1e-6, bandwidth_Bps=1e12)
    return Topology(name="this-machine", gpu=gpu, wan=[], description="one process on this machine",
                    sites=[Site(name="local", nodes=1, gpus_per_node=1, intra_node=link, intra_pod=link,
                                intra_site=link)])


def topology_of(m: dict, gpu: GPU) -> Topology:
    """The run's topology with the probe's CPU rank as its GPU: one site of one rank, or the
    emulated sites as `hdc validate`'s calibration models them (calibrate.fit, model_for)."""
    if m["config"].get("topology") is None:
        return one_rank(gpu)
    from hdc.topology import topology_from_dict
    from experiments.emulate import calibrate

    topo = topology_from_dict(m["config"]["topology"])
    model_topo, _ = calibrate.model_for(topo, calibrate.fit(topo, m["collective_calibration"]))
    return replace(model_topo, gpu=gpu)


def workload_of(m: dict):
    from simulator.rl import RLWorkload, TrainLayout

    cfg, steps = m["config"], steady(m["steps"])
    g = cfg["grpo"]
    procs = cfg["procs"]
    return RLWorkload(
        model=model_spec(m["model_config"]), prompts_per_step=g["prompts_per_step"],
        num_generations=g["num_generations"],
        prompt_length=_lengths([m["prompt_tokens"]["mean"]], [m["prompt_tokens"]["max"]]),
        completion_length=_lengths([s["completions/mean_length"] for s in steps],
                                   [s["completions/max_length"] for s in steps]),
        num_iterations=g["num_iterations"], beta=g["beta"],
        train=TrainLayout(micro_batch_size=g["per_device_train_batch_size"], recompute="none"),
        backend=cfg["backend"], max_num_seqs=g["prompts_per_step"] * g["num_generations"] // procs,
        weight_bytes=4, reward_s=m["fit"]["reward_s"], padding="padded", shared_prompt=True,
        behaviour_logprobs="sampler")


def steady(steps: list[dict]) -> list[dict]:
    return steps[SKIP_STEPS:] or steps


def predict(m: dict) -> dict[str, float]:
    """simulate-rl's prediction of the trainer metrics (seconds per step) of measurement `m`."""
    from hdc.strategies import make_strategy
    from simulator.model import SimConstants
    from simulator.rl import RLConstants, simulate_rl

    f = m["fit"]
    gpu = cpu_gpu(f["peak_flops"])
    topo = topology_of(m, gpu)
    c = SimConstants(compute_efficiency=1.0, activation_bytes=4,
                     hbm_bandwidth_Bps=f["hbm_bandwidth_Bps"], optimizer_bytes_per_param=16.0 * 2,
                     wan_efficiency=1.0)
    rc = RLConstants(decode_iteration_overhead_s=f["decode_iteration_overhead_s"],
                     decode_compute_efficiency=f["decode_compute_efficiency"],
                     forward_compute_efficiency=f["forward_compute_efficiency"],
                     decode_bandwidth_efficiency=1.0, push_load_Bps_factor=f.get("push_load_Bps_factor", 2.0))
    strategy = make_strategy(m["config"].get("strategy") or "flat_ring", **m["config"].get("knobs", {}))
    r = simulate_rl(topo, workload_of(m), "colocated", strategy, c, rc)
    modelled = max(0.0, r.detail_s["sync_s"])  # (-1e-17 on one rank)
    out = {"generate": r.phases_s["generate"], "score": r.phases_s["score"], "logprobs": r.phases_s["logprobs"],
           "update": r.phases_s["train"] - modelled, "sync": modelled, "push": r.phases_s["push"]}
    if m["config"].get("topology"):
        # the logged compute phases are the slowest rank's, the logged sync the first rank's wait: the
        # collective, and the slowest rank's lead over it in the compute before the sync (the probe's skew)
        compute = sum(out[p] for p in ("generate", "score", "logprobs", "update"))
        lag, skew = m["probe"].get("rank_lag", 0.0), m["probe"].get("rank_skew", 0.0)
        for p in ("generate", "score", "logprobs", "update"):
            out[p] *= 1.0 + lag
        out["sync"] = sync_s(m, strategy) + skew * compute
    out["step"] = sum(out.values())  # colocated: the phases one after the other (simulate_rl's step time)
    assert math.isclose(r.step_time_s, sum(r.phases_s.values()), rel_tol=1e-9)
    return out


def sync_s(m: dict, strategy) -> float:
    """Mean gradient/parameter sync per steady step of an emulated run: the trainer's own plan
    (hdc.sync.bucket_plans over the model's buckets) timed by `hdc validate`'s calibrated model
    (the simulator's pipelined mode with gloo's ring, experiments/emulate/executor.predict_s),
    with the steps each logged step runs (a local_sgd parameter sync only every `every` steps)."""
    from hdc.plan import Plan
    from hdc.sync import bucket_plans
    from hdc.topology import topology_from_dict
    from experiments.emulate import calibrate
    from experiments.emulate.executor import predict_s

    topo = topology_from_dict(m["config"]["topology"])
    model_topo, pipeline = calibrate.model_for(topo, calibrate.fit(topo, m["collective_calibration"]))
    plan = bucket_plans(strategy, model_topo, [list(range(model_topo.num_gpus))], m["buckets"], "fp32").plan
    times = []
    for row in steady(m["steps"]):
        due = [st for st in plan.steps if st.active(row["step"] - 1)]  # logged step k ran train_step k - 1
        times.append(predict_s(model_topo, Plan(plan.numel, plan.element_size, due, plan.strategy, plan.ranks),
                               pipeline)[0] if due else 0.0)
    return statistics.mean(times)


def measured(m: dict) -> dict[str, float]:
    """The mean of each trainer metric over the steady steps."""
    steps = steady(m["steps"])
    return {phase: statistics.mean(s.get(metric, 0.0) for s in steps) for metric, phase in PHASES.items()}


def compare(measurements: list[dict]) -> dict:
    """Per configuration: measured and predicted per phase and their error; per phase the median
    |error| over the configurations where the phase takes at least 5 ms."""
    rows = []
    for m in measurements:
        meas, pred = measured(m), predict(m)
        errors = {p: (pred[p] - meas[p]) / meas[p] for p in meas if meas[p] >= 5e-3}
        rows.append({"name": m["name"], "describe": m["describe"], "measured": meas, "predicted": pred,
                     "error": errors})
    phases = [p for p in PHASES.values()]
    medians = {p: statistics.median(abs(r["error"][p]) for r in rows if p in r["error"])
               for p in phases if any(p in r["error"] for r in rows)}
    return {"rows": rows, "median_abs_error": medians}


def load_measurements(folder: Path = MEASURED_DIR) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def format_table(result: dict) -> str:
    phases = list(PHASES.values())
    lines = ["config".ljust(34) + "".join(p.rjust(18) for p in phases)]
    for r in result["rows"]:
        cells = []
        for p in phases:
            a, b = r["measured"][p], r["predicted"][p]
            e = r["error"].get(p)
            cells.append((f"{a:.3f}/{b:.3f}" + (f" {e:+.0%}" if e is not None else "   -")).rjust(18))
        lines.append(r["name"].ljust(34) + "".join(cells))
    lines.append("median |error|".ljust(34) + "".join(
        (f"{result['median_abs_error'][p]:.1%}" if p in result["median_abs_error"] else "-").rjust(18) for p in phases))
    return "\n".join(lines)


if __name__ == "__main__":  # the stored measurements re-predicted; `probe RECIPE OUT START_AT`: a probe worker
    import sys

    if sys.argv[1:2] == ["probe"]:
        probe_worker(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    else:
        print(format_table(compare(load_measurements())))
