"""One GRPO step across sites: where rollouts run, where training runs, how weights reach the
generators (`hdc simulate-rl`, `simulate_rl(...)`).

A GRPO step is generation (prefill, then decode until the longest completion ends), scoring,
the reference and behaviour log-probs, the optimizer steps (the existing step model, gradient
sync by any registered strategy), and the weight push to the generators. Three placements:

  colocated  every GPU generates, then trains (TRL / verl colocate); the push is a copy in HBM.
  split      some GPUs or whole sites generate, the others train; new weights are pushed to
             the generators every step (one copy per site over the WAN, then fan-out in it).
  async K    split, and generation of step t+K overlaps training of step t: rollouts are
             K steps stale (PRIME-RL / INTELLECT-2, AReaL); the loss's importance ratio
             corrects for it.

Each phase's cost model is a function below with its formula and source in its docstring.
The step itself is a SimPy process per GPU group (generators, trainers), so the steady-state
step time, the overlap of async steps and a Gantt chart come out of one run.
"""
from __future__ import annotations

import heapq
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Optional, Union

import simpy

from hdc.config import from_dict, load_yaml, meta, preset_source, yaml_names
from hdc.errors import UserError
from hdc.strategies import Strategy, make_strategy
from hdc.topology import Topology, load_topology
from hdc.units import fmt_bytes, fmt_time
from hdc.wire import payload_bytes
from hdc.workload import MODELS, ModelSpec, Parallel, Workload
from simulator.compute import layer_times, logits_times
from simulator.model import SimConstants

RL_WORKLOAD_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workloads", "rl")
PLACEMENTS = ("colocated", "split", "async")
PHASES = ("generate", "score", "logprobs", "train", "push")


# ----------------------------------------------------------------------------- inputs
@dataclass
class Lengths:
    """A length distribution in tokens: `mean` and `max`, or a `histogram` {tokens: share}."""
    mean: Optional[float] = meta("mean length in tokens", gt=0.0, default=None)
    max: Optional[int] = meta("longest length in tokens (a synchronous step waits for it)", gt=0, default=None)
    histogram: Optional[dict[int, float]] = meta("{length: share} instead of mean/max; shares need not "
                                                 "sum to 1", default=None)

    def validate(self, path: str) -> None:
        if self.histogram is not None:
            if self.mean is not None or self.max is not None:
                raise UserError(f"{path}: give either histogram or mean and max, not both")
            if not self.histogram:
                raise UserError(f"{path}.histogram: must list at least one length")
            hist = {}
            for k, v in self.histogram.items():  # keys arrive as text (hdc.config's mappings)
                if not str(k).isdigit() or int(k) < 1:
                    raise UserError(f"{path}.histogram: lengths must be integers >= 1, got {k!r}")
                if not (math.isfinite(v) and v >= 0):
                    raise UserError(f"{path}.histogram.{k}: share must be a finite number >= 0, got {v!r}")
                hist[int(k)] = v
            self.histogram = hist
            if not sum(self.histogram.values()) > 0:
                raise UserError(f"{path}.histogram: shares must not all be 0")
            return
        if self.mean is None or self.max is None:
            raise UserError(f"{path}: give mean and max (tokens), or a histogram")
        if not math.isfinite(self.mean) or self.mean > self.max:
            raise UserError(f"{path}.mean: must be finite and <= max ({self.max}), got {self.mean!r}")

    @property
    def longest(self) -> int:
        return max(self.histogram) if self.histogram is not None else self.max

    @property
    def average(self) -> float:
        return sum(n * c for n, c in self.counts(10_000)) / 10_000

    def counts(self, total: int) -> list[tuple[int, int]]:
        """`total` sequences as (length, count), largest-remainder rounded, the longest length
        present at least once (the step's long tail). From mean/max: uniform on
        [1, 2·mean − 1] below (1 + max)/2; above, that fraction f at max and the rest uniform on
        [1, max] with f = (mean − (1+max)/2) / ((max − 1)/2). Uniforms in at most 32 bins."""
        if self.histogram is not None:
            shares = dict(self.histogram)
        elif self.mean == self.max or self.max == 1:
            shares = {self.max: 1.0}
        elif self.mean >= (1 + self.max) / 2:
            f = (self.mean - (1 + self.max) / 2) / ((self.max - 1) / 2)
            shares = {k: v * (1 - f) for k, v in _uniform(1, self.max).items()}
            shares[self.max] = shares.get(self.max, 0.0) + f
        else:
            shares = _uniform(1, max(1, round(2 * self.mean - 1)))
        norm = sum(shares.values())
        exact = {k: total * v / norm for k, v in shares.items()}
        out = {k: int(x) for k, x in exact.items()}
        for k in sorted(exact, key=lambda k: exact[k] - out[k], reverse=True)[:total - sum(out.values())]:
            out[k] += 1
        top = self.longest
        if not out.get(top):  # the longest is there at least once: it sets a synchronous step's end
            out[max(out, key=out.get)] -= 1
            out[top] = 1
        return sorted((k, c) for k, c in out.items() if c)


def _uniform(lo: int, hi: int, bins: int = 32) -> dict[int, float]:
    """Uniform on the integers [lo, hi], as at most `bins` equal-share points (bin centres) summing to 1."""
    n = hi - lo + 1
    if n <= bins:
        return {k: 1.0 / n for k in range(lo, hi + 1)}
    width = n / bins
    return {round(lo + (i + 0.5) * width - 0.5): 1.0 / bins for i in range(bins)}


@dataclass
class TrainLayout:
    """The trainers' model parallelism; dp and the batch follow from the trainer GPUs and the step."""
    tp: int = meta("tensor-parallel size (inside a node)", gt=0, default=1)
    pp: int = meta("pipeline stages", gt=0, default=1)
    vpp: int = meta("virtual pipeline stages per rank", gt=0, default=1)
    micro_batch_size: int = meta("sequences per micro-batch", gt=0, default=1)
    recompute: str = meta("activation recomputation in training: none, selective or full",
                          choices=("none", "selective", "full"), default="selective")


@dataclass
class RLWorkload:
    """One GRPO step's shape, with TRL's names where TRL has one."""
    model: ModelSpec = meta("the policy (a preset name or a model mapping)")
    prompts_per_step: int = meta("prompts per GRPO step, all ranks", gt=0)
    num_generations: int = meta("completions per prompt (the GRPO group)", ge=2)
    prompt_length: Lengths = meta("prompt lengths in tokens")
    completion_length: Lengths = meta("completion lengths in tokens")
    num_iterations: int = meta("passes over each generation batch (TRL's num_iterations)", gt=0, default=1)
    steps_per_generation: int = meta("optimizer steps each generation batch is split into", gt=0, default=1)
    beta: float = meta("KL coefficient; 0 skips the reference model's forward pass", ge=0.0, default=0.0)
    train: TrainLayout = meta("the trainers' layout: tp, pp, vpp, micro_batch_size", default_factory=TrainLayout)
    generation_tp: int = meta("tensor-parallel size of one generation engine (inside a node)", gt=0, default=1)
    backend: str = meta("generation engine: vllm (continuous batching, paged KV) or hf (transformers "
                        "generate: one static batch decodes until its longest completion ends)",
                        choices=("vllm", "hf"), default="vllm")
    max_num_seqs: int = meta("sequences one engine decodes at once at most (vLLM max_num_seqs)", gt=0,
                             default=256)
    kv_cache_fraction: float = meta("fraction of GPU memory the engine may fill with weights and KV cache "
                                    "(vLLM gpu_memory_utilization)", gt=0.0, le=1.0, default=0.9)
    weight_bytes: int = meta("bytes per weight element in the engines and the push (2 = bf16)",
                             choices=(1, 2, 4), default=2)
    reward_s: float = meta("scoring time per completion, one CPU core per generator GPU", ge=0.0, default=0.0)
    padding: str = meta("trained micro-batches: packed (no compute on padding: verl's and NeMo RL's sequence "
                        "packing; prompt + completion means) or padded (each row as long as the longest prompt "
                        "plus the longest completion, as hdc's and TRL's trainers pad)",
                        choices=("packed", "padded"), default="packed")
    shared_prompt: bool = meta("a prompt's tokens run once per group, not once per completion, in prefill and "
                               "in the log-prob and training passes (hdc's fast_generation and "
                               "share_prompt_prefix)", default=False)
    behaviour_logprobs: str = meta("auto: recomputed by the trainers when the batch is reused or stale, or "
                                   "generated by vllm (verl); sampler: the generation engine's own (hdc's "
                                   "trainer, which corrects with TIS) unless the batch is reused",
                                   choices=("auto", "sampler"), default="auto")

    def validate(self, path: str) -> None:
        if self.model.layers % (self.train.pp * self.train.vpp):
            raise UserError(f"{path}.train.pp: pp × vpp ({self.train.pp * self.train.vpp}) must divide the "
                            f"model's layers ({self.model.layers})")

    @property
    def sequences(self) -> int:
        return self.prompts_per_step * self.num_generations

    @property
    def train_seq_len(self) -> int:
        """Tokens per trained sequence: prompt + completion means when packed, the longest of each
        when padded; with shared_prompt a sequence carries 1/num_generations of its prompt."""
        packed = self.padding == "packed"
        prompt = self.prompt_length.average if packed else self.prompt_length.longest
        completion = self.completion_length.average if packed else self.completion_length.longest
        if self.shared_prompt:
            prompt /= self.num_generations
        return max(1, round(prompt + completion))

    def describe(self) -> str:
        return (f"{self.model.name}: {self.prompts_per_step} prompts × {self.num_generations} generations, "
                f"prompt ~{self.prompt_length.average:.0f} tok, completion ~{self.completion_length.average:.0f} "
                f"(max {self.completion_length.longest}), {self.backend}")


@dataclass
class RLPlacement:
    kind: str = meta("colocated | split | async", choices=PLACEMENTS, default="colocated")
    generator_sites: Optional[list[str]] = meta("split/async: whole sites that generate (the others train)",
                                                default=None)
    generator_fraction: Optional[float] = meta("split/async: instead, this fraction of every site's nodes "
                                               "generates", gt=0.0, lt=1.0, default=None)
    async_steps: int = meta("async: generation runs this many steps ahead of training (staleness)", gt=0,
                            default=1)
    push_wire: str = meta("weight push format: bf16 weights, or int8 deltas (absmax per 1024 block)",
                          choices=("bf16", "int8"), default="bf16")

    def validate(self, path: str) -> None:
        if self.kind == "colocated":
            if self.generator_sites is not None or self.generator_fraction is not None:
                raise UserError(f"{path}.kind: colocated uses every GPU for both; generator_sites and "
                                f"generator_fraction are for split or async")
        elif (self.generator_sites is None) == (self.generator_fraction is None):
            raise UserError(f"{path}: {self.kind} needs exactly one of generator_sites or generator_fraction")

    def describe(self) -> str:
        if self.kind == "colocated":
            return "colocated"
        who = (", ".join(self.generator_sites) if self.generator_sites is not None
               else f"{self.generator_fraction:.0%} of each site's nodes")
        lag = f" {self.async_steps}" if self.kind == "async" else ""
        return f"{self.kind}{lag} (generators: {who}; push {self.push_wire})"


def rl_workload_names() -> list[str]:
    return yaml_names(RL_WORKLOAD_DIR)


def rl_workload_from_dict(data: object) -> RLWorkload:
    if isinstance(data, dict) and isinstance(data.get("model"), str):
        name = data["model"]
        if name not in MODELS:
            raise UserError(f"model: unknown preset {name!r}; presets are {', '.join(sorted(MODELS))}")
        data = {**data, "model": MODELS[name]}
    return from_dict(RLWorkload, data)


def load_rl_workload(path_or_preset: str) -> RLWorkload:
    """An RL workload YAML file, or a preset from workloads/rl/ by name."""
    source = preset_source(path_or_preset, RL_WORKLOAD_DIR, "RL workload")
    try:
        return rl_workload_from_dict(load_yaml(source))
    except UserError as e:
        raise UserError(f"{source}: {e}") from None


@dataclass(frozen=True)
class RLConstants:
    """What the RL phases need beyond SimConstants, each with where its default comes from."""
    decode_bandwidth_efficiency: float = meta("achieved fraction of HBM bandwidth in a decode iteration "
                                              "(ASSUMPTION: 0.7, vLLM's memory-bound decode reaches 60-80%)",
                                              gt=0.0, le=1.0, default=0.7)
    decode_iteration_overhead_s: float = meta("fixed cost of one decode iteration: scheduling, sampling, "
                                              "launches (ASSUMPTION: 1 ms with CUDA graphs)", ge=0.0,
                                              default=1e-3)
    push_load_Bps_factor: float = meta("HBM bytes moved per pushed byte when an engine loads new weights "
                                       "(read + write)", gt=0.0, default=2.0)
    forward_compute_efficiency: Optional[float] = meta(
        "achieved fraction of peak FLOP/s in the no-grad passes (prefill, log-probs); default: "
        "SimConstants.compute_efficiency", gt=0.0, le=1.0, default=None)
    decode_compute_efficiency: Optional[float] = meta(
        "achieved fraction of peak FLOP/s in a decode iteration's GEMMs (one token per sequence); "
        "default: SimConstants.compute_efficiency", gt=0.0, le=1.0, default=None)

    def forward_constants(self, c: SimConstants) -> SimConstants:
        """`c` with the no-grad passes' compute efficiency."""
        return replace(c, compute_efficiency=self.forward_compute_efficiency or c.compute_efficiency)


# ----------------------------------------------------------------------------- cost models
def forward_pass_s(model: ModelSpec, seq_len: int, seqs: int, tp: int, gpu, c: SimConstants) -> float:
    """One forward pass of `seqs` sequences of `seq_len` tokens on one TP group, every layer and
    the output projection: the step model's per-operator roofline (simulator.compute: GEMM
    shapes on the GPU generation, attention core, elementwise), at its compute_efficiency."""
    w = Workload(model=replace(model, seq_len=max(1, seq_len)),
                 parallel=Parallel(tp=tp, micro_batch_size=seqs, global_batch_size=seqs))
    layer = layer_times(w, gpu.peak_flops, c.compute_efficiency, gpu.generation, c.activation_bytes)
    logits_f, _ = logits_times(w, gpu.peak_flops, c.compute_efficiency, gpu.generation, c.activation_bytes)
    return model.layers * layer.forward_s + logits_f


def kv_bytes_per_token(model: ModelSpec, tp: int, element_bytes: int) -> float:
    """KV cache per token on one GPU: 2 (K, V) · L · kv_heads · head_dim · bytes, the KV heads split
    over TP (replicated when tp > kv_heads, as vLLM does)."""
    return 2.0 * model.layers * math.ceil(model.kv_heads / tp) * model.head_dim * element_bytes


def engine_slots(work: RLWorkload, memory_bytes: float) -> int:
    """Sequences one engine holds at once: the KV memory left after the weights, over one
    sequence's mean footprint (prompt + completion means, paged KV), capped by max_num_seqs."""
    tp = work.generation_tp
    weights = work.model.num_params * work.weight_bytes / tp
    free = memory_bytes * work.kv_cache_fraction - weights
    per_seq = kv_bytes_per_token(work.model, tp, work.weight_bytes) * (
        work.prompt_length.average + work.completion_length.average)
    if free < per_seq:
        raise UserError(f"generation_tp: {work.model.name} at tp {tp} leaves "
                        f"{fmt_bytes(max(free, 0.0))} of KV cache per GPU, less than one sequence "
                        f"({fmt_bytes(per_seq)}); raise generation_tp or kv_cache_fraction")
    return max(1, min(work.max_num_seqs, int(free // per_seq)))


@dataclass
class DecodeCost:
    time_s: float
    iterations: int
    tail_s: float  # time decoding with at most half the engine's full batch busy, nothing queued: the long tail


class _Decoder:
    """Time of decode iterations on one engine. One iteration with n sequences and T context
    tokens in total costs  max(2·N·n / (tp·peak·eff),  (W/tp + T·kv) / (HBM·eff_bw)) + TP + overhead
    (weights and the whole KV cache are read once per iteration; Pope et al. 2022, §2); TP adds
    2 all-reduces per layer of n·hidden·2 bytes on NVLink (Megatron's tensor parallelism)."""

    def __init__(self, work: RLWorkload, topo: Topology, c: SimConstants, rc: RLConstants):
        m, tp = work.model, work.generation_tp
        eff = rc.decode_compute_efficiency or c.compute_efficiency
        self.compute_per_seq = 2.0 * m.matmul_params / (tp * topo.gpu.peak_flops * eff)
        bw = c.hbm_Bps(topo.gpu.generation) * rc.decode_bandwidth_efficiency
        self.weights_s = m.num_params * work.weight_bytes / tp / bw
        self.kv_per_token_s = kv_bytes_per_token(m, tp, work.weight_bytes) / bw
        node = topo.sites[0].intra_node
        self.tp_fixed_s = 2 * m.layers * 2 * node.latency_s if tp > 1 else 0.0
        self.tp_per_seq_s = (2 * m.layers * 2 * (tp - 1) / tp * m.hidden * 2 / node.bandwidth_Bps) if tp > 1 else 0.0
        self.overhead_s = rc.decode_iteration_overhead_s

    def span(self, n: int, context: float, k: int) -> float:
        """Total time of k iterations with n sequences whose total context starts at `context`
        and grows by n per iteration: Σ_{i<k} max(A, B + C·i) + k·D, in closed form."""
        if k <= 0:
            return 0.0
        a = self.compute_per_seq * n
        b = self.weights_s + self.kv_per_token_s * context
        cc = self.kv_per_token_s * n
        fixed = k * (self.overhead_s + self.tp_fixed_s + self.tp_per_seq_s * n)
        # iterations i < i0 are compute-bound (A > B + C·i), the rest memory-bound
        i0 = 0 if b >= a else min(k, math.ceil((a - b) / cc) if cc > 0 else k)
        mem = (k - i0) * b + cc * (k * (k - 1) - i0 * (i0 - 1)) / 2
        return fixed + i0 * a + mem


def decode_cost(work: RLWorkload, decoder: _Decoder, prompts: list[int], lengths: list[int], slots: int) -> DecodeCost:
    """Decode `lengths` completions (prompt lengths `prompts`) on one engine.
    vllm: continuous batching — `slots` sequences at a time, a finished one's slot is refilled
    from the queue at once (Kwon et al. 2023, vLLM); the last iterations run a near-empty batch.
    hf: one static batch per `slots` sequences, every row decoded until the batch's longest
    completion ends (transformers `generate` computes finished rows as padding)."""
    if work.backend == "hf":
        total, iters, tail = 0.0, 0, 0.0
        for lo in range(0, len(lengths), slots):
            chunk, pr = lengths[lo:lo + slots], prompts[lo:lo + slots]
            k = max(chunk)
            n = len(chunk)
            t = decoder.span(n, n * max(pr), k)
            total, iters = total + t, iters + k
            busy = sum(chunk) / (n * k)
            tail += t * (1 - busy)
        return DecodeCost(total, iters, tail)
    queue = list(zip(prompts, lengths))
    queue.reverse()  # pop() takes them in order
    active: list[tuple[int, int]] = []  # (finish iteration, start iteration) heap
    context = 0.0  # total context tokens of the active sequences at the current iteration
    now_it, total, tail = 0, 0.0, 0.0
    full = min(slots, len(lengths))
    ctx_of: dict[int, tuple[int, int]] = {}
    uid = 0

    def admit() -> None:
        nonlocal context, uid
        while queue and len(active) < slots:
            p, n = queue.pop()
            heapq.heappush(active, (now_it + n, uid))
            ctx_of[uid] = (p, now_it)
            context += p
            uid += 1

    admit()
    while active:
        finish = active[0][0]
        k = finish - now_it
        n = len(active)
        t = decoder.span(n, context, k)
        total += t
        if not queue and n <= full / 2:
            tail += t
        context += n * k
        now_it = finish
        while active and active[0][0] == now_it:
            _, u = heapq.heappop(active)
            p, start = ctx_of.pop(u)
            context -= p + (now_it - start)
        admit()
    return DecodeCost(total, now_it, tail)


def _interleave(counts: list[tuple[int, int]], total: int) -> list[int]:
    """The lengths of `counts` in a mixed order (arrival order is not sorted by length): a
    deterministic stride through the sorted list, the longest first so it is never left alone
    at the end of a queue by chance."""
    flat = [n for n, c in sorted(counts, reverse=True) for _ in range(c)]
    stride = next(s for s in (7919, 104729, 1299709) if math.gcd(s, total) == 1) if total > 1 else 1
    return [flat[(i * stride) % total] for i in range(total)]


# ----------------------------------------------------------------------------- the GPU groups
@dataclass
class Groups:
    """Which GPUs generate and which train, per site."""
    train: Topology  # the trainers as a topology (for the step model); the whole one when colocated
    generators: dict[str, int]  # site -> generating GPUs
    trainers: dict[str, int]  # site -> training GPUs
    gpus: dict[str, int]  # site -> GPUs


def split_groups(topo: Topology, place: RLPlacement) -> Groups:
    gpus = {s.name: s.gpus for s in topo.sites}
    if place.kind == "colocated":
        return Groups(topo, dict(gpus), dict(gpus), gpus)
    if place.generator_sites is not None:
        names = [s.name for s in topo.sites]
        for n in place.generator_sites:
            if n not in names:
                raise UserError(f"placement.generator_sites: unknown site {n!r}; sites are {', '.join(names)}")
        if len(set(place.generator_sites)) == len(names):
            raise UserError("placement.generator_sites: at least one site must train")
        keep = [s for s in topo.sites if s.name not in place.generator_sites]
        gen = {s.name: (s.gpus if s.name in place.generator_sites else 0) for s in topo.sites}
    else:
        keep, gen = [], {}
        for s in topo.sites:
            g_nodes = round(s.nodes * place.generator_fraction)
            if not 0 < g_nodes < s.nodes:
                raise UserError(f"placement.generator_fraction: {place.generator_fraction:g} of site {s.name}'s "
                                f"{s.nodes} nodes leaves no generator or no trainer node")
            t_nodes = s.nodes - g_nodes
            pods = math.gcd(s.pods, t_nodes)
            keep.append(replace(s, nodes=t_nodes, pods=pods))
            gen[s.name] = g_nodes * s.gpus_per_node
    names = {s.name for s in keep}
    wan = [w for w in topo.wan if set(w.sites) <= names]
    train = Topology(name=f"{topo.name}-trainers", sites=keep, gpu=topo.gpu, wan=wan,
                     description=f"{topo.name}'s training GPUs")
    try:
        train.validate("placement")
    except UserError as e:
        raise UserError(f"placement: the training sites are not connected by WAN links on their own ({e})") from None
    trainers = {s.name: 0 for s in topo.sites}
    trainers.update({s.name: s.gpus for s in keep})
    return Groups(train, gen, trainers, gpus)


# ----------------------------------------------------------------------------- result
@dataclass
class RLResult:
    topology: str
    workload: str
    placement: str
    strategy: str
    gpus: int
    step_time_s: float
    phases_s: dict[str, float]  # each phase's duration in one step (not all on the critical path when async)
    detail_s: dict[str, float]  # prefill, decode, decode tail, reference, behaviour, gradient sync
    busy: dict[str, dict[str, float]]  # site -> phase -> fraction of the site's GPU-time in the phase
    tokens_per_s: float  # completion tokens generated per second (steady state)
    staleness_steps: int
    bytes_by_tier: dict[str, float]  # per step: gradient sync + weight push
    slots_per_engine: int
    engines: int
    train_step: dict  # the step model's result for one optimizer step (simulator.Result.to_dict())
    assumptions: list[str]
    spans: list = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("spans")
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def row(self) -> dict:
        """One flat row (a sweep's CSV columns)."""
        return {"step_time_s": self.step_time_s, **{f"{p}_s": t for p, t in self.phases_s.items()},
                "decode_tail_s": self.detail_s["decode_tail_s"], "sync_s": self.detail_s["sync_s"],
                "tokens_per_s": self.tokens_per_s, "staleness_steps": self.staleness_steps,
                "wan_bytes": self.bytes_by_tier.get("wan", 0.0), "placement_desc": self.placement}

    def timeline(self) -> dict:
        """Spans (row, phase, step, start_s, end_s) of the simulated steps, for a Gantt chart:
        rows are the generator and trainer groups."""
        return {"topology": self.topology, "placement": self.placement, "step_time_s": self.step_time_s,
                "spans": [{"rank": row, "kind": kind, "step": step, "start_s": a, "end_s": b}
                          for row, kind, step, a, b in self.spans]}

    def format(self) -> str:
        d = self.detail_s
        lines = [f"simulate-rl: {self.workload}",
                 f"  on {self.topology} ({self.gpus} GPUs), {self.placement}, gradient sync {self.strategy}",
                 f"  step time            {fmt_time(self.step_time_s)}"
                 + (f"   (rollouts {self.staleness_steps} step(s) stale)" if self.staleness_steps else ""),
                 f"    generate           {fmt_time(self.phases_s['generate'])}   prefill {fmt_time(d['prefill_s'])}, "
                 f"decode {fmt_time(d['decode_s'])} (long tail {fmt_time(d['decode_tail_s'])}); "
                 f"{self.engines} engine(s) × {self.slots_per_engine} slots",
                 f"    score              {fmt_time(self.phases_s['score'])}",
                 f"    log-probs          {fmt_time(self.phases_s['logprobs'])}   reference "
                 f"{fmt_time(d['reference_s'])}, behaviour {fmt_time(d['behaviour_s'])}",
                 f"    train              {fmt_time(self.phases_s['train'])}   of which exposed gradient sync "
                 f"{fmt_time(d['sync_s'])}",
                 f"    weight push        {fmt_time(self.phases_s['push'])}",
                 f"  completion tokens/s  {self.tokens_per_s:,.0f}",
                 "  GPU busy by site     " + "   ".join(
                     f"{site}: " + ", ".join(f"{p} {f:.0%}" for p, f in ph.items() if f > 0.0005)
                     for site, ph in self.busy.items()),
                 "  bytes per step       " + ", ".join(f"{t} {fmt_bytes(b)}" for t, b in self.bytes_by_tier.items()
                                                     if b > 0),
                 "  assumptions:"]
        lines += [f"    - {a}" for a in self.assumptions]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- the step
def _train_workload(work: RLWorkload, gpus: int) -> Workload:
    """One optimizer step of the trainers as the step model's Workload: dp from the trainer GPUs,
    the generation batch split into steps_per_generation steps, rounded up to whole micro-batches
    on every replica (a short last micro-batch costs a whole one)."""
    p = work.train
    per_replica = p.tp * p.pp
    if gpus % per_replica:
        raise UserError(f"train: tp × pp = {per_replica} must divide the {gpus} training GPUs")
    dp = gpus // per_replica
    seqs = math.ceil(work.sequences / work.steps_per_generation)
    mbs = min(p.micro_batch_size, math.ceil(seqs / dp))  # fewer sequences than replicas × mbs: smaller
    mb = math.ceil(seqs / (mbs * dp))
    model = replace(work.model, seq_len=work.train_seq_len)
    par = Parallel(tp=p.tp, pp=p.pp, dp=dp, vpp=p.vpp, micro_batch_size=mbs, global_batch_size=mb * mbs * dp)
    return Workload(model=model, parallel=par, grad_bytes=2, param_bytes=work.weight_bytes, recompute=p.recompute)


def _push(work: RLWorkload, topo: Topology, groups: Groups, place: RLPlacement, c: SimConstants,
          rc: RLConstants) -> tuple[float, dict[str, float]]:
    """Weight push time and bytes per tier.
    colocated: each GPU copies its engine's shard in HBM: bytes/tp · load factor / HBM bandwidth.
    split: per generating site, one copy crosses the WAN from the nearest training site —
    one-way latency + bytes / min(WAN goodput, the trainers' tp·pp senders' NICs) — then a
    pipelined broadcast fans it out to the site's engines: bytes/gen_tp / NIC bandwidth +
    log2(engines) hops of latency (store-and-forward at the gateway, as a checkpoint relay does).
    int8 deltas: 1 byte per weight + a 4-byte scale per 1024 (hdc.wire)."""
    m, tp = work.model, work.generation_tp
    full = payload_bytes(m.num_params, "int8") if place.push_wire == "int8" else m.num_params * work.weight_bytes
    load_s = full / tp * rc.push_load_Bps_factor / c.hbm_Bps(topo.gpu.generation)
    tiers = {"intra_node": 0.0, "intra_pod": 0.0, "intra_site": 0.0, "wan": 0.0}
    if place.kind == "colocated":  # hf generates with the policy itself: nothing to push
        return (0.0 if work.backend == "hf" else load_s), tiers
    names = [s.name for s in topo.sites]
    senders = work.train.tp * work.train.pp
    worst = 0.0
    for si, s in enumerate(topo.sites):
        engines = groups.generators[s.name] // tp
        if engines == 0:
            continue
        wan_s = 0.0
        if groups.trainers[s.name] == 0:
            src = min((j for j, n in enumerate(names) if groups.trainers[n]),
                      key=lambda j: sum(link.latency_s for link in _wan_links(topo, j, si)))
            links = _wan_links(topo, src, si)
            cap = min(link.bandwidth_Bps for link in links) * c.wan_efficiency
            nic = topo.sites[src].intra_site.bandwidth_Bps * senders
            wan_s = sum(link.latency_s for link in links) + full / min(cap, nic)
            tiers["wan"] += full * len(links)
        per_gpu = full / tp
        fan_s = per_gpu / s.intra_site.bandwidth_Bps + math.ceil(math.log2(max(engines, 1)) + 1) * s.intra_site.latency_s
        tiers["intra_site"] += per_gpu * groups.generators[s.name]
        worst = max(worst, wan_s + fan_s)
    return worst + load_s, tiers


def _wan_links(topo: Topology, a: int, b: int) -> list:
    """The WAN links (hdc.topology.Link) on the route from site a to site b."""
    route = topo._wan_route(a, b)
    return [topo.link((f"s{x}/gw", f"s{y}/gw")) for x, y in zip(route, route[1:])]


def _run_steps(place: RLPlacement, d: dict[str, float]) -> tuple[float, list]:
    """Steady-state step time and spans from a SimPy run of several steps. Generators: step n
    waits for its previous generation and for the weights it needs (sync: those of step n−1;
    async K: those of step n−1−K); trainers: log-probs and the optimizer steps of step n wait for
    its rollouts and scores and for step n−1's training; the push of step n follows its training.
    Colocated: one group does everything in sequence."""
    env = simpy.Environment()
    k = place.async_steps if place.kind == "async" else 0
    steps = 4 * (k + 1) + 4
    pushed = [env.event() for _ in range(steps)]
    scored = [env.event() for _ in range(steps)]
    trained_end: list[float] = [0.0] * steps
    spans: list = []
    gen_row, train_row = ("gpus", "gpus") if place.kind == "colocated" else ("generators", "trainers")

    def span(row, kind, n, dur):
        start = env.now
        yield env.timeout(dur)
        spans.append((row, kind, n, start, env.now))

    def generators():
        for n in range(steps):
            need = n - 1 - k
            if need >= 0:
                yield pushed[need]
            yield from span(gen_row, "generate", n, d["generate"])
            yield from span(gen_row, "score", n, d["score"])
            scored[n].succeed()

    def trainers():
        for n in range(steps):
            yield scored[n]
            yield from span(train_row, "logprobs", n, d["logprobs"])
            yield from span(train_row, "train", n, d["train"])
            trained_end[n] = env.now
            if place.kind == "colocated":  # the same GPUs: generation waits for the push
                yield from span(train_row, "push", n, d["push"])
                pushed[n].succeed()
            else:
                env.process(push(n))

    def push(n):
        yield from span("network", "push", n, d["push"])
        pushed[n].succeed()

    env.process(generators())
    env.process(trainers())
    env.run()
    window = steps // 2
    step_s = (trained_end[-1] - trained_end[-1 - window]) / window
    return step_s, spans


def simulate_rl(topology: Union[Topology, str], workload: Union[RLWorkload, str],
                placement: Union[RLPlacement, str, None] = None, strategy: Union[Strategy, str] = "hierarchical",
                constants: Optional[SimConstants] = None, rl_constants: Optional[RLConstants] = None) -> RLResult:
    """Predict one GRPO step (steady state) of `workload` on `topology` under `placement`."""
    from simulator.simulate import simulate

    topo = load_topology(topology) if isinstance(topology, str) else topology
    work = load_rl_workload(workload) if isinstance(workload, str) else workload
    if placement is None or isinstance(placement, str):
        placement = from_dict(RLPlacement, {"kind": placement or "colocated"}, "placement")
    strat = make_strategy(strategy) if isinstance(strategy, str) else strategy
    c = constants or SimConstants()
    rc = rl_constants or RLConstants()
    for s in topo.sites:
        if s.gpus_per_node % work.generation_tp:
            raise UserError(f"generation_tp: must divide gpus_per_node ({s.gpus_per_node}) of site {s.name}, "
                            f"got {work.generation_tp}")
    groups = split_groups(topo, placement)
    gen_gpus = sum(groups.generators.values())
    train_gpus = sum(groups.trainers.values())
    m = work.model

    # generation: sequences spread evenly over the engines; the engine holding the longest
    # completion ends last, so it is the one timed
    engines = gen_gpus // work.generation_tp
    prompts_per_engine = math.ceil(work.prompts_per_step / engines)
    seqs_per_engine = math.ceil(work.sequences / engines)
    p_len = work.prompt_length.average
    slots = engine_slots(work, topo.gpu.memory_bytes)
    counts = work.completion_length.counts(seqs_per_engine)
    lengths = _interleave(counts, seqs_per_engine)
    prompt_counts = work.prompt_length.counts(seqs_per_engine)
    prompts = _interleave(prompt_counts, seqs_per_engine)
    decoder = _Decoder(work, topo, c, rc)
    decode = decode_cost(work, decoder, prompts, lengths, slots)
    # prefill: the G completions of a prompt share its prefix (vLLM's n-sampling / prefix cache,
    # hdc's fast_generation: shared_prompt); transformers' generate repeats the prompt once per row
    prefill_seqs = prompts_per_engine if work.backend == "vllm" or work.shared_prompt else seqs_per_engine
    fc = rc.forward_constants(c)
    prefill_s = forward_pass_s(m, round(p_len), prefill_seqs, work.generation_tp, topo.gpu, fc)
    generate_s = prefill_s + decode.time_s
    score_s = work.reward_s * seqs_per_engine / work.generation_tp

    # log-probs on the trainers: a forward pass over each replica's sequences per model that needs
    # it, micro-batch by micro-batch through the pipeline ((micro-batches + pp - 1) stage times)
    tw = _train_workload(work, train_gpus)
    tp_, pp_, dp_ = tw.parallel.tp, tw.parallel.pp, tw.parallel.dp
    mbs = tw.parallel.micro_batch_size
    micro = math.ceil(math.ceil(work.sequences / dp_) / mbs)
    fwd_s = (micro + pp_ - 1) * forward_pass_s(m, work.train_seq_len, mbs, tp_, topo.gpu, fc) / pp_
    reference_s = fwd_s if work.beta > 0 else 0.0
    reused = work.num_iterations > 1 or work.steps_per_generation > 1
    behaviour = reused or (work.behaviour_logprobs == "auto" and (placement.kind == "async" or work.backend == "vllm"))
    behaviour_s = fwd_s if behaviour else 0.0

    # training: the step model, once per optimizer step
    step = simulate(groups.train, tw, strat, c, baseline=False)
    optimizer_steps = work.num_iterations * work.steps_per_generation
    train_s = step.step_time_s * optimizer_steps
    push_s, push_tiers = _push(work, topo, groups, placement, c, rc)

    d = {"generate": generate_s, "score": score_s, "logprobs": reference_s + behaviour_s, "train": train_s,
         "push": push_s}
    step_s, spans = _run_steps(placement, d)

    busy = {}
    for s in topo.sites:
        g, t, n = groups.generators[s.name], groups.trainers[s.name], groups.gpus[s.name]
        busy[s.name] = {"generate": g * generate_s / (n * step_s), "score": g * score_s / (n * step_s),
                        "logprobs": t * d["logprobs"] / (n * step_s), "train": t * train_s / (n * step_s),
                        "push": (g if placement.kind == "colocated" else 0) * push_s / (n * step_s)}
    tiers = {t: u.bytes * optimizer_steps for t, u in step.tiers.items()}
    for t, b in push_tiers.items():
        tiers[t] = tiers.get(t, 0.0) + b
    completion_tokens = work.sequences * work.completion_length.average
    assumptions = [
        f"trained sequences {work.train_seq_len} tokens ("
        + ("prompt + completion means, packed" if work.padding == "packed" else "longest prompt + completion, padded")
        + ("; a prompt once per group" if work.shared_prompt else "") + "); "
        f"{tw.parallel.global_batch_size} sequences per optimizer step on {train_gpus} GPUs "
        f"(tp {tw.parallel.tp}, pp {tw.parallel.pp}, dp {tw.parallel.dp}), {optimizer_steps} step(s)",
        f"generation: {engines} engine(s) of tp {work.generation_tp}, {seqs_per_engine} sequences each, "
        f"{slots} at once ({work.backend}); the engine with the longest completion is timed",
        f"behaviour log-probs {'recomputed by the trainers' if behaviour else 'taken from the policy pass'}; "
        f"reference pass {'on (beta > 0)' if work.beta > 0 else 'skipped (beta = 0)'}",
        (f"prefill and log-prob passes on the step model's roofline (compute efficiency "
         f"{fc.compute_efficiency:.3g}), decode at {rc.decode_bandwidth_efficiency:.0%} of HBM bandwidth "
         f"({c.hbm_Bps(topo.gpu.generation) / 1e12:.2f} TB/s) + {fmt_time(rc.decode_iteration_overhead_s)} "
         f"per iteration"),
    ]
    return RLResult(
        topology=topo.name, workload=work.describe(), placement=placement.describe(), strategy=strat.describe(),
        gpus=topo.num_gpus, step_time_s=step_s, phases_s=d,
        detail_s={"prefill_s": prefill_s, "decode_s": decode.time_s, "decode_tail_s": decode.tail_s,
                  "reference_s": reference_s, "behaviour_s": behaviour_s,
                  "sync_s": step.breakdown.dp_exposed_s * optimizer_steps},
        busy=busy, tokens_per_s=completion_tokens / step_s,
        staleness_steps=placement.async_steps if placement.kind == "async" else 0,
        bytes_by_tier=tiers, slots_per_engine=slots, engines=engines, train_step=step.to_dict(),
        assumptions=assumptions, spans=spans)


def placement_from_args(kind: str, generators: Optional[str], async_steps: int, push_wire: str) -> RLPlacement:
    """`--placement`, `--generators SITE[,SITE]|FRACTION`, `--async-steps`, `--push-wire` as one
    validated RLPlacement."""
    data: dict = {"kind": kind, "push_wire": push_wire, "async_steps": async_steps}
    if generators is not None:
        try:
            data["generator_fraction"] = float(generators)
        except ValueError:
            data["generator_sites"] = [g.strip() for g in generators.split(",") if g.strip()]
    elif kind != "colocated":
        raise UserError(f"--generators: placement {kind} needs the sites (e.g. dc-b) or the fraction of nodes "
                        f"(e.g. 0.25) that generate")
    return from_dict(RLPlacement, data, "placement")


__all__ = ["simulate_rl", "RLWorkload", "RLPlacement", "RLResult", "RLConstants", "Lengths",
           "load_rl_workload", "rl_workload_names"]
