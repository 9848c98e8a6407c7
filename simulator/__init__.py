"""hdc's simulated executor: runs any strategy's plan, plus a whole training step, in SimPy
over a NetworkX model of the topology. See docs/simulator.md.

    from simulator import simulate
    r = simulate("nemotron-2dc", "nemotron-4-340b", "hierarchical")
    print(r.step_time_s, r.mfu, r.scaling_efficiency)
"""
from simulator.cache import SimCache
from simulator.faults import Faults
from simulator.model import SimConstants
from simulator.result import Result
from simulator.simulate import calibrate_compute_efficiency, simulate, single_site

__all__ = ["simulate", "Result", "SimConstants", "SimCache", "Faults", "calibrate_compute_efficiency", "single_site"]
