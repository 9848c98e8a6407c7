"""What the refusals in test_hostile.py leave working: the safe YAML loader still reads real
configs (anchors, merge keys, YAML 1.2 exponents), sweeps resume (an extended grid, a row cut by
a kill is redone), a training folder can be resumed with the same recipe or overwritten without
touching unrelated files, and resume follows the `latest_checkpoint` pointer."""
from __future__ import annotations

import csv
import logging

import pytest
import yaml

from hdc.config import MAX_YAML_DEPTH, from_dict, load_yaml, parse_yaml
from hdc.errors import UserError
from hdc.units import UnitError, parse_bandwidth, parse_time


# ---------------------------------------------------------------------- the YAML loader
def test_anchors_and_merge_keys_within_the_bound_still_load(tmp_path):
    text = """
tier: &nv {latency: 2us, bandwidth: 450GB/s}
defaults: &d {nodes: 2, gpus_per_node: 8}
sites:
  - {<<: *d, name: a, intra_node: *nv, intra_pod: *nv}
  - {<<: *d, name: b, nodes: 4, intra_node: *nv, intra_pod: *nv}
"""
    data = parse_yaml(text, "t.yaml")
    assert data["sites"][1]["nodes"] == 4 and data["sites"][0]["intra_pod"]["latency"] == "2us"


def test_nesting_up_to_the_limit_loads_and_one_more_is_refused():
    ok = "[" * MAX_YAML_DEPTH + "]" * MAX_YAML_DEPTH
    assert parse_yaml(ok, "x") is not None
    with pytest.raises(UserError, match=f"nested deeper than {MAX_YAML_DEPTH}"):
        parse_yaml("[" + ok + "]", "x")


def test_a_shared_alias_is_counted_once_per_use():
    # 5,000 uses of a 1-node alias pass; 2,000 uses of a 10-node alias (20,000 nodes) do not
    assert len(parse_yaml("a: &a x\nb: [" + ", ".join(["*a"] * 5000) + "]", "x")["b"]) == 5000
    with pytest.raises(UserError, match="aliases expand"):
        parse_yaml("a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9]\nb: [" + ", ".join(["*a"] * 2000) + "]", "x")


def test_exponent_numbers_are_numbers_in_typed_fields():
    from simulator.model import SimConstants

    c = from_dict(SimConstants, yaml.safe_load("compute_efficiency: 5e-1\nhbm_bandwidth_Bps: 3e12"))
    assert c.compute_efficiency == 0.5 and c.hbm_bandwidth_Bps == 3e12


def test_units_keep_zero_and_refuse_what_is_not_physical():
    assert parse_time("0s") == 0.0 and parse_bandwidth("1bps") == 0.125
    for bad in ("1e-300Gbps", "1e999Gbps", "9Pbps"):
        with pytest.raises(UnitError):
            parse_bandwidth(bad)


def test_a_file_read_twice_gives_equal_data(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("a: [1, {b: 2}]\n")
    assert load_yaml(str(p)) == load_yaml(str(p)) == {"a": [1, {"b": 2}]}


# ---------------------------------------------------------------------- sweeps
GRID = {"base": {"topology": "tiny-2site", "workload": {"model": "tiny-qwen2", "parallel": {"dp": 4, "global_batch_size": 4}},
                 "strategy": "hierarchical"},
        "grid": {"topology.wan[0].rtt": ["1ms", "10ms", "20ms"]}, "evaluate": "alpha_beta"}


def _sweep(tmp_path, grid: dict, out):
    from experiments.sweep import load_grid, run_sweep

    g = tmp_path / "g.yaml"
    g.write_text(yaml.safe_dump(grid))
    return run_sweep(load_grid(str(g)), str(out), progress=False)


def _rows(out):
    with open(out, newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_row_cut_by_a_kill_is_dropped_and_redone(tmp_path, capsys):
    out = tmp_path / "r.csv"
    assert _sweep(tmp_path, GRID, out) == 3
    full = _rows(out)
    text = out.read_text()
    out.write_text(text[:-7])  # the last write stopped 7 bytes short
    assert _sweep(tmp_path, GRID, out) == 1
    assert "dropping the incomplete last row" in capsys.readouterr().err
    again = _rows(out)
    assert sorted(r["config_id"] for r in again) == sorted(r["config_id"] for r in full)
    assert {r["config_id"]: r for r in again} == {r["config_id"]: r for r in full}


def test_an_extended_grid_resumes_into_the_same_csv(tmp_path):
    out = tmp_path / "r.csv"
    assert _sweep(tmp_path, GRID, out) == 3
    more = {**GRID, "grid": {"topology.wan[0].rtt": ["1ms", "10ms", "20ms", "40ms"]}}
    assert _sweep(tmp_path, more, out) == 1
    assert len(_rows(out)) == 4 and len({r["grid_id"] for r in _rows(out)}) == 1


def test_a_csv_of_another_grid_is_left_as_it_was(tmp_path):
    out = tmp_path / "r.csv"
    _sweep(tmp_path, GRID, out)
    before = out.read_bytes()
    other = {**GRID, "base": {**GRID["base"], "strategy": "flat_ring"}}
    with pytest.raises(UserError, match="holds rows of another sweep"):
        _sweep(tmp_path, other, out)
    assert out.read_bytes() == before


# ---------------------------------------------------------------------- training output folders
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A real one-step `hdc train` run and its recipe."""
    from trainer.selfcheck.runs import run_train, tiny_run_assets, write_recipe

    tmp = tmp_path_factory.mktemp("run")
    recipe = write_recipe(tmp / "recipe.yaml", tiny_run_assets(), max_steps=1, save_steps=1)
    done = run_train(recipe, tmp / "out")
    assert done.returncode == 0, done.stderr[-2000:]
    return recipe, tmp / "out"


def _recipe_dict(recipe_path, *overrides):
    from trainer.config import load_recipe, recipe_to_dict

    return recipe_to_dict(load_recipe(str(recipe_path), list(overrides)))


def test_a_finished_run_is_refused_resumable_with_its_recipe_and_not_with_another(finished_run):
    from trainer.outdir import check_output_dir

    recipe, out = finished_run
    with pytest.raises(UserError, match="holds another run"):
        check_output_dir(out, _recipe_dict(recipe), resume=False, overwrite=False)
    check_output_dir(out, _recipe_dict(recipe, "grpo.max_steps=5"), resume=True, overwrite=False)  # may grow
    with pytest.raises(UserError, match=r"grpo\.learning_rate was 0\.001, now 0\.5"):
        check_output_dir(out, _recipe_dict(recipe, "grpo.learning_rate=0.5"), resume=True, overwrite=False)


def test_overwrite_removes_the_run_and_nothing_else(finished_run, tmp_path):
    import shutil

    from trainer.outdir import RUN_FILES, clear_run, run_files

    _, out = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "notes.txt").write_text("mine")
    removed = clear_run(copy)
    assert set(removed) >= {"recipe.resolved.yaml", "metrics.jsonl", "checkpoints", "final", "latest_checkpoint"}
    assert not run_files(copy) and set(removed) <= set(RUN_FILES)
    assert (copy / "notes.txt").read_text() == "mine"


def test_resume_follows_the_latest_pointer_not_the_highest_step(tmp_path, caplog):
    import torch

    from trainer import checkpoint as ckpt

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def save_pretrained(self, path, state_dict=None, safe_serialization=True):
            from safetensors.torch import save_file

            save_file(state_dict, str(path / "model.safetensors"))

    model = Tiny()
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    first = ckpt.save_checkpoint(tmp_path, 1, model, None, opt, sched, {})
    second = ckpt.save_checkpoint(tmp_path, 2, model, None, opt, sched, {})
    assert ckpt.latest_checkpoint(tmp_path) == second
    (tmp_path / ckpt.LATEST).write_text("checkpoints/step-00000001\n")  # e.g. step 2 belongs to no sealed run
    assert ckpt.latest_checkpoint(tmp_path) == first
    (first / "rng.pt").write_bytes(b"torn")  # the named one is damaged: the newest complete one
    with caplog.at_level(logging.WARNING, logger="trainer.checkpoint"):
        assert ckpt.latest_checkpoint(tmp_path) == second
    assert "not usable" in caplog.text
    (tmp_path / ckpt.LATEST).write_text("../../etc\n")  # a pointer out of the folder is ignored
    assert ckpt.latest_checkpoint(tmp_path) == second


# ---------------------------------------------------------------------- report folders
def test_a_report_folder_from_before_the_marker_is_recognised_and_nothing_else(tmp_path):
    from experiments.report import TITLE, check_report_out

    old = tmp_path / "old"
    old.mkdir()
    (old / "index.html").write_text(f'<!doctype html><html><head><meta charset="utf-8"><title>{TITLE}</title>')
    (old / "gantt.png").write_bytes(b"\x89PNG")
    check_report_out(str(old))
    (old / "thesis.tex").write_text("mine")
    with pytest.raises(UserError, match="no .hdc-report marker"):
        check_report_out(str(old))
    check_report_out(str(tmp_path / "new"))
    (tmp_path / "empty").mkdir()
    check_report_out(str(tmp_path / "empty"))


def test_hdc_train_overwrite_replaces_the_run_and_keeps_other_files(finished_run, tmp_path):
    import shutil
    import subprocess
    import sys

    from trainer.logs import read_metrics
    from trainer.selfcheck.runs import ROOT

    recipe, out = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "notes.txt").write_text("mine")
    steps_before = [r["step"] for r in read_metrics(copy / "metrics.jsonl") if "loss" in r]
    argv = [sys.executable, "-m", "hdc.cli", "train", str(recipe), "--out", str(copy), "--no-progress"]
    refused = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2 and "holds another run" in refused.stderr
    done = subprocess.run(argv + ["--overwrite"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--overwrite: removed" in done.stderr and (copy / "notes.txt").read_text() == "mine"
    assert [r["step"] for r in read_metrics(copy / "metrics.jsonl") if "loss" in r] == steps_before  # not appended
