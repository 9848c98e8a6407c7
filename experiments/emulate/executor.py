"""Which real executor runs the plans, and which model predicts them.

Validation is about THE executor and THE simulator: `trainer.distributed.executor.PlanExecutor`
runs the plans and `simulator.collectives.simulate_plan` (its `pipelined` mode: what gloo's ring
sends) predicts them.
"""
from __future__ import annotations

from hdc.plan import Plan
from hdc.topology import Topology


class Executor:
    def __init__(self, name: str, run):
        self.name, self._run = name, run

    def run(self, plan: Plan, buf):
        """Run my part of the plan; the executor's per-step spans if it gives them."""
        self.last_spans = self._run(plan, buf)
        return self.last_spans


def executor_for(topology: Topology, plans: list[Plan], rank: int, world: int) -> Executor:
    """Build the executor and every process group the plans need (COLLECTIVE: every rank
    calls this with the same plans in the same order)."""
    from trainer.distributed.executor import PlanExecutor
    from trainer.distributed.groups import ProcessGroups

    groups = ProcessGroups(topology, timeout_s=300.0)
    execs = {id(p): PlanExecutor(p, groups) for p in plans}
    return Executor("trainer.distributed.executor.PlanExecutor", lambda p, buf: execs[id(p)].run(buf))


def predict_s(topology: Topology, plan: Plan, pipeline=None) -> tuple[float, str]:
    """(predicted time of the plan run alone, which model gave it): the simulator's
    `pipelined` mode with `pipeline` (a simulator.collectives.LibraryPipelining: gloo's ring when None)."""
    from simulator.collectives import simulate_plan
    from simulator.network import Routes

    times = simulate_plan(Routes(topology), plan, "pipelined", pipeline=pipeline)
    return max((end for _, end in times.values()), default=0.0), "simulator.collectives.simulate_plan(pipelined)"
