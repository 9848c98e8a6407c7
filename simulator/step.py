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

from collections import defaultdict
from dataclasses import dataclass, field

import simpy

from hdc.placement import place
from hdc.plan import Plan, Step
from hdc.strategies import Strategy
from hdc.topology import Topology
from hdc.workload import Workload
from simulator.cache import DEFAULT, SimCache
from simulator.collectives import Template, link_capacities, run_exact, start_coflow, step_template
from simulator.model import SimConstants, op_costs
from simulator.network import Network, Routes, atoms
from simulator.pipeline import PipelineSchedule, ideal_bubble_s
from simulator.step_inputs import (GradientClock, cp_exchange, dp_plan, fsdp_collectives, tp_collective,
                                  workload_sync_plans)

__all__ = ["RunStats", "run_step", "dp_plan", "workload_sync_plans"]


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


def run_step(topology: Topology, workload: Workload, strategy: Strategy, constants: SimConstants,
             train_step: int = 0, aggregate: bool = True, timeline: bool = False,
             routes: Routes | None = None, rounds: str = "coflow",
             stage_factors: list[float] | None = None, cache: SimCache = DEFAULT) -> RunStats:
    """Simulate one step. aggregate=True simulates one pipeline for all DP replicas and TP
    ranks (their traffic folded into link weights); False simulates every rank.
    rounds='exact' runs every collective message by message with a barrier per round
    (only with aggregate=False); 'coflow' runs each group's rounds as one flow.
    stage_factors slow the compute of each pipeline stage (stragglers; see simulator.faults)."""
    return StepSimulation(topology, workload, strategy, constants, train_step, aggregate, timeline,
                          routes or cache.routes(topology), rounds, stage_factors, cache).run()


class StepSimulation:
    """One step as SimPy processes, set up in the order of the module docstring: who is
    simulated, the plan split per stage, the network, compute costs, the events pipeline and
    plan share, then the pipelines, the plan's steps and the optimizer."""

    def __init__(self, topology: Topology, workload: Workload, strategy: Strategy, constants: SimConstants,
                 train_step: int, aggregate: bool, timeline: bool, routes: Routes, rounds: str,
                 stage_factors: list[float] | None, cache: SimCache):
        self.topology, self.workload, self.constants = topology, workload, constants
        self.aggregate, self.rounds, self.routes = aggregate, rounds, routes
        self.par = par = workload.parallel
        self.pp, self.vpp, self.m = par.pp, par.vpp, par.micro_batches
        self.factors = stage_factors or [1.0] * par.pp
        self.placement = place(topology, par)
        self.env = simpy.Environment()
        self.spans: list | None = [] if timeline else None
        self._choose_ranks()
        self.plan = dp_plan(strategy, topology, workload, self.groups, cache, self.plan_numel)
        self._split_plan(train_step)
        self._build_network()
        self._price_compute()
        self._share_events()
        self._start_pipelines(stage_factors)
        self._start_plan_steps()
        self._start_optimizer()

    # -- who is simulated: one pipeline standing for every replica and TP/CP rank, or all of them
    def _choose_ranks(self) -> None:
        gpu_of, par, width = self.placement.gpu_of, self.par, self.placement.width
        if self.aggregate:
            self.pipes = [[[gpu_of[(d, s, 0)] for d in range(par.dp)] for s in range(self.pp)]]
            self.groups = [[gpu_of[(d, s, 0)] for d in range(par.dp)] for s in range(self.pp)]
            names = self.routes.gpu_names
            # links of other TP/CP ranks' GPUs are images, not shared: count their messages `width` times
            self.mult = lambda link: 1 if (link[0] in names or link[1] in names) else width
        else:
            self.pipes = [[[gpu_of[(d, s, t)]] for s in range(self.pp)] for d in range(par.dp) for t in range(width)]
            self.groups = self.placement.dp_groups()
            self.mult = lambda link: 1
        if self.workload.shard_params:  # FSDP inside each site; the strategy syncs rank j's shard across sites
            sites = len(self.topology.sites)
            per_site = par.dp // sites
            ts = range(1 if self.aggregate else width)
            self.groups = [[gpu_of[(si * per_site + j, s, t)] for si in range(sites)]
                           for s in range(self.pp) for t in ts for j in range(per_site)]
            self.plan_numel = -(-self.workload.params_per_rank // per_site)
        else:
            self.plan_numel = None
        self.stage_of = {g: s for (d, s, t), g in gpu_of.items()}
        self._templates: dict = {}
        self._shared_templates = self.routes.templates.setdefault((self.aggregate, width), {})

    def template(self, op: str, groups: tuple, algorithm: str = "ring") -> Template:
        """A step's link loads, shared by equal topologies (kept on their Routes)."""
        key = (op, groups, algorithm)
        if key not in self._templates:
            if key not in self._shared_templates:
                self._shared_templates[key] = step_template(self.routes, op, groups, self.mult, algorithm)
            self._templates[key] = self._shared_templates[key]
        return self._templates[key]

    # -- the DP plan, split into per-stage sub-steps (the groups of a step are disjoint) -------
    def _split_plan(self, train_step: int) -> None:
        self.sub: dict[tuple[int, int], tuple[Step, tuple, tuple]] = {}
        for step in (s for s in self.plan.steps if s.active(train_step)):
            per: dict[int, tuple[list, list]] = defaultdict(lambda: ([], []))
            for g, r in zip(step.groups, step.regions):
                per[self.stage_of[g[0]]][0].append(tuple(g))
                per[self.stage_of[g[0]]][1].append(r)
            for s, (gs, rs) in per.items():
                self.sub[(step.id, s)] = (step, tuple(gs), tuple(rs))
                self.template(step.op, tuple(gs), step.algorithm)
        pp = self.pp
        self.p2p = {(a, b): [self.template("send_recv", tuple(zip(pipe[a], pipe[b]))) for pipe in self.pipes]
                    for a in range(pp) for b in ((a + 1) % pp, (a - 1) % pp) if a != b}

    # -- network: links grouped into atoms (aggregate) or one resource per link (exact) -------
    def _build_network(self) -> None:
        routes, width = self.routes, self.placement.width
        caps = link_capacities(routes, self.constants.link_efficiency())
        if self.aggregate:
            templates = list({id(t): t for t in self._templates.values()}.values())
            of, atom_caps, _ = atoms(caps, [t.weights for t in templates])
            self.net = Network(self.env, dict(enumerate(atom_caps)))
            self.resource_of = of.__getitem__
            self.tier_of_res = defaultdict(lambda: defaultdict(float))
            for link, a in of.items():
                self.tier_of_res[a][routes.links[link].tier] += 1 if self.mult(link) == width else width
        else:
            self.net = Network(self.env, caps)
            self.resource_of = None
            self.tier_of_res = {k: {link.tier: 1.0} for k, link in routes.links.items()}

    # -- compute, TP and CP costs per virtual stage -------------------------------------------
    def _price_compute(self) -> None:
        tp_s, tp_bytes = tp_collective(self.routes, self.placement, self.workload, self.constants)
        cp_s, self.cp_bytes = cp_exchange(self.routes, self.placement, self.workload, self.constants)
        ag_s, rs_s, self.fsdp_bytes = fsdp_collectives(self.routes, self.placement, self.workload, self.constants)
        c = self.costs = op_costs(self.workload, self.topology.gpu, self.constants, tp_s, tp_bytes, cp_s,
                                  (ag_s, rs_s))
        self.stage_f = [f + t for f, t in zip(c.forward_s, c.tp_forward_s)]
        self.stage_b = [b + t for b, t in zip(c.backward_s, c.tp_backward_s)]

    # -- events the pipeline and the plan share ----------------------------------------------
    def _share_events(self) -> None:
        env, sub, vpp = self.env, self.sub, self.vpp
        self.clock = clock = GradientClock(self.plan.numel, vpp)
        self.trig = {}  # (pipe, stage, name) -> event
        self.trig_at = defaultdict(list)  # (stage, chunk) -> [(fraction, name)]
        ends: dict[tuple[int, str], int] = {}
        for (_, s), (st, _, rs) in sub.items():
            if st.trigger and st.phase == "grad":
                ends[(s, st.trigger)] = max(ends.get((s, st.trigger), 0), max(o + n for o, n in rs))
        for (s, name), end in ends.items():
            chunk, frac = clock.locate(end)
            self.trig_at[(s, chunk)].append((frac, name))
            for pi in range(len(self.pipes)):
                self.trig[(pi, s, name)] = env.event()
        params = {k for k, (st, _, _) in sub.items() if st.phase == "param"}
        self.pre = {k for k in params if sub[k][0].overlap == "forward"}
        # a parameter sync with a lag overlaps the following steps: in steady state one is in flight
        # from the step's start, sharing the network, and it must finish within `lag` steps
        self.lagged = {k for k in params - self.pre if sub[k][0].lag > 0}
        self.post = params - self.pre - self.lagged
        self.done: dict[tuple[int, int], simpy.Event] = {k: env.event() for k in sub}
        self.param_waits = defaultdict(list)  # (stage, chunk) -> events
        for k in self.pre:
            rs = sub[k][2]
            for chunk in range(vpp):
                lo, hi = clock.chunk_range(chunk)
                if any(o < hi and o + n > lo for o, n in rs):
                    self.param_waits[(k[1], chunk)].append(self.done[k])

    def _part(self, key) -> int:
        """Which of pre / lagged / the rest a sub-step belongs to (deps stay within a part)."""
        return 0 if key in self.pre else 1 if key in self.lagged else 2

    def _on_last_backward(self, pi, s, chunk, start, dur) -> None:
        for frac, name in self.trig_at.get((s, chunk), ()):
            ev = self.trig[(pi, s, name)]
            self.env.timeout(frac * dur).callbacks.append(lambda _e, ev=ev: ev.succeed())

    # -- the pipelines ---------------------------------------------------------------------------
    def _start_pipelines(self, stage_factors) -> None:
        def sender(pi):
            return lambda a, b: start_coflow(self.net, "send_recv", self.p2p[(a, b)][pi], self.costs.p2p_bytes, 1,
                                             self.resource_of)

        self.pipelines = [
            PipelineSchedule(self.env, self.pp, self.vpp, self.m, self.stage_f, self.stage_b, sender(pi),
                             lambda s, j: self.param_waits.get((s, j), []),
                             lambda s, j, t0, d, pi=pi: self._on_last_backward(pi, s, j, t0, d),
                             spans=self.spans if pi == 0 else None, name="pipeline", stage_factors=stage_factors)
            for pi in range(len(self.pipes))]

    # -- the plan's steps -------------------------------------------------------------------------
    def _deps(self, key) -> list:
        st, s = self.sub[key][0], key[1]
        deps = [self.done[(d, s)] for d in st.deps if (d, s) in self.done and self._part((d, s)) == self._part(key)]
        if key in self.post:
            deps.append(self.optimizer_done)
        if st.phase == "grad":
            overlap = self.workload.overlap_grad_reduce
            if st.trigger and overlap:
                deps += [self.trig[(pi, s, st.trigger)] for pi in range(len(self.pipes))]
            elif not st.deps or not overlap:  # the first step, or every step without overlap: after backward
                deps += [p.done[s] for p in self.pipelines]
        return deps

    def _run_sub(self, key):
        env, net = self.env, self.net
        st, gs, rs = self.sub[key]
        deps = self._deps(key)
        if deps:
            yield simpy.AllOf(env, deps)
        start = env.now
        esize = self.plan.wire_bytes(st)
        if self.aggregate:
            tpl = self.template(st.op, gs, st.algorithm)
            yield start_coflow(net, st.op, tpl, max(n for _, n in rs), esize, self.resource_of)
        elif self.rounds == "coflow":
            yield simpy.AllOf(env, [start_coflow(net, st.op, self.template(st.op, (g,), st.algorithm), n, esize)
                                    for g, (_, n) in zip(gs, rs)])
        else:
            yield simpy.AllOf(env, [env.process(run_exact(env, net, self.routes, st.op, g, n, esize, st.algorithm))
                                    for g, (_, n) in zip(gs, rs)])
        if self.spans is not None:
            self.spans.append(("dp", key[1], f"dp:{st.label or st.op}", start, env.now,
                               f"step {st.id} chunk {st.chunk}"))
        self.done[key].succeed()

    def _start_plan_steps(self) -> None:
        self.optimizer_done = self.env.event()
        for key in self.sub:
            self.env.process(self._run_sub(key))

    # -- the optimizer: memory-bound Adam over the owned elements, once every stage is synced --
    def _start_optimizer(self) -> None:
        self.owned = sum(n for _, n in self.plan.owned_regions(self.groups[0][0]))
        c = self.constants
        self.opt_s = self.owned * c.optimizer_bytes_per_param / c.hbm_Bps(self.topology.gpu.generation)
        self.marks: dict[str, float] = {}
        self.lag_end: dict = {}
        self.env.process(self._optimizer())
        if self.lagged:
            self.env.process(self._lagged())

    def _optimizer(self):
        env = self.env
        grad_done = [self.done[k] for k in self.sub if self._part(k) == 2 and k not in self.post]
        yield simpy.AllOf(env, [p.done[s] for p in self.pipelines for s in range(self.pp)] + grad_done)
        self.marks["grads"] = start = env.now
        yield env.timeout(self.opt_s)
        if self.spans is not None:
            self.spans.extend(("pipeline", s, "optimizer", start, env.now, "") for s in range(self.pp))
        self.optimizer_done.succeed()
        if self.post:
            yield simpy.AllOf(env, [self.done[k] for k in self.post])
        self.marks["end"] = env.now

    def _lagged(self):
        for k in self.lagged:
            yield self.done[k]
            self.lag_end[k] = self.env.now

    # -- run, then the breakdown (per GPU of the critical stage; sums to the step time) --------
    def run(self) -> RunStats:
        self.env.run()
        # a lagged sync longer than its `lag` steps holds the step that applies it back
        step_s = max([self.marks["end"]] + [end / self.sub[k][0].lag for k, end in self.lag_end.items()])
        pp, vpp, m, c = self.pp, self.vpp, self.m, self.costs
        pipe_end = max(self.pipelines[0].end_s)
        param_wait = max(self.pipelines[0].param_wait_s)
        # the critical stage: the most work per step (uneven stages, the last one's output layer)
        work = [sum(self.stage_f[j * pp + s] + self.stage_b[j * pp + s] for j in range(vpp)) * self.factors[s]
                for s in range(pp)]
        crit = max(range(pp), key=work.__getitem__)
        chunks = [j * pp + crit for j in range(vpp)]
        compute = m * sum(c.forward_s[v] + c.backward_s[v] for v in chunks) * self.factors[crit]
        tp_exposed = m * sum(c.tp_forward_s[v] + c.tp_backward_s[v] for v in chunks)
        ideal = ideal_bubble_s(pp, vpp, sum(self.stage_f[v] for v in chunks), sum(self.stage_b[v] for v in chunks))
        rest = max(pipe_end - param_wait - compute - tp_exposed, 0.0)
        bubble = min(rest, ideal)
        dp_exposed = param_wait + (self.marks["grads"] - pipe_end) + (step_s - self.marks["grads"] - self.opt_s)
        return RunStats(step_s, compute, tp_exposed, bubble, rest - bubble, dp_exposed, self.opt_s, pipe_end,
                        self._bytes_by_tier(), self.routes.tier_capacity(), self.plan, self.owned, 0,
                        self.net.flows_started, self.spans or [])

    def _bytes_by_tier(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for res, b in self.net.bytes_by_resource.items():
            for tier, count in self.tier_of_res[res].items():
                out[tier] += b * count
        out["intra_node"] += self.costs.tp_bytes_per_microbatch * self.m
        for extra in (self.cp_bytes, self.fsdp_bytes):
            for tier, b in (extra or {}).items():
                out[tier] += b * self.m
        return dict(out)
