"""Kill storm: SIGKILL `hdc train` at random moments (checkpoint writes included) and resume.

    .venv/bin/python benchmarks/kill_storm.py --kills 20 --max-steps 60

Each round starts `python -m hdc.cli train ... [--resume]` on the tiny model with
save_steps=1 and save_total_limit=2, waits until the run has written a checkpoint or logged
a step, sleeps a random 0..1 s (a step plus its checkpoint take ~0.3 s, so many kills land
inside a checkpoint write or delete) and SIGKILLs the whole process tree. After every kill
each step-* directory is validated (manifest, sizes, sha256); a directory that is a
step-* but does not validate is *corrupt* (must stay 0); hidden .tmp-/.trash- leftovers are
*partial* (expected, skipped by resume with a warning). The last round runs to the end and
its final weights are compared with an uninterrupted run's (torch.equal per tensor).

The helpers (start_train, kill_tree, wait_for, ...) are also used by tests/test_reliability_*.py.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from trainer.logs import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def write_recipe(path: Path, assets, max_steps: int, save_steps: int = 1, save_total_limit: int | None = 2,
                 timeout_s: float = 60.0, strategy: str = "flat_ring", distributed: dict | None = None,
                 batch_size: int = 8) -> Path:
    """A small recipe on trainer.testing.tiny_assets(): 16-token completions scored by the
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs before the run may finish")
    ap.add_argument("--max-steps", type=int, default=60)
    ap.add_argument("--max-delay-s", type=float, default=1.0, help="random delay after a step/checkpoint appears")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="work directory (default: a fresh temporary one)")
    args = ap.parse_args(argv)

    import tempfile

    from trainer.testing import tiny_assets

    t0 = time.perf_counter()
    rng = random.Random(args.seed)
    work = Path(args.out or tempfile.mkdtemp(prefix="hdc-kill-storm-"))
    assets = tiny_assets(sft_steps=1, num_train=200)
    recipe = write_recipe(work / "recipe.yaml", assets, args.max_steps)
    t_assets = time.perf_counter() - t0

    t = time.perf_counter()
    done = run_train(recipe, work / "straight", timeout_s=900)
    assert done.returncode == 0, done.stderr[-2000:]
    t_straight = time.perf_counter() - t

    out = work / "storm"
    kills = resumes = corrupt_seen = partial_seen = during_write = 0
    t = time.perf_counter()
    while True:
        resume = (out / "checkpoints").is_dir()
        resumes += resume
        proc = start_train(recipe, out, resume=resume)
        if kills >= args.kills:
            if proc.wait(timeout=900) != 0:
                print((out.parent / "storm.log").read_text()[-3000:])
                return 1
            break
        before = (latest_pointer(out), len(step_losses(out)))
        progressed = lambda: (latest_pointer(out), len(step_losses(out))) != before  # noqa: E731
        if not wait_for(progressed, proc, timeout_s=300):
            if proc.poll() == 0:
                print(f"the run finished after {kills} kills: raise --max-steps")
                return 1
        time.sleep(rng.uniform(0.0, args.max_delay_s))
        if proc.poll() is not None:  # finished before the kill landed
            if proc.returncode != 0:
                print((out.parent / "storm.log").read_text()[-3000:])
                return 1
            break
        kill_tree(proc)
        kills += 1
        corrupt, partial = audit(out)
        corrupt_seen += corrupt
        partial_seen += partial
        during_write += partial > 0
    t_storm = time.perf_counter() - t

    equal = weights_equal(work / "straight" / "final", out / "final")
    losses_equal = step_losses(work / "straight") == step_losses(out) and redone_steps_agree(out)
    rows = [("kills (SIGKILL of the whole job)", kills), ("resumes", resumes),
            ("kills that left a partial checkpoint dir", during_write),
            ("corrupt checkpoints found", corrupt_seen), ("partial dirs ignored (summed over kills)", partial_seen),
            ("final weights equal (torch.equal)", equal), ("losses equal per step", losses_equal),
            ("steps", args.max_steps), ("uninterrupted run wall time s", f"{t_straight:.1f}"),
            ("storm wall time s", f"{t_storm:.1f}"), ("storm / uninterrupted", f"{t_storm / t_straight:.2f}x"),
            ("tiny assets build s", f"{t_assets:.1f}"), ("total wall time s", f"{time.perf_counter() - t0:.1f}")]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0 if (equal and losses_equal and corrupt_seen == 0) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
