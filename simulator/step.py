"""One training step on the simulated cluster: pipeline compute, TP/PP communication, the
strategy's data-parallel plan overlapped as its triggers allow, and the optimizer.

Order of events in a step (steady state, every rank starts at t = 0):
  1. 'param'-phase plan steps that overlap 'forward' (e.g. the distributed optimizer's
     all-gather of the parameters the previous step updated) start at t = 0; the first
     forward of each model chunk waits for the steps covering that chunk's parameters.
  2. Every stage runs its (interleaved) 1F1B schedule (simulator.pipeline).
  3. 'grad'-phase steps start when their deps are done and their trigger has fired:
     'bucket:k' fires when backward has produced the last gradient element the steps
     waiting on it read (see `GradientClock`); a first step without trigger waits for the
     stage's whole backward.
  4. When every stage's backward and grad steps are done, the optimizer runs (global: grad
     clipping needs every rank's gradients), then any other 'param'-phase steps.

The strategy's plan covers several DP groups at once (one per pipeline stage and TP rank);
it is executed as independent per-stage sub-plans, since the groups of a step are disjoint.
"""
from __future__ import annotations

from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field

import simpy

from hdc.placement import place
from hdc.plan import WIRE_OF_ELEMENT_SIZE, Plan, Step
from hdc.strategies import Strategy
from hdc.sync import SyncPlans, sync_plans
from hdc.topology import Topology, lru_get
from hdc.workload import Workload
from simulator.collectives import Template, coflow_bytes, link_capacities, run_exact, start_coflow, step_template
from simulator.model import SimConstants, op_costs
from simulator.network import Network, Routes, atoms
from simulator.pipeline import PipelineSchedule, ideal_bubble_s


@dataclass
class RunStats:
    """Raw outcome of one simulated step; simulator.result turns it into a Result."""
    step_time_s: float
    compute_s: float
    tp_exposed_s: float
    bubble_s: float
    pp_exposed_s: float
    dp_exposed_s: float
    optimizer_s: float
    pipeline_end_s: float
    bytes_by_tier: dict[str, float]
    capacity_by_tier: dict[str, float]
    plan: Plan
    owned_elements: int  # elements of the buffer the first rank's optimizer updates
    events: int
    flows: int
    spans: list = field(default_factory=list)


# Routes and plans depend only on what a topology describes, not on which object holds it: a
# sweep rebuilds an equal topology for every strategy and chunk count of a grid point. Routes
# are cached by `Topology.content_key`, plans by `Topology.structure_key` (they never look at
# link speeds), in small LRU tables.
_ROUTES: "OrderedDict[str, Routes]" = OrderedDict()
_PLANS: "OrderedDict[tuple, dict]" = OrderedDict()


def routes_for(topology: Topology) -> Routes:
    """Routes for the topology, built once per distinct topology content."""
    return lru_get(_ROUTES, topology.content_key, lambda: Routes(topology))


def dp_plan(strategy: Strategy, topology: Topology, workload: Workload, groups) -> Plan:
    """The training step's data-parallel plan, from hdc.sync.sync_plans — the same function
    the trainer's DistGradientSync calls — over the workload's per-rank parameters."""
    key = (strategy.describe(), tuple(map(tuple, groups)), workload.params_per_rank,
           workload.grad_bytes, workload.param_bytes, workload.bucket_numel)
    cache = lru_get(_PLANS, topology.structure_key, dict)
    if key not in cache:
        if len(cache) > 64:
            cache.clear()
        cache[key] = workload_sync_plans(strategy, topology, workload, groups).plan
    return cache[key]


def workload_sync_plans(strategy: Strategy, topology: Topology, workload: Workload, groups) -> SyncPlans:
    """sync_plans for a workload: its per-rank parameters, buckets and gradient/parameter bytes."""
    return sync_plans(strategy, topology, groups, workload.param_numels(), workload.bucket_numel,
                      WIRE_OF_ELEMENT_SIZE[workload.grad_bytes], WIRE_OF_ELEMENT_SIZE[workload.param_bytes])


class GradientClock:
    """When backward produces each gradient element of a stage.

    Buffer order is production order (Megatron's buckets: last layers first). A stage's
    elements are split evenly over its vpp model chunks, chunk vpp-1 first; within a chunk
    they appear uniformly over the last micro-batch's backward of that chunk."""

    def __init__(self, numel: int, vpp: int):
        self.numel, self.vpp = numel, vpp

    def locate(self, end: int) -> tuple[int, float]:
        """(chunk, fraction of its last backward) at which elements [0, end) are all produced."""
        x = end / self.numel * self.vpp
        jj = min(max(int(-(-x // 1)) - 1, 0), self.vpp - 1)
        return self.vpp - 1 - jj, min(max(x - jj, 0.0), 1.0)

    def chunk_range(self, chunk: int) -> tuple[float, float]:
        jj = self.vpp - 1 - chunk
        return jj * self.numel / self.vpp, (jj + 1) * self.numel / self.vpp


def run_step(topology: Topology, workload: Workload, strategy: Strategy, constants: SimConstants,
             train_step: int = 0, aggregate: bool = True, timeline: bool = False,
             routes: Routes | None = None, rounds: str = "coflow",
             stage_factors: list[float] | None = None) -> RunStats:
    """Simulate one step. aggregate=True simulates one pipeline for all DP replicas and TP
    ranks (their traffic folded into link weights); False simulates every rank.
    rounds='exact' runs every collective message by message with a barrier per round
    (only with aggregate=False); 'coflow' runs each group's rounds as one flow.
    stage_factors slow the compute of each pipeline stage (stragglers; see simulator.faults)."""
    par = workload.parallel
    pp, vpp, tp, m = par.pp, par.vpp, par.tp, par.micro_batches
    placement = place(topology, par)
    routes = routes or routes_for(topology)
    env = simpy.Environment()

    # -- who is simulated: one pipeline standing for every replica and TP rank, or all of them
    if aggregate:
        pipes = [[[placement.gpu_of[(d, s, 0)] for d in range(par.dp)] for s in range(pp)]]
        groups = [[placement.gpu_of[(d, s, 0)] for d in range(par.dp)] for s in range(pp)]
        gpu_names = routes.gpu_names
        width = placement.width

        def mult(link):  # links of other TP/CP ranks' GPUs are images, not shared
            return 1 if (link[0] in gpu_names or link[1] in gpu_names) else width
    else:
        pipes = [[[placement.gpu_of[(d, s, t)]] for s in range(pp)] for d in range(par.dp)
                 for t in range(placement.width)]
        groups = placement.dp_groups()

        def mult(link):
            return 1
    stage_of = {g: s for (d, s, t), g in placement.gpu_of.items()}

    # -- the DP plan, split into per-stage sub-steps -----------------------------------------
    plan = dp_plan(strategy, topology, workload, groups)
    steps = [s for s in plan.steps if s.active(train_step)]
    tpl_cache: dict = {}
    shared = routes.templates.setdefault((aggregate, tp), {})  # reused by equal topologies

    def template(op, grps, algorithm="ring") -> Template:
        key = (op, grps, algorithm)
        if key not in tpl_cache:
            if key not in shared:
                shared[key] = step_template(routes, op, grps, mult, algorithm)
            tpl_cache[key] = shared[key]
        return tpl_cache[key]

    sub: dict[tuple[int, int], tuple[Step, tuple, tuple]] = {}
    for step in steps:
        per: dict[int, tuple[list, list]] = defaultdict(lambda: ([], []))
        for g, r in zip(step.groups, step.regions):
            per[stage_of[g[0]]][0].append(tuple(g))
            per[stage_of[g[0]]][1].append(r)
        for s, (gs, rs) in per.items():
            sub[(step.id, s)] = (step, tuple(gs), tuple(rs))
            template(step.op, tuple(gs), step.algorithm)
    p2p_tpl = {}
    for a in range(pp):
        for b in ((a + 1) % pp, (a - 1) % pp):
            if a != b:
                p2p_tpl[(a, b)] = [template("send_recv", tuple(zip(pipe[a], pipe[b]))) for pipe in pipes]

    # -- network: links grouped into atoms (aggregate) or one resource per link (exact) -------
    caps = link_capacities(routes, constants.link_efficiency())
    if aggregate:
        templates = list({id(t): t for t in tpl_cache.values()}.values())
        of, atom_caps, _ = atoms(caps, [t.weights for t in templates])
        net = Network(env, dict(enumerate(atom_caps)))
        resource_of = of.__getitem__
        tier_of_res = defaultdict(lambda: defaultdict(float))
        for link, a in of.items():
            tier_of_res[a][routes.links[link].tier] += 1 if mult(link) == placement.width else placement.width
    else:
        net = Network(env, caps)
        resource_of = None
        tier_of_res = {k: {l.tier: 1.0} for k, l in routes.links.items()}

    # -- compute and TP costs ------------------------------------------------------------------
    tp_s, tp_bytes = _tp_collective(routes, placement, workload, constants)
    cp_s, cp_bytes = _cp_exchange(routes, placement, workload, constants)
    costs = op_costs(workload, topology.gpu, constants, tp_s, tp_bytes, cp_s)
    stage_f = [costs.forward_s[v] + costs.tp_forward_s[v] for v in range(pp * vpp)]
    stage_b = [costs.backward_s[v] + costs.tp_backward_s[v] for v in range(pp * vpp)]
    clock = GradientClock(plan.numel, vpp)
    spans: list = [] if timeline else None

    # -- events the pipeline and the plan share ----------------------------------------------
    trig = {}  # (pipe, stage, name) -> event
    trig_at = defaultdict(list)  # (stage, chunk) -> [(fraction, name)]
    ends: dict[tuple[int, str], int] = {}
    for (sid, s), (st, gs, rs) in sub.items():
        if st.trigger and st.phase == "grad":
            ends[(s, st.trigger)] = max(ends.get((s, st.trigger), 0), max(o + n for o, n in rs))
    for (s, name), end in ends.items():
        chunk, frac = clock.locate(end)
        trig_at[(s, chunk)].append((frac, name))
        for pi in range(len(pipes)):
            trig[(pi, s, name)] = env.event()

    def on_last_backward(pi, s, chunk, start, dur):
        for frac, name in trig_at.get((s, chunk), ()):
            ev = trig[(pi, s, name)]
            env.timeout(frac * dur).callbacks.append(lambda _e, ev=ev: ev.succeed())

    pre = {k for k, (st, _, _) in sub.items() if st.phase == "param" and st.overlap == "forward"}
    # a parameter sync with a lag overlaps the following steps: in steady state one is in flight
    # from the step's start, sharing the network, and it must finish within `lag` steps
    lagged = {k for k, (st, _, _) in sub.items() if st.phase == "param" and st.lag > 0 and k not in pre}
    post = {k for k, (st, _, _) in sub.items() if st.phase == "param" and k not in pre and k not in lagged}
    part = lambda k: 0 if k in pre else 1 if k in lagged else 2  # noqa: E731 (deps stay within a part)
    done: dict[tuple[int, int], simpy.Event] = {k: env.event() for k in sub}
    param_waits = defaultdict(list)  # (stage, chunk) -> events
    for k in pre:
        st, gs, rs = sub[k]
        for chunk in range(vpp):
            lo, hi = clock.chunk_range(chunk)
            if any(o < hi and o + n > lo for o, n in rs):
                param_waits[(k[1], chunk)].append(done[k])

    def make_send(pi):
        def send(a, b):
            tpl = p2p_tpl[(a, b)][pi]
            return start_coflow(net, "send_recv", tpl, costs.p2p_bytes, 1, resource_of)
        return send

    pipelines = [PipelineSchedule(env, pp, vpp, m, stage_f, stage_b, make_send(pi),
                          lambda s, j: param_waits.get((s, j), []),
                          lambda s, j, t0, d, pi=pi: on_last_backward(pi, s, j, t0, d),
                          spans=spans if pi == 0 else None, name="pipeline", stage_factors=stage_factors)
                 for pi in range(len(pipes))]
    optimizer_done = env.event()

    def run_sub(key):
        st, gs, rs = sub[key]
        s = key[1]
        deps = [done[(d, s)] for d in st.deps if (d, s) in done and part((d, s)) == part(key)]
        if key in post:
            deps.append(optimizer_done)
        if st.phase == "grad":
            if st.trigger and workload.overlap_grad_reduce:
                deps += [trig[(pi, s, st.trigger)] for pi in range(len(pipes))]
            elif not st.deps or not workload.overlap_grad_reduce:
                deps += [p.done[s] for p in pipelines]
        if deps:
            yield simpy.AllOf(env, deps)
        start = env.now
        esize = plan.wire_bytes(st)
        numel = max(n for _, n in rs)
        if aggregate:
            yield start_coflow(net, st.op, template(st.op, gs, st.algorithm), numel, esize, resource_of)
        elif rounds == "coflow":
            yield simpy.AllOf(env, [start_coflow(net, st.op, template(st.op, (g,), st.algorithm), n, esize)
                                    for g, (_, n) in zip(gs, rs)])
        else:
            yield simpy.AllOf(env, [env.process(run_exact(env, net, routes, st.op, g, n, esize, st.algorithm))
                                    for g, (_, n) in zip(gs, rs)])
        if spans is not None:
            spans.append(("dp", s, f"dp:{st.label or st.op}", start, env.now, f"step {st.id} chunk {st.chunk}"))
        done[key].succeed()

    for key in sub:
        env.process(run_sub(key))

    owned = sum(n for _, n in plan.owned_regions(groups[0][0]))
    opt_s = owned * constants.optimizer_bytes_per_param / constants.hbm_Bps(topology.gpu.generation)
    grad_done = [done[k] for k in sub if k not in pre and k not in post and k not in lagged]
    marks = {}

    def optimizer():
        yield simpy.AllOf(env, [p.done[s] for p in pipelines for s in range(pp)] + grad_done)
        marks["grads"] = env.now
        start = env.now
        yield env.timeout(opt_s)
        if spans is not None:
            for s in range(pp):
                spans.append(("pipeline", s, "optimizer", start, env.now, ""))
        optimizer_done.succeed()
        if post:
            yield simpy.AllOf(env, [done[k] for k in post])
        marks["end"] = env.now

    lag_end = {}

    def overlapped():
        for k in lagged:
            yield done[k]
            lag_end[k] = env.now

    env.process(optimizer())
    if lagged:
        env.process(overlapped())
    env.run()
    # a lagged sync longer than its `lag` steps holds the step that applies it back
    T = max([marks["end"]] + [end / sub[k][0].lag for k, end in lag_end.items()])

    # -- breakdown (per GPU of the critical stage; sums to the step time) -------------------------
    pipe_end = max(pipelines[0].end_s)
    param_wait = max(pipelines[0].param_wait_s)
    # the critical stage: the one with the most work per step (uneven stages, the last one's logits)
    factors = stage_factors or [1.0] * pp
    per_stage = [sum(stage_f[j * pp + s] + stage_b[j * pp + s] for j in range(vpp)) * factors[s] for s in range(pp)]
    crit = max(range(pp), key=per_stage.__getitem__)
    chunks = [j * pp + crit for j in range(vpp)]
    compute = m * sum(costs.forward_s[v] + costs.backward_s[v] for v in chunks) * factors[crit]
    tp_exposed = m * sum(costs.tp_forward_s[v] + costs.tp_backward_s[v] for v in chunks)
    ideal = ideal_bubble_s(pp, vpp, sum(stage_f[v] for v in chunks), sum(stage_b[v] for v in chunks))
    rest = max(pipe_end - param_wait - compute - tp_exposed, 0.0)
    bubble = min(rest, ideal)
    dp_exposed = param_wait + (marks["grads"] - pipe_end) + (T - marks["grads"] - opt_s)

    bytes_by_tier: dict[str, float] = defaultdict(float)
    for res, b in net.bytes_by_resource.items():
        for tier, count in tier_of_res[res].items():
            bytes_by_tier[tier] += b * count
    bytes_by_tier["intra_node"] += costs.tp_bytes_per_microbatch * m
    if cp_bytes:
        bytes_by_tier[cp_bytes[0]] += cp_bytes[1] * m
    return RunStats(T, compute, tp_exposed, bubble, rest - bubble, dp_exposed, opt_s, pipe_end,
                    dict(bytes_by_tier), routes.tier_capacity(), plan, owned, 0, net.flows_started, spans or [])


def _tp_collective(routes: Routes, placement, workload: Workload, constants: SimConstants) -> tuple[float, float]:
    """Time and per-GPU bytes of one TP all-gather of a micro-batch's activation, run alone
    on the network (NVLink carries nothing else, so alone is exact)."""
    par = workload.parallel
    if par.tp < 2:
        return 0.0, 0.0
    group = tuple(placement.gpu_of[(0, 0, t)] for t in range(par.tp))
    env = simpy.Environment()
    net = Network(env, link_capacities(routes, constants.link_efficiency()))
    tpl = step_template(routes, "all_gather", (group,))
    numel = par.micro_batch_size * workload.model.seq_len * workload.model.hidden
    ev = start_coflow(net, "all_gather", tpl, numel, constants.activation_bytes)
    env.run(ev)
    return env.now, coflow_bytes("all_gather", tpl, numel, constants.activation_bytes)


def _cp_exchange(routes: Routes, placement, workload: Workload, constants: SimConstants) -> tuple[float, tuple | None]:
    """Context parallelism's ring of K/V blocks for one layer and micro-batch (an all-gather of this
    rank's K and V over the CP group, timed alone) and (tier, bytes all GPUs send per micro-batch:
    forward once, backward twice for dK/dV, all layers)."""
    par, m = workload.parallel, workload.model
    if par.cp < 2:
        return 0.0, None
    group = tuple(placement.cp_group())
    env = simpy.Environment()
    net = Network(env, link_capacities(routes, constants.link_efficiency()))
    tpl = step_template(routes, "all_gather", (group,))
    # the gathered buffer: every rank's K and V block (each rank sends its own cp - 1 times)
    numel = par.cp * 2 * par.micro_batch_size * (m.seq_len // par.cp) * m.kv_heads * m.head_dim // par.tp
    env.run(start_coflow(net, "all_gather", tpl, numel, constants.activation_bytes))
    per_gpu = coflow_bytes("all_gather", tpl, numel, constants.activation_bytes)
    gpus = par.world_size // par.pp
    tier = routes.topology.tier_between(group[0], group[1])
    return env.now, (tier, 3 * m.layers * per_gpu * gpus)
