"""Property-based fuzzing of every user-facing input: topology YAML, recipes, sweep grids and
CLI arguments. Whatever the input, the outcome is success or a UserError naming a field —
never another exception, never a traceback, never partial output. 250 cases in the default
run (5 targets × 50); `-m fuzz` runs 1,000 per target."""
import copy

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hdc.cli import main
from hdc.errors import UserError
from hdc.topology import load_topology, topology_from_dict
from experiments.configs import raw_topology

BASE = raw_topology("tiny-3site")
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["1ms", "0Gbps", "-1us", "400Gbps", "1e99km", "nan", "5", ""]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from paths(v, prefix + (i,))


ALL_PATHS = [p for p in paths(BASE) if p]


@st.composite
def mutated(draw, base, all_paths):
    """`base` with 1-3 random values set, keys deleted or unknown keys added."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(all_paths))
        parent = data
        try:
            for k in path[:-1]:
                parent = parent[k]
            action = draw(st.sampled_from(["set", "delete", "add"]))
            if action == "set":
                parent[path[-1]] = draw(VALUES)
            elif action == "delete" and isinstance(parent, dict):
                parent.pop(path[-1], None)
            elif isinstance(parent, dict):
                parent[draw(st.text(max_size=8))] = draw(VALUES)
        except (KeyError, IndexError, TypeError):
            pass
    return data


def check_topology(data):
    try:
        topology_from_dict(data)
    except UserError as e:
        assert str(e) and "\n" not in str(e)


def check_yaml_text(tmp_path, text):
    p = tmp_path / "t.yaml"
    p.write_bytes(text)
    try:
        load_topology(str(p))
    except UserError as e:
        assert str(p) in str(e)


ARGV_WORDS = ["topology", "show", "validate", "list", "plan", "sweep", "plot", "--topology", "--strategy",
              "--size", "--chunks", "--json", "--workload", "--grid", "--out", "tiny-2site", "nemotron-2dc",
              "flat_ring", "hierarchical", "chunked", "local_sgd", "1GiB", "0", "-3", "lots", "--every", "x.yaml",
              "--inner", "--element-size", "2", "4", "--help-me"]


def check_argv(capsys, argv, tmp_path):
    argv = [str(tmp_path / a) if a.endswith(".yaml") else a for a in argv]
    if "--out" in argv:
        return  # writing commands are fuzzed through their validated inputs below
    rc = main(argv)
    _, err = capsys.readouterr()
    assert rc in (0, 2)
    if rc == 2:
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def check_grid(tmp_path, grid):
    from experiments.sweep import load_grid, run_sweep
    p = tmp_path / "grid.yaml"
    p.write_text(yaml.safe_dump(grid))
    out = tmp_path / "out.csv"
    if out.exists():
        out.unlink()
    try:
        run_sweep(load_grid(str(p)), str(out), progress=False)
    except UserError as e:
        assert "\n" not in str(e)
        assert not out.exists(), "a failed sweep must leave no output"


GRIDS = st.fixed_dictionaries({
    "base": st.fixed_dictionaries({"topology": st.just("tiny-2site"),
                                   "workload": st.just({"model": "tiny-qwen2", "parallel": {"dp": 2, "global_batch_size": 2}})}),
    "grid": st.dictionaries(st.sampled_from(["topology.wan[0].rtt", "topology.wan[0].bandwidth", "strategy.name",
                                             "strategy.chunks", "topology.site_defaults.nodes", "workload.parallel.dp",
                                             "topology.wan[5].rtt", "sim.x", "bogus"]),
                            st.lists(SCALARS, min_size=0, max_size=2), max_size=2),
    "evaluate": st.just("alpha_beta")})


def _run(n):
    return settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.mark.parametrize("n", [pytest.param(50, id="default"), pytest.param(1000, id="long", marks=pytest.mark.fuzz)])
def test_fuzz_topology_mappings(n):
    _run(n)(given(mutated(BASE, ALL_PATHS))(check_topology))()


@pytest.mark.parametrize("n", [pytest.param(50, id="default"), pytest.param(1000, id="long", marks=pytest.mark.fuzz)])
def test_fuzz_topology_files(tmp_path_factory, n):
    tmp = tmp_path_factory.mktemp("yaml")
    good = yaml.safe_dump(BASE).encode()
    texts = st.one_of(st.binary(max_size=200), st.builds(lambda cut, junk: good[:cut] + junk,
                                                         st.integers(0, len(good)), st.binary(max_size=20)))
    _run(n)(given(texts)(lambda t: check_yaml_text(tmp, t)))()


@pytest.mark.parametrize("n", [pytest.param(50, id="default"), pytest.param(1000, id="long", marks=pytest.mark.fuzz)])
def test_fuzz_cli_arguments(capsys, tmp_path, n):
    _run(n)(given(st.lists(st.sampled_from(ARGV_WORDS), max_size=7))(lambda a: check_argv(capsys, a, tmp_path)))()


@pytest.mark.parametrize("n", [pytest.param(50, id="default"), pytest.param(1000, id="long", marks=pytest.mark.fuzz)])
def test_fuzz_sweep_grids(tmp_path_factory, n):
    tmp = tmp_path_factory.mktemp("grid")
    _run(n)(given(GRIDS)(lambda g: check_grid(tmp, g)))()


RECIPE = {"model": {"name_or_path": "runs/tiny-sft"}, "data": {"train_file": "train.jsonl"},
          "rewards": [{"func": "accuracy"}, {"func": "format", "weight": 0.5}],
          "grpo": {"learning_rate": 1e-4, "num_generations": 4, "per_device_train_batch_size": 8},
          "distributed": {"strategy": "hierarchical"}, "vllm": {"mode": "colocate"}}
RECIPE_PATHS = [p for p in paths(RECIPE) if p]


def check_recipe(data):
    from hdc.config import from_dict
    from trainer.config import Recipe
    try:
        from_dict(Recipe, data)
    except UserError as e:
        assert str(e) and "\n" not in str(e)


@pytest.mark.parametrize("n", [pytest.param(50, id="default"), pytest.param(1000, id="long", marks=pytest.mark.fuzz)])
def test_fuzz_recipes(n):
    _run(n)(given(mutated(RECIPE, RECIPE_PATHS))(check_recipe))()
