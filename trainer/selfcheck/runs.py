"""Whole `hdc train` runs as subprocesses, for the reliability checks: write a recipe for the
tiny assets, start a run, SIGKILL its process tree, wait for a checkpoint, resume, and compare
losses and final weights (benchmarks/kill_storm.py and tests/test_reliability_*.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from trainer.logs import read_metrics

ROOT = Path(__file__).resolve().parents[2]  # the repository (recipes/, the hdc package)


def write_recipe(path: Path, assets, max_steps: int, save_steps: int = 1, save_total_limit: int | None = 2,
                 timeout_s: float = 60.0, strategy: str = "flat_ring", distributed: dict | None = None,
                 batch_size: int = 8) -> Path:
    """A small recipe on trainer.selfcheck.assets.tiny_assets(): 16-token completions scored by the
    length reward (varied rewards, so every step really moves the weights); `distributed`
    adds fields to that section (e.g. topology, shard_within_site)."""
    import yaml

    recipe = {
        "model": {"name_or_path": str(assets.sft_model), "dtype": "float32"},
        "data": {"train_file": str(assets.data / "train.jsonl"), "eval_file": None, "use_chat_template": True},
        "rewards": [{"func": "length", "weight": 1.0, "params": {"target_length": 24}}],
        "grpo": {"learning_rate": 1e-3, "lr_scheduler_type": "linear", "max_steps": max_steps,
                 "save_steps": save_steps, "save_total_limit": save_total_limit, "num_generations": 4,
                 "per_device_train_batch_size": batch_size, "gradient_accumulation_steps": 1, "max_completion_length": 16,
                 "max_prompt_length": 64, "loss_type": "dr_grpo", "log_completions": False, "seed": 0,
                 "torch_num_threads": 1},
        "distributed": {"timeout_s": timeout_s, "strategy": strategy, **(distributed or {})},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def train_argv(recipe: Path, out: Path, nproc: int | None = None, resume: bool = False,
               sets: tuple[str, ...] = ()) -> list[str]:
    argv = [sys.executable, "-m", "hdc.cli", "train", str(recipe), "--out", str(out), "--no-progress"]
    for s in sets:
        argv += ["--set", s]
    if nproc:
        argv += ["--nproc", str(nproc)]
    return argv + (["--resume"] if resume else [])


def start_train(recipe: Path, out: Path, nproc: int | None = None, resume: bool = False,
                sets: tuple[str, ...] = ()) -> subprocess.Popen:
    """`hdc train` in the background; stdout and stderr appended to OUT.log."""
    out.parent.mkdir(parents=True, exist_ok=True)
    log = open(out.parent / f"{out.name}.log", "ab")
    return subprocess.Popen(train_argv(recipe, out, nproc, resume, sets), cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def run_train(recipe: Path, out: Path, nproc: int | None = None, resume: bool = False,
              timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(train_argv(recipe, out, nproc, resume), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout_s)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), children first collected breadth-first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a job we started and every process under it (the --nproc ranks run in their own
    sessions, so killing the launcher alone would orphan them)."""
    pids = [proc.pid] + descendants(proc.pid)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    for pid in pids[1:]:  # reap-free wait: children of the launcher are re-parented; poll until gone
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            if "Z" == _state(pid):
                break
            time.sleep(0.01)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def latest_pointer(out: Path) -> str | None:
    try:
        return (out / "latest_checkpoint").read_text().strip()
    except OSError:
        return None


def wait_for(predicate, proc: subprocess.Popen | None = None, timeout_s: float = 120.0, poll_s: float = 0.02) -> bool:
    """Poll until predicate() is true; False if the process exits first or on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return predicate()
        time.sleep(poll_s)
    return False


def step_losses(out: Path) -> dict[int, float]:
    """step -> loss from metrics.jsonl (the last row of a step wins: steps redone after a resume
    are logged again); a line cut by a kill is skipped."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return {}
    return {row["step"]: row["loss"] for row in read_metrics(path) if "loss" in row}


def redone_steps_agree(out: Path) -> bool:
    """Every step logged more than once (before a kill and again after the resume) has the same loss."""
    seen: dict[int, float] = {}
    for row in read_metrics(out / "metrics.jsonl"):
        if "loss" in row:
            if row["step"] in seen and seen[row["step"]] != row["loss"]:
                return False
            seen[row["step"]] = row["loss"]
    return True


def weights_equal(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def audit(out: Path) -> tuple[int, int]:
    """(corrupt step-* checkpoints, partial .tmp-/.trash- directories) under OUT/checkpoints."""
    from trainer.checkpoint import list_checkpoints, partial_dirs, validate_checkpoint

    corrupt = [p for p in list_checkpoints(out) if validate_checkpoint(p) is not None]
    return len(corrupt), len(partial_dirs(out))


def tiny_run_assets():
    """The assets of the reliability runs: a few seconds to build; the length reward needs no warm start."""
    from trainer.selfcheck.assets import tiny_assets

    return tiny_assets(sft_steps=1, num_train=200)


def kill_after_step_5_and_resume(tmp_path: Path, nproc=None, strategy="flat_ring", **recipe_kw) -> Path:
    """Train 10 steps straight; train again, SIGKILL it once its step-5 checkpoint is sealed,
    resume: every step's loss and the final weights must be the uninterrupted run's."""
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_run_assets(), max_steps=10, save_steps=5,
                          save_total_limit=None, strategy=strategy, **recipe_kw)
    done = run_train(recipe, tmp_path / "straight", nproc=nproc)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    out = tmp_path / "killed"
    proc = start_train(recipe, out, nproc=nproc)
    sealed = wait_for(lambda: latest_pointer(out) == "checkpoints/step-00000005", proc, timeout_s=240)
    assert sealed and proc.poll() is None, "the run reached its step-5 checkpoint and was still running"
    kill_tree(proc)
    assert not (out / "final").exists()
    resumed = run_train(recipe, out, nproc=nproc, resume=True)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]

    straight, killed = step_losses(tmp_path / "straight"), step_losses(out)
    assert sorted(straight) == list(range(1, 11))
    assert len(set(straight.values())) > 1, "the reward varies, so the steps really train"
    assert killed == straight, "the same loss at every step"
    assert redone_steps_agree(out), "steps logged before the kill and redone after it agree"
    assert weights_equal(tmp_path / "straight" / "final", out / "final"), "bit-identical final weights"
    return out
