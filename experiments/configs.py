"""Experiment configs as plain data: a topology, a workload and a strategy (presets or full
mappings) plus dotted-path overrides — the unit a sweep varies and a report row describes.

Dotted paths reach into the raw YAML: `topology.wan[0].rtt`, `topology.site_defaults.nodes`,
`workload.parallel.dp`, `strategy.name`, `sim.compute_efficiency`, `faults.slow_gpu_factor`. Setting a WAN link's
`distance` clears its `rtt` and the other way round, so a sweep can switch between them.
"""
from __future__ import annotations

import copy
import os
from typing import Any

from hdc.config import load_yaml, preset_source, set_in
from hdc.errors import UserError
from hdc.topology import PRESET_DIR, topology_from_dict
from hdc.workload import WORKLOAD_DIR, workload_from_dict

SECTIONS = ("topology", "workload", "strategy", "sim", "faults", "placement")


def _raw(ref: Any, folder: str, kind: str) -> dict:
    """A config section as plain data: a mapping as given, or a file or preset read as YAML."""
    if isinstance(ref, dict):
        return copy.deepcopy(ref)
    if not isinstance(ref, str):
        raise UserError(f"{kind}: must be a file, a preset name or a mapping, got {ref!r}")
    return copy.deepcopy(_parsed(preset_source(ref, folder, kind)))


_PARSED: dict[tuple[str, int, int], Any] = {}


def _parsed(path: str) -> Any:
    """A YAML file's content, parsed once per (path, mtime, size): a sweep names the same preset
    for every config. Callers get a deep copy."""
    try:
        st = os.stat(path)
    except OSError:
        return load_yaml(path)  # let it raise the usual UserError
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _PARSED:
        if len(_PARSED) > 64:
            _PARSED.clear()
        _PARSED[key] = load_yaml(path)
    return _PARSED[key]


def raw_topology(ref: Any) -> dict:
    return _raw(ref, PRESET_DIR, "topology")


def raw_workload(ref: Any, rl: bool = False) -> dict:
    """A workload section; `rl`: an RL workload (presets in workloads/rl/, simulator.rl)."""
    if not rl:
        return _raw(ref, WORKLOAD_DIR, "workload")
    from simulator.rl import RL_WORKLOAD_DIR

    return _raw(ref, RL_WORKLOAD_DIR, "RL workload")


def set_path(root: dict, dotted: str, value: Any) -> None:
    """Set `a.b[2].c` inside nested dicts/lists (hdc.config.set_in); setting a WAN link's
    distance clears its rtt and the other way round."""
    holder = set_in(root, dotted, value)
    other = {"distance": "rtt", "rtt": "distance"}.get(dotted.rsplit(".", 1)[-1])
    if other and isinstance(holder, dict):
        holder.pop(other, None)


def resolve(config: dict, evaluate: str = "simulate") -> dict:
    """Apply a config's `overrides` to its sections and validate them; returns the parts. With
    evaluate `simulate_rl` the workload is an RL workload and `placement` says where rollouts run."""
    from hdc.strategies import strategy_from_dict

    rl = evaluate == "simulate_rl"

    unknown = set(config) - set(SECTIONS) - {"overrides"}
    if unknown:
        raise UserError(f"{sorted(unknown)[0]}: unknown key; allowed: {', '.join(SECTIONS)}, overrides")
    given = set(config) | {str(k).split(".", 1)[0] for k in config.get("overrides") or {}}
    if rl and "faults" in given:
        raise UserError("faults: not modelled by evaluate simulate_rl; leave the section out")
    if not rl and "placement" in given:
        raise UserError("placement: only for evaluate simulate_rl (where a GRPO step's rollouts run)")
    data = {
        "topology": raw_topology(config.get("topology", "nemotron-2dc")),
        "workload": raw_workload(config.get("workload", "deepscaler-1.5b" if rl else "nemotron-4-340b"), rl),
        "strategy": copy.deepcopy(config.get("strategy", {"name": "hierarchical"})),
        "sim": copy.deepcopy(config.get("sim", {}) or {}),
        "faults": copy.deepcopy(config.get("faults", {}) or {}),
        "placement": copy.deepcopy(config.get("placement", {}) or {}),
    }
    if isinstance(data["strategy"], str):
        data["strategy"] = {"name": data["strategy"]}
    for dotted, value in (config.get("overrides") or {}).items():
        section = dotted.split(".", 1)[0]
        if section not in SECTIONS or "." not in dotted:
            raise UserError(f"{dotted}: must start with one of {', '.join(s + '.' for s in SECTIONS)}")
        set_path(data, dotted, value)
    # the registry checks every knob; another strategy's knob is ignored, so a grid can vary strategy.name
    strategy = strategy_from_dict(data["strategy"], "strategy", lenient=True)
    try:
        topology = topology_from_dict(data["topology"])
    except UserError as e:
        raise UserError(f"topology: {e}") from None
    try:
        if rl:
            from simulator.rl import rl_workload_from_dict

            workload = rl_workload_from_dict(data["workload"])
        else:
            workload = workload_from_dict(data["workload"])
    except UserError as e:
        raise UserError(f"workload: {e}") from None
    if not isinstance(data["sim"], dict):
        raise UserError(f"sim: must be a mapping of simulator constants, got {data['sim']!r}")
    if data["sim"]:
        from experiments.evaluate import constants_from

        constants_from(data["sim"])  # validate now, before any work
    faults = None
    if data["faults"]:
        from hdc.config import from_dict
        from simulator.faults import Faults

        faults = from_dict(Faults, data["faults"], "faults")
    placement = None
    if rl:
        from hdc.config import from_dict
        from simulator.rl import RLPlacement

        placement = from_dict(RLPlacement, data["placement"], "placement")
    return {"topology": topology, "workload": workload, "strategy": strategy, "sim": data["sim"], "faults": faults,
            "placement": placement}
