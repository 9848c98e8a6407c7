"""Hostile input to training: reward functions that break the contract, data and models that do not fit
the recipe, and NaN/inf in the middle of a run. Each is one line naming the function or the field (exit
2 for configuration errors, nothing written), and no checkpoint of non-finite weights is ever sealed —
in one process, across processes (a single rank's NaN stops or skips on every rank, no hang) and with
parameters sharded inside the site (HSDP)."""
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from hdc.errors import UserError
from trainer.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from trainer.guards import NonFiniteError
from trainer.logs import read_metrics
from trainer.rewards import resolve_reward, score
from trainer.selfcheck.poison import nonfinite_checkpoints, poison_recipe
from trainer.selfcheck.runs import ROOT, tiny_run_assets, write_recipe

P, C = ["p1", "p2"], ["c1", "c2"]


def returning(value):
    def bad_reward(prompts, completions, **kwargs):
        return value() if callable(value) else value
    return bad_reward


# ---------------------------------------------------------------------- what a reward function returns
@pytest.mark.parametrize("value, message", [
    ([1.0], "reward function 'bad_reward' returned 1 values for 2 completions"),
    (["1.0", "0.0"], "reward function 'bad_reward' returned a str at index 0 ('1.0'); each value must be a float or None"),
    (1.0, "reward function 'bad_reward' returned a float (1.0); it must return a list"),
    (lambda: (x for x in [1.0, 0.0]), "reward function 'bad_reward' returned a generator; it must return a list"),
    ({"a": 1}, "reward function 'bad_reward' returned a dict"),
    ([[1.0], [0.0]], "reward function 'bad_reward' returned a list at index 0"),
    (None, "reward function 'bad_reward' returned a NoneType"),
])
def test_a_reward_that_breaks_the_contract_is_one_line_naming_it(value, message):
    with pytest.raises(UserError) as e:
        score([returning(value)], [1.0], P, C, {})
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_reward_names_the_function(bad):
    with pytest.raises(NonFiniteError, match=r"reward function 'bad_reward' gave NaN/inf for 1 of 2 completions"):
        score([returning([1.0, bad])], [1.0], P, C, {})
    seen = []  # the trainer's guard collects it instead (every rank decides together)
    per_func, totals = score([returning([1.0, bad])], [1.0], P, C, {}, nonfinite=lambda i, n: seen.append((i, n)))
    assert seen == [(0, 1)] and math.isnan(per_func[0][1]) and totals[0] == 1.0


def test_a_weighted_sum_that_overflows_is_non_finite():
    with pytest.raises(NonFiniteError, match="the weighted sum of rewards"):
        score([returning([1e308, 0.0]), returning([1e308, 0.0])], [1.0, 1.0], P, C, {})


def test_numpy_values_and_bools_are_accepted():
    import numpy as np

    per_func, _ = score([returning(np.array([1.0, 0.5])), returning([True, False])], [1.0, 1.0], P, C, {})
    assert per_func == [[1.0, 0.5], [1.0, 0.0]]


def test_an_exception_inside_a_reward_names_the_function_and_where():
    def crashing(prompts, completions, **kwargs):
        return [1.0 / 0 for _ in completions]

    with pytest.raises(UserError, match=r"reward function 'crashing' raised ZeroDivisionError: float division by zero "
                                        r"\(.*test_hostile_training.py:\d+\)"):
        score([crashing], [1.0], P, C, {})

    async def crashing_async(prompts, completions, **kwargs):
        raise KeyError("answer")

    with pytest.raises(UserError, match=r"reward function 'crashing_async' raised KeyError: 'answer'"):
        score([crashing_async], [1.0], P, C, {})


# ---------------------------------------------------------------------- naming a reward function
MODULES = {
    "syntax_error": ("def f(:\n", r"module 'syntax_error' has a syntax error: .* line 1\)"),
    "raises_at_import": ("raise RuntimeError('no GPU here')\n",
                         r"importing module 'raises_at_import' raised RuntimeError: no GPU here \(.*raises_at_import.py:1\)"),
    "exits_at_import": ("import sys\nsys.exit(3)\n", r"importing module 'exits_at_import' raised SystemExit: 3"),
    "missing_dependency": ("import no_such_dependency_xyz\n",
                           r"cannot import module 'missing_dependency' \(No module named 'no_such_dependency_xyz'\)$"),
    "not_callable": ("f = 3\n", r"'not_callable:f' is not a reward function \(a int, not a function\)"),
    "no_kwargs": ("def f(prompts, completions):\n    return [0.0] * len(completions)\n",
                  r"'no_kwargs:f' is not a reward function \(it takes no \*\*kwargs"),
    "a_class": ("class f:\n    pass\n", r"'a_class:f' is not a reward function \(a type, not a function\)"),
    "positional_only": ("def f(prompts, completions, /, **kwargs):\n    return [0.0] * len(completions)\n",
                        r"'positional_only:f' is not a reward function \(its argument 'prompts' is positional-only"),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_reward_module_that_cannot_be_used_is_one_line(name, tmp_path, monkeypatch):
    source, message = MODULES[name]
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.chdir(tmp_path)  # a module of the current folder is importable
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    with pytest.raises(UserError, match=f"rewards\\[0\\].func: {message}"):
        resolve_reward(f"{name}:f", "rewards[0].func")


@pytest.mark.parametrize("name, why", [("os:system", "a built-in, not a Python function"),
                                       ("builtins:print", "a built-in, not a Python function"),
                                       ("os:path", "a module, not a function"),
                                       ("subprocess:Popen", "a type, not a function")])
def test_a_library_function_is_not_a_reward_function(name, why):
    with pytest.raises(UserError, match=f"{name!r} is not a reward function \\({why}\\)"):
        resolve_reward(name, "rewards[0].func")


def test_trl_style_signatures_are_accepted(tmp_path, monkeypatch):
    (tmp_path / "trl_style.py").write_text(
        "def only_completions(completions, **kwargs):\n    return [1.0] * len(completions)\n"
        "def with_columns(prompts, completions, answer, **kwargs):\n    return [1.0] * len(completions)\n"
        "class Scorer:\n    def __call__(self, prompts, completions, **kwargs):\n        return [1.0] * len(completions)\n"
        "scorer = Scorer()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("only_completions", "with_columns", "scorer"):
        func = resolve_reward(f"trl_style:{name}", "rewards[0].func")
        assert score([func], [1.0], P, C, {"answer": ["1", "2"]})[1] == [1.0, 1.0]


def test_a_missing_module_says_to_set_pythonpath():
    with pytest.raises(UserError, match=r"cannot import module 'no_such_module_xyz' .*needs its folder on PYTHONPATH"):
        resolve_reward("no_such_module_xyz:f", "rewards[0].func")


# ---------------------------------------------------------------------- recipe validate: model, data, columns, topology
def _hdc(*argv, cwd=ROOT):
    env_code = "import sys; from hdc.cli import main; sys.exit(main(sys.argv[1:]))"
    # -P: the current folder is not on sys.path, as for the `hdc` script
    return subprocess.run([sys.executable, "-P", "-c", env_code, *argv], capture_output=True, text=True, cwd=cwd,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
                          timeout=120)


@pytest.fixture(scope="module")
def assets():
    return tiny_run_assets()


@pytest.fixture
def recipe(assets, tmp_path):
    return write_recipe(tmp_path / "recipe.yaml", assets, max_steps=3)


def _edit(path: Path, **sections) -> Path:
    data = yaml.safe_load(path.read_text())
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(data))
    return path


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _one_line_exit_2(done, starts: str):
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith(f"error: {starts}"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def _validate_here(recipe: Path, capsys, monkeypatch, cwd: Path):
    """`hdc recipe validate` in this process (a new interpreter costs seconds per case), from `cwd`."""
    from hdc.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(cwd))])  # as for the `hdc` script
    capsys.readouterr()
    rc = main(["recipe", "validate", str(recipe)])
    out = capsys.readouterr()
    return subprocess.CompletedProcess([], rc, out.out, out.err)


def test_recipe_validate_passes_a_good_recipe(recipe, capsys, monkeypatch, tmp_path):
    done = _validate_here(recipe, capsys, monkeypatch, tmp_path)
    assert done.returncode == 0 and done.stdout.endswith(": ok\n"), done.stderr


@pytest.mark.parametrize("case, starts", [
    ("no model folder", "model.name_or_path: no such directory"),
    ("a folder without config.json", "model.name_or_path: "),
    ("pickled weights", "model.name_or_path: "),
    ("no train file", "data.train_file: no such file"),
    ("not JSONL", "data.train_file: cannot read"),
    ("no prompt column", "data.train_file: no column 'prompt'"),
    ("accuracy without answer", "data.train_file: the accuracy reward (rewards[0]) needs a column 'answer' or 'solution'"),
    ("code without tests", "data.train_file: the code reward (rewards[0]) needs a column 'tests'"),
    ("eval file without answer", "data.eval_file: no column 'answer'"),
    ("no topology", "distributed.topology: topology 'nowhere.yaml': no such file"),
    ("reward module with a syntax error", "rewards[0].func: module 'broken_reward' has a syntax error"),
    ("os:system", "rewards[0].func: 'os:system' is not a reward function"),
])
def test_recipe_validate_refuses_with_one_line(case, starts, recipe, tmp_path, assets, capsys, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    if case == "a folder without config.json":
        (model / "model.safetensors").write_bytes(b"")
        edits = {"model": {"name_or_path": str(model)}}
    elif case == "pickled weights":
        (model / "config.json").write_text("{}")
        torch.save({"w": torch.zeros(1)}, model / "pytorch_model.bin")
        edits = {"model": {"name_or_path": str(model)}}
    elif case == "no model folder":
        edits = {"model": {"name_or_path": str(tmp_path / "nowhere")}}
    elif case == "no train file":
        edits = {"data": {"train_file": str(tmp_path / "none.jsonl")}}
    elif case == "not JSONL":
        (tmp_path / "x.jsonl").write_bytes(b"\x00\xff{not json")
        edits = {"data": {"train_file": str(tmp_path / "x.jsonl")}}
    elif case == "no prompt column":
        edits = {"data": {"train_file": _write_jsonl(tmp_path / "t.jsonl", [{"question": "1+1", "answer": "2"}])}}
    elif case == "accuracy without answer":
        edits = {"data": {"train_file": _write_jsonl(tmp_path / "t.jsonl", [{"prompt": "1+1"}])},
                 "rewards": [{"func": "accuracy"}]}
    elif case == "code without tests":
        edits = {"data": {"train_file": _write_jsonl(tmp_path / "t.jsonl", [{"prompt": "1+1"}])},
                 "rewards": [{"func": "code"}], "code_sandbox": "weak"}
    elif case == "eval file without answer":
        edits = {"data": {"eval_file": _write_jsonl(tmp_path / "e.jsonl", [{"prompt": "1+1"}])}}
    elif case == "no topology":
        edits = {"distributed": {"topology": "nowhere.yaml"}}
    elif case == "reward module with a syntax error":
        (tmp_path / "broken_reward.py").write_text("def f(:\n")
        edits = {"rewards": [{"func": "broken_reward:f"}]}
    else:
        edits = {"rewards": [{"func": "os:system"}]}
    before = sorted(p.name for p in tmp_path.iterdir())
    _one_line_exit_2(_validate_here(_edit(recipe, **edits), capsys, monkeypatch, tmp_path), starts)
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "nothing written"


def test_train_refuses_a_missing_column_before_writing_anything(recipe, tmp_path):
    _edit(recipe, data={"train_file": _write_jsonl(tmp_path / "t.jsonl", [{"prompt": "1+1"}])},
          rewards=[{"func": "accuracy"}])
    done, _ = _train(recipe, tmp_path / "run")
    _one_line_exit_2(done, "data.train_file: the accuracy reward (rewards[0]) needs a column 'answer' or 'solution'")
    assert not (tmp_path / "run").exists()


def test_a_reward_module_in_the_current_folder_is_found(recipe, tmp_path):  # a real `hdc` start: sys.path as it has it
    (tmp_path / "my_rewards.py").write_text("def short(prompts, completions, **kw):\n"
                                            "    return [-len(c) / 100 for c in completions]\n")
    _edit(recipe, rewards=[{"func": "my_rewards:short"}])
    assert _hdc("recipe", "validate", str(recipe), cwd=tmp_path).returncode == 0


# ---------------------------------------------------------------------- NaN/inf in the middle of a run
def _guard(policy="error"):
    from trainer.guards import StepGuard

    return StepGuard(["accuracy", "format"], policy, all_reduce_sum=list)  # one process: the sum is the list


def _model_with_grad(value: float) -> torch.nn.Module:
    model = torch.nn.Linear(2, 1)
    model(torch.ones(1, 2)).sum().backward()
    model.weight.grad[0, 0] = value
    return model


@pytest.mark.parametrize("grad_norm", [None, math.inf])  # None: no clipping, the guard reads the gradients
def test_the_guard_stops_non_finite_gradients_and_losses(grad_norm):
    guard = _guard()
    assert guard.allows_update(_model_with_grad(1.0), None, step=1)
    with pytest.raises(NonFiniteError, match=r"^step 3: the gradients hold NaN/inf on 1 rank\(s\); stopped before"):
        guard.allows_update(_model_with_grad(math.nan), grad_norm, step=3)
    guard.loss(math.nan)
    with pytest.raises(NonFiniteError, match=r"^step 4: the loss is NaN/inf in 1 micro-batch\(es\)"):
        guard.allows_update(_model_with_grad(1.0), None, step=4)
    assert guard.allows_update(_model_with_grad(1.0), None, step=5), "a loss counts for its own update only"


def test_a_rounds_bad_rewards_stop_each_of_its_updates_and_skip_counts_them():
    guard = _guard("skip")
    guard.start_round()
    guard.reward(1, 2)
    assert not guard.allows_update(_model_with_grad(1.0), None, step=1)
    assert not guard.allows_update(_model_with_grad(1.0), None, step=2), "the round's advantages are still bad"
    guard.start_round()
    assert guard.allows_update(_model_with_grad(1.0), None, step=3) and guard.skipped_steps == 2


def test_a_checkpoint_of_non_finite_weights_is_never_sealed(tmp_path):
    from trainer.tiny import TinyModelConfig, make_tiny_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "m", TinyModelConfig(num_hidden_layers=1)))
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    save_checkpoint(tmp_path / "run", 1, model, None, opt, sched, {})
    with torch.no_grad():
        next(model.parameters())[0, 0] = math.inf
    with pytest.raises(NonFiniteError, match=r"checkpoint of step 2: weight '.*' holds NaN/inf; not sealed \(the "
                                             r"newest sealed checkpoint is still checkpoints/step-00000001\)"):
        save_checkpoint(tmp_path / "run", 2, model, None, opt, sched, {})
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000001"]
    assert latest_checkpoint(tmp_path / "run").name == "step-00000001"
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*")), "the unsealed folder is removed"


def _poisoned(recipe: Path, policy: str, steps=(2,), rank=None, value="nan", **grpo) -> Path:
    return poison_recipe(recipe, policy, steps, value, rank, **grpo)


def _train(recipe: Path, out: Path, *extra: str, timeout_s: float = 300):
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "hdc.cli", "train", str(recipe), "--out", str(out), "--no-progress",
                           *extra], capture_output=True, text=True, cwd=ROOT, timeout=timeout_s)
    return done, time.monotonic() - t0


def _all_finite(out: Path) -> bool:
    return nonfinite_checkpoints(out) == 0


def _lines(done) -> list[str]:
    """Output lines of a run, without the `[rank site] ` prefix `hdc launch` puts on each rank's lines."""
    return [re.sub(r"^\[\d+ [^\]]+\] ", "", line) for line in (done.stdout + done.stderr).splitlines()]


def _assert_stopped_at_step_2(done, out: Path, function="poisoned_length") -> list[str]:
    """The run ended with the guard's one line (returned: the lines saying so), nothing after step 1 sealed."""
    assert done.returncode != 0, done.stdout[-2000:] + done.stderr[-2000:]
    message = (f"error: step 2: reward function {function!r} returned NaN/inf for 1 completion(s); stopped before the "
               f"optimizer step, no checkpoint of this step was written (grpo.on_nonfinite: skip drops such steps "
               f"instead)")
    said = [line for line in _lines(done) if line == message]
    assert said, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr, done.stdout[-3000:] + done.stderr[-3000:]
    assert [p.name for p in list_checkpoints(out)] == ["step-00000001"] and _all_finite(out)
    assert (out / "latest_checkpoint").read_text().strip() == "checkpoints/step-00000001"
    assert not (out / "final").exists()
    return [line for line in (done.stdout + done.stderr).splitlines() if line.endswith(message)]


def _assert_skipped_step_2(done, out: Path, steps=3):
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert any("step 2: reward function 'poisoned_length' returned NaN/inf" in line for line in _lines(done))
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "nonfinite/skipped_steps" in r]
    assert [r["nonfinite/skipped_steps"] for r in rows] == [0.0] + [1.0] * (steps - 1)
    assert len(list_checkpoints(out)) == 2 and _all_finite(out)  # save_total_limit 2


def test_a_nan_reward_ends_a_run_naming_the_function_and_the_step(recipe, tmp_path):
    out = tmp_path / "run"
    done, _ = _train(_poisoned(recipe, "error"), out)
    _assert_stopped_at_step_2(done, out)


def test_skip_drops_the_update_and_the_run_goes_on(recipe, tmp_path):
    out = tmp_path / "run"
    done, _ = _train(_poisoned(recipe, "skip", value="inf"), out)
    _assert_skipped_step_2(done, out)


@pytest.mark.multiproc
def test_one_ranks_nan_stops_every_rank_without_a_hang(recipe, tmp_path):
    out = tmp_path / "run"
    recipe = _edit(_poisoned(recipe, "error", rank=1, per_device_train_batch_size=4), distributed={"timeout_s": 600})
    done, took_s = _train(recipe, out, "--nproc", "2")
    said = _assert_stopped_at_step_2(done, out)
    assert any(line.startswith("[0 ") for line in said), "rank 0, whose rewards were finite, stopped on its own"
    assert took_s < 120, "no rank waited for a collective timeout (distributed.timeout_s 600)"


@pytest.mark.multiproc
@pytest.mark.slow
def test_one_ranks_nan_is_skipped_on_every_rank(recipe, tmp_path):
    out = tmp_path / "run"
    done, _ = _train(_poisoned(recipe, "skip", rank=1, per_device_train_batch_size=4), out, "--nproc", "2")
    _assert_skipped_step_2(done, out)


@pytest.mark.multiproc
@pytest.mark.slow
def test_sharded_inside_the_site_a_nan_stops_every_rank(recipe, tmp_path):
    out = tmp_path / "run"
    done, _ = _train(_poisoned(recipe, "error", rank=0, per_device_train_batch_size=4), out, "--nproc", "2",
                     "--strategy", "hierarchical", "--set", "distributed.shard_within_site=true")
    _assert_stopped_at_step_2(done, out)
