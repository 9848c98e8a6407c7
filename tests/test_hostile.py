"""Hostile input, command by command: each case must be refused with exit 2, one line naming the
field, no traceback, within its time limit, and without changing any file (tests/hostile.py).

Categories: topology files (every numeric field x non-finite, huge, tiny, negative, wrong-type
values; YAML bombs, recursion, depth, duplicate keys, binary and oversized files; structure),
workload files, command-line flags, recipe fields (files and --set), sweep grids and result
CSVs, report output folders and configs, plot inputs, and training output folders. The cases
run in-process (a few hundred in well under a minute); `-m fuzz` adds the same YAML bombs
and hangs as real subprocesses with a hard timeout.
"""
from __future__ import annotations

import copy
import json

import pytest
import yaml

from hostile import Case, check_refused

INF, NAN = float("inf"), float("nan")
HUGE_INT = 10**30

# ---------------------------------------------------------------------- topology
TIER = {"latency": "2us", "bandwidth": "400GB/s"}
TOPOLOGY = {
    "name": "t",
    "gpu": {"name": "g", "peak_flops": "100TFLOPS", "memory": "80GB"},
    "sites": [{"name": "a", "nodes": 2, "gpus_per_node": 2, "pods": 1, "intra_node": dict(TIER),
               "intra_pod": {"latency": "5us", "bandwidth": "100Gbps"}},
              {"name": "b", "nodes": 2, "gpus_per_node": 2, "intra_node": dict(TIER),
               "intra_pod": {"latency": "5us", "bandwidth": "100Gbps"}}],
    "wan": [{"sites": ["a", "b"], "rtt": "20ms", "bandwidth": "100Gbps", "links": 2}],
}
BAD_BANDWIDTH = [INF, -INF, NAN, 1e300, "1e999Gbps", "1e-300Gbps", "-5Gbps", "0Gbps", "400", "400 furlongs/s", "",
                 "Gbps", [1], {"a": 1}, True, None, "1e20TB/s", "nanGbps"]
BAD_TIME = [INF, NAN, "1e999ms", "-1us", "1e300s", "1e-300s", "20", "20 fortnights", [], True, "abc"]
BAD_DISTANCE = [INF, "1e999km", "-5km", "1e-300km", "1e9km", "5 parsecs", "1000", True]
BAD_COUNT = [INF, NAN, 1.5, -1, 0, "1e999", HUGE_INT, "abc", [2], True, "two"]
BAD_FLOPS = [INF, "1e999TFLOPS", "0TFLOPS", "-1TFLOPS", "1e30PFLOPS", "fast", True]
BAD_SIZE = [INF, "-1GB", "1e30GB", "0.5B", "1e999GB", "lots", 1.5]


def _set(data: dict, path: tuple, value) -> dict:
    out = copy.deepcopy(data)
    cur = out
    for k in path[:-1]:
        cur = cur[k]
    if value is _DELETE:
        del cur[path[-1]]
    else:
        cur[path[-1]] = value
    return out


_DELETE = object()


def _dotted(path: tuple) -> str:
    out = ""
    for k in path:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else k)
    return out


def _topology_case(cid: str, path: tuple, value, field: str | None = None, data: dict | None = None) -> Case:
    data = _set(data or TOPOLOGY, path, value)
    return Case(cid, ["topology", "validate", "{tmp}/t.yaml"], field or _dotted(path),
                files={"t.yaml": yaml.safe_dump(data)})


def topology_cases() -> list[Case]:
    cases = []
    for path in [("sites", 0, "intra_node", "bandwidth"), ("sites", 1, "intra_pod", "bandwidth"),
                 ("wan", 0, "bandwidth")]:
        cases += [_topology_case(f"topo-{_dotted(path)}={v!r}", path, v) for v in BAD_BANDWIDTH]
    for path in [("sites", 0, "intra_node", "latency"), ("sites", 1, "intra_pod", "latency"), ("wan", 0, "rtt")]:
        cases += [_topology_case(f"topo-{_dotted(path)}={v!r}", path, v) for v in BAD_TIME]
    no_rtt = _set(TOPOLOGY, ("wan", 0, "rtt"), _DELETE)
    cases += [_topology_case(f"topo-wan[0].distance={v!r}", ("wan", 0, "distance"), v, data=no_rtt)
              for v in BAD_DISTANCE]
    for path in [("sites", 0, "nodes"), ("sites", 1, "gpus_per_node"), ("sites", 0, "pods"), ("wan", 0, "links")]:
        cases += [_topology_case(f"topo-{_dotted(path)}={v!r}", path, v) for v in BAD_COUNT]
    cases += [_topology_case(f"topo-gpu.peak_flops={v!r}", ("gpu", "peak_flops"), v) for v in BAD_FLOPS]
    cases += [_topology_case(f"topo-gpu.memory={v!r}", ("gpu", "memory"), v) for v in BAD_SIZE]
    # a third tier given as a bad mapping, structure mistakes
    cases += [
        _topology_case("topo-intra_site-latency-below-pod", ("sites", 0, "intra_site"),
                       {"latency": "1us", "bandwidth": "100Gbps"}, "sites[0].intra_site.latency"),
        _topology_case("topo-intra_site-not-mapping", ("sites", 0, "intra_site"), "fast", "sites[0].intra_site"),
        _topology_case("topo-tier-unknown-key", ("sites", 0, "intra_node", "jitter"), "1us", "sites[0].intra_node.jitter"),
        _topology_case("topo-site-unknown-key", ("sites", 0, "racks"), 4, "sites[0].racks"),
        _topology_case("topo-unknown-top-key", ("colour",), "blue", "colour"),
        _topology_case("topo-no-name", ("name",), _DELETE, "name"),
        _topology_case("topo-no-sites", ("sites",), _DELETE, "sites"),
        _topology_case("topo-empty-sites", ("sites",), [], "sites"),
        _topology_case("topo-no-intra-node", ("sites", 0, "intra_node"), _DELETE, "sites[0].intra_node"),
        _topology_case("topo-no-bandwidth", ("sites", 0, "intra_node", "bandwidth"), _DELETE,
                       "sites[0].intra_node.bandwidth"),
        _topology_case("topo-duplicate-site", ("sites", 1, "name"), "a", "sites[1].name"),
        _topology_case("topo-wan-unknown-site", ("wan", 0, "sites"), ["a", "c"], "wan[0].sites"),
        _topology_case("topo-wan-same-site", ("wan", 0, "sites"), ["a", "a"], "wan[0].sites"),
        _topology_case("topo-wan-three-sites", ("wan", 0, "sites"), ["a", "b", "a"], "wan[0].sites"),
        _topology_case("topo-wan-duplicate-link", ("wan",), [TOPOLOGY["wan"][0]] * 2, "wan[1].sites"),
        _topology_case("topo-wan-missing", ("wan",), [], "wan"),
        _topology_case("topo-wan-rtt-and-distance", ("wan", 0, "distance"), "1000km", "wan[0]"),
        _topology_case("topo-pods-do-not-divide", ("sites", 0, "pods"), 3, "sites[0].pods"),
        _topology_case("topo-too-many-gpus", ("sites", 0, "nodes"), 10**6, "sites"),
        _topology_case("topo-sites-not-list", ("sites",), "a,b", "sites"),
        _topology_case("topo-site-not-mapping", ("sites", 0), "a", "sites[0]"),
        _topology_case("topo-gpu-not-mapping", ("gpu",), "H100", "gpu"),
        _topology_case("topo-site-defaults-not-mapping", ("site_defaults",), [1], "site_defaults"),
        _topology_case("topo-assumptions-not-list", ("assumptions",), 5, "assumptions"),
        _topology_case("topo-name-not-string", ("name",), 5, "name"),
        _topology_case("topo-nodes-400-digits", ("sites", 0, "nodes"), 10**400, "sites[0].nodes"),
        _topology_case("topo-links-300-digits", ("wan", 0, "links"), 10**300, "wan[0].links"),
    ]
    return cases


def _bomb(levels: int = 9, width: int = 9) -> str:
    lines = ['l0: &l0 ["lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def yaml_file_cases() -> list[Case]:
    """The same loader reads every YAML file: topologies, workloads, recipes, grids, report configs."""
    good = yaml.safe_dump(TOPOLOGY)
    texts = {
        "alias-bomb": (_bomb(), "aliases expand"),
        "alias-bomb-after-valid-topology": (good + _bomb(), "aliases expand"),
        "alias-recursive-list": ("a: &x [1, *x]\n", "recursive"),
        "alias-recursive-map": ("a: &x {b: *x}\n", "recursive"),
        "alias-undefined": ("a: *nothing\n", "invalid YAML"),
        "deep-lists-100": ("a: " + "[" * 100 + "]" * 100 + "\n", "nested deeper than"),
        "deep-lists-100000": ("a: " + "[" * 100000 + "]" * 100000 + "\n", "nested deeper than"),
        "deep-maps-200": ("a: " + "{a: " * 200 + "1" + "}" * 200 + "\n", "nested deeper than"),
        "deep-block-maps": ("".join("  " * i + "a:\n" for i in range(100)) + "  " * 100 + "b: 1\n",
                            "nested deeper than"),
        "duplicate-top-key": (good + "name: other\n", "duplicate key 'name'"),
        "duplicate-nested-key": ("name: t\nsites:\n  - {name: a, name: b}\n", "duplicate key 'name'"),
        "duplicate-flow-key": ("a: {x: 1, x: 2}\n", "duplicate key 'x'"),
        "nul-bytes": ("name: t\x00\n", "t.yaml"),
        "control-char": ("name: \x01\n", "t.yaml: invalid YAML"),
        "two-documents": (good + "---\n" + good, "t.yaml: invalid YAML"),
        "tab-indent": ("name: t\nsites:\n\t- a\n", "t.yaml: invalid YAML"),
        "unclosed-bracket": ("name: [t\n", "t.yaml: invalid YAML"),
        "bad-tag": ("name: !!python/object:os.system x\n", "t.yaml: invalid YAML"),
        "empty-file": ("", "t.yaml"),
        "5000-digit-integer": ("name: t\nsites: " + "9" * 5000 + "\n", "t.yaml: invalid YAML"),
        "top-level-list": ("- a\n- b\n", "t.yaml"),
        "top-level-scalar": ("hello\n", "t.yaml"),
    }
    cases = [Case(f"yaml-{cid}", ["topology", "validate", "{tmp}/t.yaml"], field, files={"t.yaml": text})
             for cid, (text, field) in texts.items()]
    cases += [
        Case("yaml-invalid-utf8", ["topology", "validate", "{tmp}/t.yaml"], "not a UTF-8 text file",
             files={"t.yaml": b"name: \xff\xfe\n"}),
        Case("yaml-binary", ["topology", "validate", "{tmp}/t.yaml"], "t.yaml",
             files={"t.yaml": bytes(range(256)) * 4}),
        Case("yaml-oversized", ["topology", "validate", "{tmp}/t.yaml"], "larger than 16 MiB",
             setup=lambda tmp: (tmp / "t.yaml").write_bytes(b"#" * (17 * 2**20))),
        Case("yaml-is-a-folder", ["topology", "validate", "{tmp}/d"], "is a directory",
             setup=lambda tmp: (tmp / "d").mkdir()),
        Case("yaml-missing", ["topology", "validate", "{tmp}/none.yaml"], "none.yaml"),
        Case("yaml-unknown-preset", ["topology", "show", "no-such-preset"], "no-such-preset"),
    ]
    # the bombs through each other reader
    for cid, argv in [("workload", ["plan", "--topology", "tiny-2site", "--strategy", "flat_ring", "--size", "1MiB",
                                    "--workload", "{tmp}/t.yaml"]),
                      ("grid", ["sweep", "--grid", "{tmp}/t.yaml", "--out", "{tmp}/r.csv"]),
                      ("report-config", ["report", "--config", "{tmp}/t.yaml", "--out", "{tmp}/rep", "--no-progress"]),
                      ("simulate-topology", ["simulate", "--topology", "{tmp}/t.yaml", "--workload", "llama-3-8b",
                                             "--strategy", "flat_ring"])]:
        cases.append(Case(f"yaml-bomb-{cid}", argv, "aliases expand", files={"t.yaml": _bomb()}))
        cases.append(Case(f"yaml-dup-{cid}", argv, "duplicate key", files={"t.yaml": "a: 1\na: 2\n"}))
        cases.append(Case(f"yaml-deep-{cid}", argv, "nested deeper", files={"t.yaml": "a: " + "[" * 500 + "]" * 500}))
    return cases


# ---------------------------------------------------------------------- workload
WORKLOAD = {"model": {"name": "m", "layers": 8, "hidden": 1024, "heads": 8, "kv_heads": 8, "ffn": 4096,
                      "vocab": 32000, "seq_len": 2048},
            "parallel": {"tp": 1, "pp": 1, "dp": 8, "micro_batch_size": 1, "global_batch_size": 64},
            "grad_bytes": 4, "param_bytes": 2, "bucket_numel": 10_000_000}
PLAN_WITH_WORKLOAD = ["plan", "--topology", "{tmp}/t.yaml", "--strategy", "hierarchical", "--size", "1MiB",
                      "--workload", "{tmp}/w.yaml"]
FOUR_SITES_OF_TWO = _set(TOPOLOGY, ("sites",), [dict(TOPOLOGY["sites"][0], nodes=2, gpus_per_node=2),
                                                dict(TOPOLOGY["sites"][1], nodes=2, gpus_per_node=2)])


def _workload_case(cid: str, path: tuple, value, field: str | None = None) -> Case:
    return Case(f"workload-{cid}", PLAN_WITH_WORKLOAD, field or _dotted(path),
                files={"t.yaml": yaml.safe_dump(FOUR_SITES_OF_TWO),
                       "w.yaml": yaml.safe_dump(_set(WORKLOAD, path, value))})


def workload_cases() -> list[Case]:
    cases = []
    for name in ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab", "seq_len"):
        cases += [_workload_case(f"model.{name}={v!r}", ("model", name), v)
                  for v in (INF, -1, 0, 1.5, "many", HUGE_INT, None)]
    for name in ("tp", "pp", "dp", "vpp", "micro_batch_size", "global_batch_size"):
        cases += [_workload_case(f"parallel.{name}={v!r}", ("parallel", name), v) for v in (0, -1, INF, 1.5, "x")]
    cases += [_workload_case(f"grad_bytes={v!r}", ("grad_bytes",), v) for v in (3, 8, INF, "2")]
    cases += [_workload_case(f"param_bytes={v!r}", ("param_bytes",), v) for v in (0, 3, 8)]
    cases += [_workload_case(f"bucket_numel={v!r}", ("bucket_numel",), v) for v in (1, 0, -1, 1000, INF, HUGE_INT)]
    cases += [
        _workload_case("global-batch-4e9", ("parallel", "global_batch_size"), 4e9, "parallel.global_batch_size"),
        _workload_case("global-batch-not-multiple", ("parallel", "global_batch_size"), 65, "parallel.global_batch_size"),
        _workload_case("pp-does-not-divide-layers", ("parallel", "pp"), 3, "parallel.pp"),
        _workload_case("interleaved-micro-batches", ("parallel",),
                       {"tp": 1, "pp": 2, "dp": 2, "vpp": 2, "micro_batch_size": 1, "global_batch_size": 6},
                       "parallel.global_batch_size"),
        _workload_case("kv-heads-do-not-divide", ("model", "kv_heads"), 3, "model.kv_heads"),
        _workload_case("heads-do-not-divide-hidden", ("model", "heads"), 7, "model.heads"),
        _workload_case("model-unknown-preset", ("model",), "gpt-17", "gpt-17"),
        _workload_case("model-missing", ("model",), _DELETE, "model"),
        _workload_case("unknown-key", ("optimizer",), "adam", "optimizer"),
        _workload_case("model-unknown-key", ("model", "experts"), 8, "model.experts"),
        _workload_case("gated-not-bool", ("model", "gated_mlp"), "yes please", "model.gated_mlp"),
    ]
    return cases


# ---------------------------------------------------------------------- flags
def _plan(*flags: str, strategy: str = "chunked") -> list[str]:
    return ["plan", "--topology", "tiny-2site", "--strategy", strategy, "--size", "1MiB", *flags]


def flag_cases() -> list[Case]:
    cases = []
    for v in ("1e999B", "-1MiB", "0", "1.5B", "abc", "1e30B", "inf", "nan", "1KiB/s", "", "1e-300GiB", "1"):
        cases.append(Case(f"flag-size={v!r}", ["plan", "--topology", "tiny-2site", "--strategy", "flat_ring",
                                               "--size", v], "--size"))
    knob_values = {
        ("chunked", "--chunks"): ["1e9", "1000000000", "0", "-1", "abc", ".inf", ".nan", "[1]", "&a [*a]",
                                  "{a: 1, a: 2}", "4097", "2.5"],
        ("chunked", "--inflight"): ["0", "65", ".inf", "-3"],
        ("local_sgd", "--every"): ["0", "1e7", ".inf", "-1", "x"],
        ("local_sgd", "--outer-lr"): [".inf", ".nan", "0", "-1", "11", "1e999"],
        ("local_sgd", "--outer-momentum"): ["1", "-0.1", ".nan", ".inf"],
        ("streaming_local_sgd", "--fragments"): ["0", "2000", ".inf"],
        ("streaming_local_sgd", "--alpha"): ["2", ".nan", "-1"],
        ("compressed", "--wire"): ["int4", "''", "[int8]"],
        ("chunked", "--inner"): ["bogus", "'{name: nope}'", "{name: chunked, chunks: 0}", "[flat_ring]"],
    }
    for (strategy, flag), values in knob_values.items():
        name = flag[2:].replace("-", "_")
        cases += [Case(f"flag-{strategy}{flag}={v!r}", _plan(flag, v, strategy=strategy), name) for v in values]
    cases += [
        Case("flag-knob-of-another-strategy", _plan("--chunks", "4", strategy="flat_ring"), "chunks"),
        Case("flag-element-size-3", _plan("--element-size", "3"), "--element-size"),
        Case("flag-unknown-strategy", _plan(strategy="teleport"), "--strategy"),
        Case("flag-unknown-flag", _plan("--frobnicate"), "--frobnicate"),
        Case("flag-missing-topology", ["plan", "--strategy", "flat_ring", "--size", "1MiB"], "--topology"),
        Case("flag-no-command", [], "COMMAND"),
        Case("flag-unknown-command", ["frobnicate"], "frobnicate"),
    ]
    sim = ["simulate", "--topology", "nemotron-2dc", "--workload", "nemotron-4-340b", "--strategy", "hierarchical",
           "--no-baseline"]
    for flag, values in {"--compute-efficiency": ["inf", "nan", "0", "2", "-1", "abc"],
                         "--calibrate-mfu": ["1", "0", "nan", "inf", "-0.5"],
                         "--wan-bandwidth-factor": ["0", "inf", "nan", "2", "-1"],
                         "--wan-links-failed": ["-1", "1e9", "x"],
                         "--slow-gpu": ["0.5", "inf", "nan", "1e999@3", "2@-1", "x@y", "1e300"],
                         "--slow-site": ["dc-b=inf", "dc-b", "dc-b=0.5", "=2", "dc-b=nan"]}.items():
        cases += [Case(f"flag-simulate{flag}={v!r}", sim + [flag, v], flag) for v in values]
    for v in ("0", "10000", "abc", "-1", "65", "1e3"):
        cases.append(Case(f"flag-sweep--jobs={v!r}", ["sweep", "--grid", "{tmp}/g.yaml", "--out", "{tmp}/r.csv",
                                                      "--jobs", v], "--jobs", files={"g.yaml": GRID}))
        cases.append(Case(f"flag-train--nproc={v!r}", ["train", "{tmp}/r.yaml", "--nproc", v], "--nproc"))
    cases.append(Case("flag-sweep-executor", ["sweep", "--grid", "{tmp}/g.yaml", "--out", "{tmp}/r.csv",
                                              "--executor", "slurm"], "--executor", files={"g.yaml": GRID}))
    return cases


# ---------------------------------------------------------------------- recipes
def recipe_field_values() -> dict[str, list]:
    return {
        "grpo.learning_rate": [".inf", "-.inf", ".nan", "1e300", "-1", "0", "100", "fast", "1e999"],
        "grpo.adam_beta1": ["1", "-0.1", ".nan"],
        "grpo.weight_decay": ["-1", ".inf"],
        "grpo.max_grad_norm": ["-1", ".inf", ".nan"],
        "grpo.warmup_ratio": ["2", "-1"],
        "grpo.max_steps": ["0", "-1", "1.5", ".inf", str(HUGE_INT), "1e999"],
        "grpo.per_device_train_batch_size": ["0", ".inf"],
        "grpo.gradient_accumulation_steps": ["0"],
        "grpo.num_generations": ["1", "0", ".inf"],
        "grpo.num_iterations": ["0"],
        "grpo.beta": ["-1", ".inf", ".nan"],
        "grpo.epsilon": ["0", "1", ".inf"],
        "grpo.temperature": ["0", "-1", ".inf", ".nan"],
        "grpo.top_p": ["0", "2", ".nan"],
        "grpo.top_k": ["-1", ".inf"],
        "grpo.seed": ["-1", "1.5"],
        "grpo.logging_steps": ["0"],
        "grpo.save_steps": ["0"],
        "grpo.max_completion_length": ["0", str(HUGE_INT)],
        "grpo.loss_type": ["nope", "1"],
        "grpo.scale_rewards": ["sometimes"],
        "distributed.bucket_size_mb": [".inf", "0", "1e7"],
        "distributed.timeout_s": ["0", ".inf", "1e9"],
        "distributed.strategy": ["nope"],
        "model.dtype": ["float8"],
        "generation.backend": ["telepathy"],
        "vllm.server_port": ["0", "70000"],
        "vllm.tis_cap": ["0", ".inf"],
        "grpo.lr": ["1e-3"],
        "colour": ["blue"],
    }


def recipe_cases() -> list[Case]:
    validate = ["recipe", "validate", "{tmp}/r.yaml"]
    cases = [Case(f"recipe-set-{k}={v}", validate + ["--set", f"{k}={v}"], k, setup=_recipe_with({}))
             for k, values in recipe_field_values().items() for v in values]
    for v in (".inf", ".nan", "1.0e+300", "-1.0e+300", "heavy", "[1]"):
        cases.append(Case(f"recipe-file-reward-weight={v}", validate, "rewards[0].weight",
                          setup=_recipe_with({"rewards": [{"func": "length", "weight": v}]})))
    bomb_params = "rewards:\n  - func: length\n    params:\n" + "".join(
        f"      l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else 'x'}]\n" for i in range(9))
    cases += [
        Case("recipe-reward-params-alias-bomb", validate, "aliases expand", setup=_recipe_text(bomb_params)),
        Case("recipe-reward-params-recursive", validate, "recursive",
             setup=_recipe_text("rewards:\n  - func: length\n    params: &p {again: *p}\n")),
        Case("recipe-reward-params-deep", validate, "nested deeper",
             setup=_recipe_text("rewards:\n  - func: length\n    params: {a: " + "[" * 200 + "]" * 200 + "}\n")),
        Case("recipe-duplicate-grpo-key", validate, "duplicate key 'learning_rate'",
             setup=_recipe_text("grpo:\n  learning_rate: 1.0e-3\n  learning_rate: 1.0e-1\n")),
        Case("recipe-duplicate-section", validate, "duplicate key 'grpo'",
             setup=_recipe_text("grpo: {max_steps: 1}\ngrpo: {max_steps: 2}\n")),
        Case("recipe-set-no-equals", validate + ["--set", "grpo.max_steps"], "--set", setup=_recipe_with({})),
        Case("recipe-set-empty-key", validate + ["--set", "=3"], "--set", setup=_recipe_with({})),
        Case("recipe-set-empty-part", validate + ["--set", "grpo..max_steps=3"], "--set", setup=_recipe_with({})),
        Case("recipe-set-bomb-value", validate + ["--set", "rewards=[&a [*a]]"], "--set rewards", setup=_recipe_with({})),
        Case("recipe-set-through-a-scalar", validate + ["--set", "grpo.max_steps.x=1"], "--set", setup=_recipe_with({})),
        Case("recipe-missing", ["recipe", "validate", "{tmp}/none.yaml"], "none.yaml"),
        Case("recipe-rewards-empty", validate, "rewards", setup=_recipe_with({"rewards": []})),
        Case("recipe-rewards-not-list", validate, "rewards", setup=_recipe_with({"rewards": "length"})),
    ]
    return cases


def _recipe_base(tmp) -> dict:
    from trainer.selfcheck.runs import tiny_run_assets

    a = tiny_run_assets()
    return {"model": {"name_or_path": str(a.sft_model), "dtype": "float32"},
            "data": {"train_file": str(a.data / "train.jsonl"), "eval_file": None},
            "rewards": [{"func": "length", "weight": 1.0, "params": {"target_length": 24}}],
            "grpo": {"max_steps": 2, "num_generations": 4, "per_device_train_batch_size": 8,
                     "max_completion_length": 8, "log_completions": False}}


def _recipe_with(changes: dict):
    def setup(tmp):
        (tmp / "r.yaml").write_text(yaml.safe_dump({**_recipe_base(tmp), **changes}))
    return setup


def _recipe_text(tail: str):
    """The base recipe with `tail` (YAML text) in place of the sections it names."""
    def setup(tmp):
        base = _recipe_base(tmp)
        for line in tail.splitlines():
            if line and not line[0].isspace() and ":" in line:
                base.pop(line.split(":")[0], None)
        (tmp / "r.yaml").write_text(yaml.safe_dump(base) + tail)
    return setup


# ---------------------------------------------------------------------- sweeps
GRID = """base: {topology: tiny-2site, workload: {model: tiny-qwen2, parallel: {dp: 4, global_batch_size: 4}},
       strategy: hierarchical}
grid:
  topology.wan[0].rtt: [1ms, 20ms]
evaluate: alpha_beta
"""


def sweep_cases() -> list[Case]:
    run = ["sweep", "--grid", "{tmp}/g.yaml", "--out", "{tmp}/r.csv"]
    grid = yaml.safe_load(GRID)

    def grid_with(**changes) -> str:
        return yaml.safe_dump({**grid, **changes})
    big = {"topology.wan[0].links": list(range(1, 11)), "topology.site_defaults.nodes": list(range(1, 11)),
           "sim.compute_efficiency": [0.1 * i for i in range(1, 11)], "faults.slow_gpu_factor": [1.0 + i for i in range(10)],
           "strategy.chunks": list(range(1, 11)), "faults.wan_links_failed": list(range(10))}
    cases = [
        Case("sweep-grid-10^6", run, "grid", files={"g.yaml": grid_with(grid=big)}),
        Case("sweep-grid-empty-values", run, "grid.topology.wan[0].rtt",
             files={"g.yaml": grid_with(grid={"topology.wan[0].rtt": []})}),
        Case("sweep-grid-not-list", run, "grid.topology.wan[0].rtt",
             files={"g.yaml": grid_with(grid={"topology.wan[0].rtt": "1ms"})}),
        Case("sweep-grid-bad-section", run, "grid.network.rtt", files={"g.yaml": grid_with(grid={"network.rtt": [1]})}),
        Case("sweep-grid-not-mapping", run, "grid", files={"g.yaml": grid_with(grid=[1, 2])}),
        Case("sweep-unknown-key", run, "extra", files={"g.yaml": grid_with(extra=1)}),
        Case("sweep-evaluate", run, "evaluate", files={"g.yaml": grid_with(evaluate="guess")}),
        Case("sweep-base-not-mapping", run, "base", files={"g.yaml": grid_with(base=[1])}),
        Case("sweep-base-unknown-section", run, "network", files={"g.yaml": grid_with(base={"network": 1})}),
        Case("sweep-value-inf-rtt", run, "rtt", files={"g.yaml": grid_with(grid={"topology.wan[0].rtt": ["1e999ms"]})}),
        Case("sweep-value-nan-efficiency", run, "sim.compute_efficiency",
             files={"g.yaml": grid_with(grid={"sim.compute_efficiency": [NAN]})}),
        Case("sweep-value-bucket-1", run, "bucket_numel",
             files={"g.yaml": grid_with(grid={"workload.bucket_numel": [1]})}),
        Case("sweep-path-out-of-range", run, "wan[5]",
             files={"g.yaml": grid_with(grid={"topology.wan[5].rtt": ["1ms"]})}),
        Case("sweep-grid-missing", ["sweep", "--grid", "{tmp}/none.yaml", "--out", "{tmp}/r.csv"], "none.yaml"),
        Case("sweep-out-is-folder", ["sweep", "--grid", "{tmp}/g.yaml", "--out", "{tmp}/d"], "--out",
             files={"g.yaml": GRID}, setup=lambda tmp: (tmp / "d").mkdir()),
        Case("sweep-out-under-a-file", ["sweep", "--grid", "{tmp}/g.yaml", "--out", "{tmp}/f/r.csv"], "--out",
             files={"g.yaml": GRID, "f": "not a folder"}),
        Case("sweep-out-binary", run, "binary", files={"g.yaml": GRID, "r.csv": bytes(range(256))}),
        Case("sweep-out-no-config-id", run, "config_id", files={"g.yaml": GRID, "r.csv": "a,b\n1,2\n"}),
        Case("sweep-out-other-grid", run, "another sweep", files={"g.yaml": GRID, "r.csv":
                                                                 "config_id,grid_id,x\nabc,0123456789ab,1\n"}),
        Case("sweep-out-no-grid-id", run, "grid_id", files={"g.yaml": GRID, "r.csv": "config_id,x\nabc,1\n"}),
        Case("sweep-out-ragged", run, "line 2", files={"g.yaml": GRID, "r.csv": "config_id,grid_id,x\nabc\nd,e,f\n"}),
        Case("sweep-cut-row-kept-when-refused", run, "sim.compute_efficiency",  # a refusal repairs nothing
             files={"g.yaml": grid_with(grid={"sim.compute_efficiency": [2.0]})},
             setup=lambda tmp: (tmp / "r.csv").write_text(
                 f"config_id,grid_id,x\nabc,{_grid_id(grid_with(grid={'sim.compute_efficiency': [2.0]}))},1\nde")),
    ]
    return cases


def _grid_id(text: str) -> str:
    from experiments.sweep import grid_id

    data = yaml.safe_load(text)
    return grid_id({"base": data["base"], "grid": data["grid"], "evaluate": data["evaluate"]})


# ---------------------------------------------------------------------- report
def report_cases() -> list[Case]:
    rep = ["report", "--no-progress", "--out"]
    cases = [
        Case("report-out-unrelated-folder", rep + ["{tmp}/mine"], "no .hdc-report marker",
             files={"mine/thesis.tex": "years of work"}),
        Case("report-out-is-file", rep + ["{tmp}/f"], "is a file", files={"f": "data"}),
        Case("report-out-under-file", rep + ["{tmp}/f/report"], "is a file", files={"f": "data"}),
        Case("report-runs-missing", rep + ["{tmp}/r", "--runs", "{tmp}/norun"], "--runs"),
        Case("report-measured-missing", rep + ["{tmp}/r", "--measured", "{tmp}/none.csv"], "--measured"),
    ]
    for key, value in {"jobs": 10000, "published_single_site_mfu": 2, "published_two_site_mfu": INF,
                       "distances_km": [INF], "wan_links": [0], "chunks": [-1], "local_sgd_every": [NAN],
                       "strategy": {"name": "nope"}, "colour": 1, "published_scaling_efficiency": "high"}.items():
        cases.append(Case(f"report-config-{key}", rep + ["{tmp}/r", "--config", "{tmp}/c.yaml"], key.strip(),
                          files={"c.yaml": yaml.safe_dump({key: value})}))
    return cases


# ---------------------------------------------------------------------- plot
def plot_cases() -> list[Case]:
    good = "x,y,h\n1,2,a\n2,3,b\n"
    plot = ["plot", "{tmp}/r.csv", "--x", "x", "--y", "y"]
    return [
        Case("plot-empty", plot, "is empty", files={"r.csv": ""}),
        Case("plot-header-only", plot, "no rows", files={"r.csv": "x,y\n"}),
        Case("plot-binary", plot, "binary", files={"r.csv": bytes(range(256))}),
        Case("plot-missing-x", ["plot", "{tmp}/r.csv", "--x", "nope", "--y", "y"], "--x", files={"r.csv": good}),
        Case("plot-missing-y", ["plot", "{tmp}/r.csv", "--x", "x", "--y", "nope"], "--y", files={"r.csv": good}),
        Case("plot-missing-hue", plot + ["--hue", "nope"], "--hue", files={"r.csv": good}),
        Case("plot-text-y", ["plot", "{tmp}/r.csv", "--x", "x", "--y", "h"], "--y", files={"r.csv": good}),
        Case("plot-ragged", plot, "not a readable CSV", files={"r.csv": "x,y\n1,2\n1,2,3,4\n"}),
        Case("plot-missing-file", plot, "no such file"),
        Case("plot-folder", ["plot", "{tmp}/d", "--x", "x", "--y", "y"], "is a folder",
             setup=lambda tmp: (tmp / "d").mkdir()),
        Case("plot-invalid-utf8", plot, "r.csv", files={"r.csv": b"x,y\n\xff\xfe,1\n"}),
        Case("plot-out-is-folder", plot + ["--out", "{tmp}/d"], "--out", files={"r.csv": good},
             setup=lambda tmp: (tmp / "d").mkdir()),
    ]


# ---------------------------------------------------------------------- training output folders
def _fake_run(recipe_changes: dict | None = None, files=("metrics.jsonl", "latest_checkpoint")):
    """A folder `runs/a` holding a run of the base recipe (changed by `recipe_changes`)."""
    def setup(tmp):
        base = _recipe_base(tmp)
        (tmp / "r.yaml").write_text(yaml.safe_dump(base))
        from hdc.config import from_dict
        from trainer.config import Recipe, recipe_to_dict

        ran = copy.deepcopy(base)
        for k, v in (recipe_changes or {}).items():
            ran.setdefault(k.split(".")[0], {})[k.split(".")[1]] = v
        out = tmp / "runs" / "a"
        out.mkdir(parents=True)
        (out / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe_to_dict(from_dict(Recipe, ran))))
        for f in files:
            (out / f).write_text(json.dumps({"step": 1}) + "\n")
    return setup


def output_folder_cases() -> list[Case]:
    train = ["train", "{tmp}/r.yaml", "--out", "{tmp}/runs/a", "--no-progress"]
    return [
        Case("train-out-holds-a-run", train, "--out", setup=_fake_run()),
        Case("train-out-holds-resolved-recipe-only", train, "--out", setup=_fake_run(files=())),
        Case("train-out-holds-checkpoints-only", train, "--out", setup=lambda tmp: (
            _recipe_with({})(tmp), (tmp / "runs" / "a" / "checkpoints" / "step-00000001").mkdir(parents=True))),
        Case("train-resume-other-recipe", train + ["--resume"], "grpo.learning_rate",
             setup=_fake_run({"grpo.learning_rate": 0.5})),
        Case("train-resume-other-beta", train + ["--resume"], "grpo.beta",
             setup=_fake_run({"grpo.beta": 0.1})),
        Case("train-resume-nothing", train + ["--resume"], "--resume", setup=_recipe_with({})),
        Case("train-resume-and-overwrite", train + ["--resume", "--overwrite"], "--overwrite", setup=_fake_run()),
        Case("train-out-is-file", ["train", "{tmp}/r.yaml", "--out", "{tmp}/f"], "is a file",
             files={"f": "x"}, setup=_recipe_with({})),
        Case("train-out-under-file", ["train", "{tmp}/r.yaml", "--out", "{tmp}/f/run"], "is a file",
             files={"f": "x"}, setup=_recipe_with({})),
        Case("train-resume-no-resolved-recipe", train + ["--resume"], "recipe.resolved.yaml",
             setup=lambda tmp: (_recipe_with({})(tmp), (tmp / "runs" / "a" / "checkpoints").mkdir(parents=True))),
    ]


ALL = (topology_cases() + yaml_file_cases() + workload_cases() + flag_cases() + recipe_cases() + sweep_cases()
       + report_cases() + plot_cases() + output_folder_cases())


def test_there_are_at_least_300_distinct_cases():
    ids = [c.id for c in ALL]
    assert len(set(ids)) == len(ids), sorted({i for i in ids if ids.count(i) > 1})
    assert len(ids) >= 300, len(ids)


@pytest.mark.parametrize("case", ALL, ids=str)
def test_hostile_input_is_refused(case, tmp_path):
    if case.argv[:1] == ["train"] and case.setup is None:
        case.setup = _recipe_with({})
    check_refused(case, tmp_path)


# ---------------------------------------------------------------------- the same, as real processes
SUBPROCESS = ["yaml-alias-bomb", "yaml-deep-lists-100000", "workload-bucket_numel=1", "workload-global-batch-4e9",
              "flag-chunked--chunks='1e9'", "sweep-grid-10^6", "flag-sweep--jobs='10000'", "recipe-reward-params-alias-bomb",
              "report-out-unrelated-folder", "yaml-bomb-report-config"]


@pytest.mark.fuzz
@pytest.mark.parametrize("cid", SUBPROCESS)
def test_hangs_of_old_are_refused_by_a_real_process(cid, tmp_path):
    case = copy.copy(next(c for c in ALL if c.id == cid))
    case.subprocess, case.limit_s = True, 30.0
    check_refused(case, tmp_path)
