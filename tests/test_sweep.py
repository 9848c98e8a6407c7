"""Sweeps: dotted-path grids, validation before any work, resumable CSV output."""
import csv

import pytest
import yaml

from experiments.configs import resolve, set_path
from experiments.sweep import load_grid, run_sweep
from hdc.cli import main
from hdc.errors import UserError


def write(tmp_path, data, name="grid.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return str(p)


GRID = {"base": {"topology": "tiny-2site", "workload": {"model": "tiny-qwen2", "parallel": {"dp": 4, "global_batch_size": 4}}},
        "grid": {"topology.wan[0].rtt": ["2ms", "20ms"], "strategy.name": ["flat_ring", "hierarchical"]},
        "evaluate": "alpha_beta"}


def test_set_path_reaches_lists_and_switches_rtt_to_distance():
    data = {"wan": [{"rtt": "21ms", "bandwidth": "1Gbps"}]}
    set_path(data, "wan[0].distance", "500km")
    assert data == {"wan": [{"distance": "500km", "bandwidth": "1Gbps"}]}
    with pytest.raises(UserError, match=r"index \[3\] out of range"):
        set_path(data, "wan[3].rtt", "1ms")


def test_sweep_rows_and_resume(tmp_path):
    grid = load_grid(write(tmp_path, GRID))
    out = str(tmp_path / "r.csv")
    assert run_sweep(grid, out, progress=False) == 4
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 4 and {r["strategy.name"] for r in rows} == {"flat_ring", "hierarchical"}
    by = {(r["topology.wan[0].rtt"], r["strategy.name"]): float(r["alpha_beta_sync_s"]) for r in rows}
    assert by[("20ms", "flat_ring")] > by[("2ms", "flat_ring")]
    # a second run finds every row done; a widened grid only runs the new points
    assert run_sweep(grid, out, progress=False) == 0
    GRID2 = {**GRID, "grid": {**GRID["grid"], "topology.wan[0].rtt": ["2ms", "20ms", "40ms"]}}
    assert run_sweep(load_grid(write(tmp_path, GRID2, "g2.yaml")), out, jobs=2, progress=False) == 2
    assert len(list(csv.DictReader(open(out)))) == 6


@pytest.mark.parametrize("grid, message", [
    ({"grid": {"topology.wan[0].rtt": "21ms"}}, "grid.topology.wan[0].rtt: must be a non-empty list"),
    ({"grid": {"colour": [1]}}, "grid.colour: must start with one of"),
    ({"evaluate": "guess"}, "evaluate: must be one of simulate, alpha_beta"),
    ({"speed": 1}, "speed: unknown key"),
])
def test_grid_mistakes(tmp_path, grid, message):
    with pytest.raises(UserError) as e:
        load_grid(write(tmp_path, grid))
    assert message in str(e.value)


def test_bad_value_fails_before_any_output(tmp_path, capsys):
    bad = {**GRID, "grid": {"topology.wan[0].bandwidth": ["1Gbps", "-5Gbps"]}}
    out = tmp_path / "r.csv"
    rc = main(["sweep", "--grid", write(tmp_path, bad), "--out", str(out)])
    assert rc == 2 and "topology: wan[0].bandwidth" in capsys.readouterr().err
    assert not out.exists()


def test_strategy_fields_are_checked():
    with pytest.raises(UserError, match="strategy.chunks: must be an integer"):
        resolve({"topology": "tiny-2site", "workload": GRID["base"]["workload"], "strategy": {"name": "chunked", "chunks": "4"}})


def test_plot_cli(tmp_path, capsys):
    grid = load_grid(write(tmp_path, GRID))
    out = str(tmp_path / "r.csv")
    run_sweep(grid, out, progress=False)
    rc = main(["plot", out, "--x", "topology.wan[0].rtt", "--y", "alpha_beta_sync_s", "--hue", "strategy.name"])
    assert rc == 0 and (tmp_path / "r.png").stat().st_size > 5000
    rc = main(["plot", out, "--x", "nope", "--y", "alpha_beta_sync_s"])
    assert rc == 2 and "--x: no column 'nope'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("evaluate", ["simulate", "alpha_beta"])
def test_ray_executor_gives_the_local_rows(tmp_path, evaluate):
    """`--executor ray` on a local Ray instance: the same rows as local processes."""
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e .[ray])")
    grid = load_grid(write(tmp_path, {**GRID, "evaluate": evaluate}))
    local, remote = str(tmp_path / "local.csv"), str(tmp_path / "ray.csv")
    assert run_sweep(grid, local, jobs=2, progress=False) == 4
    assert run_sweep(grid, remote, executor="ray", progress=False) == 4

    def rows(path):
        return {r["config_id"]: r for r in csv.DictReader(open(path))}
    assert rows(local) == rows(remote)
