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

The helpers (start_train, kill_tree, wait_for, ...) live in trainer/selfcheck/runs.py, shared
with tests/test_reliability_*.py.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from trainer.selfcheck.runs import (ROOT, audit, kill_tree, latest_pointer, redone_steps_agree, run_train,
                                    start_train, step_losses, wait_for, weights_equal, write_recipe)

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs before the run may finish")
    ap.add_argument("--max-steps", type=int, default=60)
    ap.add_argument("--max-delay-s", type=float, default=1.0, help="random delay after a step/checkpoint appears")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="work directory (default: a fresh temporary one)")
    args = ap.parse_args(argv)

    import tempfile

    from trainer.selfcheck.assets import tiny_assets

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
