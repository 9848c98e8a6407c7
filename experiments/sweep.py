"""`hdc sweep`: a product grid of configs, evaluated in parallel, written as one CSV row each.

Grid file:
    base:                         # one config (see experiments/configs.py)
      topology: nemotron-2dc
      workload: nemotron-4-340b
      strategy: {name: chunked, chunks: 4}
    grid:                         # dotted path -> list of values; the product is swept
      topology.wan[0].rtt: [1ms, 21ms, 100ms]
      strategy.name: [flat_ring, hierarchical]
      # workload: [llama-3-8b, llama-3-70b]   # a bare section sweeps presets (or mappings)
    evaluate: simulate            # or alpha_beta (closed form only), or simulate_rl (a GRPO
                                  # step: an RL workload and a `placement` section)

Every config is validated before anything runs. Rows are appended as they finish, keyed by
`config_id` (a hash of the config), so an interrupted sweep resumes where it stopped.
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import io
import json
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Iterator

from hdc.config import load_yaml
from hdc.errors import UserError
from hdc.outputs import check_output_file
from experiments.configs import SECTIONS, resolve

EVALUATORS = ("simulate", "alpha_beta", "simulate_rl")
# The largest grid one sweep takes: 1,000 configs of Llama-3-70B on 3,072 GPUs simulate in 31 s
# on 2 cores, so 10,000 is minutes; a larger grid is a typo (or several sweeps).
MAX_GRID_CONFIGS = 10_000


def load_grid(path: str) -> dict:
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: must be a mapping with keys base, grid, evaluate")
    unknown = set(data) - {"base", "grid", "evaluate"}
    if unknown:
        raise UserError(f"{path}: {sorted(unknown)[0]}: unknown key; allowed: base, grid, evaluate")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise UserError(f"{path}: grid: must map dotted paths to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: grid.{key}: must be a non-empty list of values")
        if str(key).split(".", 1)[0] not in SECTIONS:  # a bare section swaps the whole preset or mapping
            raise UserError(f"{path}: grid.{key}: must start with one of {', '.join(s + '.' for s in SECTIONS)} "
                            f"(or be one of them alone, to sweep presets)")
    n = math.prod(len(v) for v in grid.values())
    if n > MAX_GRID_CONFIGS:
        sizes = " × ".join(str(len(v)) for v in grid.values())
        raise UserError(f"{path}: grid: {sizes} = {n:,} configs; at most {MAX_GRID_CONFIGS:,} per sweep (1,000 "
                        f"configs take about 30 s on 2 cores): split the grid into several sweeps")
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise UserError(f"{path}: base: must be a mapping")
    evaluate = data.get("evaluate", "simulate")
    if evaluate not in EVALUATORS:
        raise UserError(f"{path}: evaluate: must be one of {', '.join(EVALUATORS)}, got {evaluate!r}")
    return {"base": base, "grid": grid, "evaluate": evaluate}


def expand(grid: dict) -> Iterator[tuple[dict, dict]]:
    """(config, inputs) for each point of the product grid."""
    keys = list(grid["grid"])
    for values in itertools.product(*(grid["grid"][k] for k in keys)):
        inputs = dict(zip(keys, values))
        sections = {k: v for k, v in inputs.items() if k in SECTIONS}  # `topology: [a, b]`: presets swept
        config = {**grid["base"], **sections}
        config["overrides"] = {**(grid["base"].get("overrides") or {}),
                               **{k: v for k, v in inputs.items() if k not in SECTIONS}}
        yield config, inputs


def grid_id(grid: dict) -> str:
    """What rows of one sweep share: its base, evaluator and grid keys (the values may grow, so a
    grid extended by a value resumes into the same CSV)."""
    blob = json.dumps({"base": grid["base"], "keys": sorted(grid["grid"]), "evaluate": grid["evaluate"]},
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def config_id(config: dict, evaluate: str) -> str:
    blob = json.dumps({"config": config, "evaluate": evaluate}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def evaluate_config(config: dict, evaluate: str, cache=None) -> dict[str, Any]:
    """Outputs for one config: simulator predictions, or the closed-form sync time. `cache`
    (a simulator.cache.SimCache) carries routes, plans and baselines between the configs of a
    batch; default: the process's own."""
    from simulator.cache import DEFAULT

    cache = cache or DEFAULT
    parts = resolve(config, evaluate)
    if evaluate == "simulate_rl":
        from experiments.evaluate import constants_from
        from simulator.rl import simulate_rl

        return simulate_rl(parts["topology"], parts["workload"], parts["placement"], parts["strategy"],
                           constants_from(parts["sim"])).row()
    if evaluate == "alpha_beta":
        from hdc import cost
        from hdc.placement import place

        topo, work, strategy = parts["topology"], parts["workload"], parts["strategy"]
        groups = place(topo, work.parallel).dp_groups()
        key = ("alpha_beta", topo.structure_key, strategy.describe(), tuple(map(tuple, groups)),
               work.params_per_rank, work.grad_bytes)

        def make():
            plan = strategy.plan(topo, groups, work.params_per_rank, work.grad_bytes)
            return plan, cost.wan_bytes(topo, plan)
        plan, (total, per_rank) = cache.get("plans", key, make)
        return {"alpha_beta_sync_s": cost.plan_time_s(topo, plan), "wan_bytes_per_rank": per_rank}
    from experiments.evaluate import simulate_row

    return simulate_row(parts, cache)


def _run(args: tuple[dict, str]) -> dict[str, Any]:
    config, evaluate = args
    return evaluate_config(config, evaluate)


def run_sweep(grid: dict, out_csv: str, jobs: int = 1, executor: str = "local",
              progress: bool = True, on_row: Callable[[dict], None] | None = None) -> int:
    """Evaluate every config not already in out_csv; returns how many were evaluated."""
    from tqdm import tqdm

    gid = grid_id(grid)
    rows_done(out_csv, gid)  # before any work: a CSV of another sweep is refused
    points = list(expand(grid))
    # validate everything before any work or output (about 3 ms a config: a bar for large grids)
    for config, _ in tqdm(points, desc="sweep: checking configs", unit="cfg", disable=not progress or len(points) < 1000):
        resolve(config, grid["evaluate"])
    done = rows_done(out_csv, gid, repair=True)
    todo = [(config_id(c, grid["evaluate"]), c, inputs) for c, inputs in points]
    todo = [t for t in todo if t[0] not in done]
    writer = _RowWriter(out_csv)
    try:
        for r in _evaluate_all(todo, grid["evaluate"], jobs, executor, progress):
            row = {"config_id": r.pop("config_id"), "grid_id": gid, **r}
            writer.write(row)
            if on_row:
                on_row(row)
    finally:
        writer.close()
    return len(todo)


def rows_done(out_csv: str, gid: str, repair: bool = False) -> set[str]:
    """The config_ids already in `out_csv` (empty if there is none). Refuses a file that is no
    sweep CSV (binary, no config_id column) or holds rows of another grid. A last row cut short
    by a kill mid-write (no final newline) is not done; with `repair` it is dropped from the
    file, so that config is evaluated again and written whole."""
    check_output_file(out_csv, "--out")
    if not os.path.lexists(out_csv):
        return set()
    with open(out_csv, "rb") as fh:
        raw = fh.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        raise UserError(f"--out {out_csv}: not a text CSV (binary content); give a new file or the CSV of this sweep")
    if not text.strip():
        return set()
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header, body = rows[0], rows[1:]
    if "config_id" not in header:
        raise UserError(f"--out {out_csv}: no config_id column, so not a CSV written by hdc sweep; give a new file")
    if "grid_id" not in header:
        raise UserError(f"--out {out_csv}: no grid_id column (written by another tool or an older hdc sweep); "
                        f"give a new file")
    if body and not text.endswith(("\n", "\r")):  # the last write was cut short
        body = body[:-1]
        if repair:
            print(f"sweep: dropping the incomplete last row of {out_csv} (an interrupted write); it is redone",
                  file=sys.stderr)
            _rewrite(out_csv, header, body)
    for i, row in enumerate(body):
        if len(row) != len(header):
            raise UserError(f"--out {out_csv}: line {i + 2} has {len(row)} fields where the header has "
                            f"{len(header)}: a damaged file; give a new file")
    g = header.index("grid_id")
    other = next((r[g] for r in body if r[g] != gid), None)
    if other is not None:
        raise UserError(f"--out {out_csv}: holds rows of another sweep (grid_id {other}; this grid's is {gid}: "
                        f"its base, evaluate or grid keys differ); give a new file")
    c = header.index("config_id")
    return {r[c] for r in body}


def _rewrite(path: str, header: list[str], rows: list[list[str]]) -> None:
    """Replace a CSV atomically (write a temporary file, then rename it over the old one)."""
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


def _evaluate_all(todo, evaluate: str, jobs: int, executor: str, progress: bool) -> Iterator[dict]:
    """Rows as they finish (any order)."""
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc="sweep", unit="cfg", disable=not progress)

    def row(i: int, outputs: dict) -> dict:
        bar.update()
        cid, _, inputs = todo[i]
        return {"config_id": cid, **{k: _cell(v) for k, v in inputs.items()}, **outputs}

    try:
        if executor == "ray":
            yield from _on_ray(todo, evaluate, row)
        elif jobs <= 1:
            from simulator.cache import SimCache

            cache = SimCache()  # one for the whole run: every config may reuse its neighbours' work
            for i, (_, c, _) in enumerate(todo):
                yield row(i, evaluate_config(c, evaluate, cache))
        else:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                futures = {pool.submit(_run_batch, [(todo[i][1], evaluate) for i in b]): b
                           for b in _batches(len(todo), jobs)}
                for fut in as_completed(futures):
                    for i, outputs in zip(futures[fut], fut.result()):
                        yield row(i, outputs)
    finally:
        bar.close()


def _batches(n: int, workers: int) -> list[list[int]]:
    """Consecutive configs in ~8 batches per worker: neighbours in a grid share a topology, so
    a worker's caches (routes, plans) serve the whole batch."""
    size = max(1, n // (workers * 8))
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def _run_batch(items: list[tuple[dict, str]]) -> list[dict]:
    """A batch of neighbouring configs in one worker, sharing one cache."""
    from simulator.cache import SimCache

    cache = SimCache()
    return [evaluate_config(c, e, cache) for c, e in items]


def _on_ray(todo, evaluate: str, row) -> Iterator[dict]:
    """The same batches as tasks on a Ray cluster: the one `RAY_ADDRESS` names (`ray start
    --head` on one machine, `ray start --address ...` on the others), else a local one."""
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray: install the ray extra (pip install -e .[ray])") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR")
    try:
        remote = ray.remote(_run_batch)
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        refs = {remote.remote([(todo[i][1], evaluate) for i in b]): b for b in _batches(len(todo), workers)}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending)
            for ref in ready:
                for i, outputs in zip(refs[ref], ray.get(ref)):
                    yield row(i, outputs)
    finally:
        if started:
            ray.shutdown()


class _RowWriter:
    """Appends rows to the CSV as they arrive, flushing each; widens the header if needed."""

    def __init__(self, path: str):
        self.path, self.fh, self.writer, self.fields = path, None, None, None

    def write(self, row: dict) -> None:
        if self.writer is None or any(k not in self.fields for k in row):
            self._reopen(row)
        self.writer.writerow(row)
        self.fh.flush()

    def _reopen(self, row: dict) -> None:
        old: list[dict] = []
        fields: list[str] = []
        if self.fh:
            self.fh.close()
        if os.path.exists(self.path):
            with open(self.path, newline="") as fh:
                reader = csv.DictReader(fh)
                old, fields = list(reader), list(reader.fieldnames or [])
        fields += [k for k in row if k not in fields]
        if old and fields == list(old[0].keys()):
            self.fh = open(self.path, "a", newline="")
            self.writer = csv.DictWriter(self.fh, fieldnames=fields)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            tmp = self.path + ".tmp"
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=fields)
                w.writeheader()
                w.writerows(old)
            os.replace(tmp, self.path)
            self.fh = open(self.path, "a", newline="")
            self.writer = csv.DictWriter(self.fh, fieldnames=fields)
        self.fields = fields

    def close(self) -> None:
        if self.fh:
            self.fh.close()


def _cell(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (dict, list)) else v
