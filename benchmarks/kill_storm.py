"""Kill storm: SIGKILL `hdc train` at random moments (checkpoint writes included) and resume.

    .venv/bin/python benchmarks/kill_storm.py --kills 20 --max-steps 60 --nonfinite 6
    .venv/bin/python benchmarks/kill_storm.py --kills 0 --max-steps 20 --nonfinite 6   # the non-finite storm alone

Each round starts `python -m hdc.cli train ... [--resume]` on the tiny model with
save_steps=1 and save_total_limit=2, waits until the run has written a checkpoint or logged
a step, sleeps a random 0..1 s (a step plus its checkpoint take ~0.3 s, so many kills land
inside a checkpoint write or delete) and SIGKILLs the whole process tree. After every kill
each step-* directory is validated (manifest, sizes, sha256); a directory that is a
step-* but does not validate is *corrupt* (must stay 0); hidden .tmp-/.trash- leftovers are
*partial* (expected, skipped by resume with a warning). The last round runs to the end and
its final weights are compared with an uninterrupted run's (torch.equal per tensor).

Then a storm of non-finite rewards (`--nonfinite N`, 0 to skip it): N random steps get a NaN, inf
or -inf reward (trainer/selfcheck/poison.py). With grpo.on_nonfinite: error, each run must end with
the guard's one line naming the reward function and that step, and is resumed with that step's
poison removed; with skip, one run must finish having skipped exactly those N steps. After every
run every checkpoint's weights are checked: checkpoints with non-finite weights must stay 0.

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


def nonfinite_storm(work: Path, assets, n: int, max_steps: int, rng: random.Random) -> tuple[list, bool]:
    """(table rows, passed) of the non-finite reward storm, under both grpo.on_nonfinite policies."""
    import yaml

    from trainer.logs import read_metrics
    from trainer.selfcheck.poison import nonfinite_checkpoints, poison_recipe

    steps = sorted(rng.sample(range(2, max_steps + 1), n))
    values = {s: rng.choice(["nan", "inf", "-inf"]) for s in steps}
    bad_ckpts = corrupt = clear_errors = 0
    t = time.perf_counter()
    out, left = work / "nonfinite-error", list(steps)
    while True:  # error: every run ends at the next poisoned step with the guard's line; resume without it
        recipe = poison_recipe(write_recipe(work / "error.yaml", assets, max_steps), "error", left, "nan")
        data = yaml.safe_load(recipe.read_text())  # one value per step: the reward gives values[step]
        data["rewards"][0]["params"]["value"] = values[left[0]] if left else "nan"
        recipe.write_text(yaml.safe_dump(data, sort_keys=False))
        done = run_train(recipe, out, resume=(out / "checkpoints").is_dir())
        bad_ckpts += nonfinite_checkpoints(out)
        corrupt += audit(out)[0]
        if not left:
            finished = done.returncode == 0 and (out / "final").is_dir()
            break
        expected = f"error: step {left[0]}: reward function 'poisoned_length' returned NaN/inf for 1 completion(s)"
        clear_errors += done.returncode == 2 and any(line.startswith(expected) for line in done.stderr.splitlines())
        left.pop(0)
    t_error = time.perf_counter() - t
    t = time.perf_counter()
    skip_out = work / "nonfinite-skip"
    recipe = poison_recipe(write_recipe(work / "skip.yaml", assets, max_steps), "skip", steps, "inf")
    done = run_train(recipe, skip_out)
    rows = read_metrics(skip_out / "metrics.jsonl") if (skip_out / "metrics.jsonl").exists() else []
    skipped = int(rows[-1].get("nonfinite/skipped_steps", -1)) if rows else -1
    bad_ckpts += nonfinite_checkpoints(skip_out)
    corrupt += audit(skip_out)[0]
    t_skip = time.perf_counter() - t
    passed = (finished and clear_errors == n and skipped == n and done.returncode == 0 and bad_ckpts == 0
              and corrupt == 0)
    return [("non-finite rewards injected at steps", " ".join(f"{s}:{values[s]}" for s in steps)),
            ("error: runs ended with the guard's one line", f"{clear_errors} of {n}"),
            ("error: resumed run reached the end", finished),
            ("skip: steps skipped (nonfinite/skipped_steps)", f"{skipped} of {n}"),
            ("checkpoints with non-finite weights", bad_ckpts), ("corrupt checkpoints (non-finite storm)", corrupt),
            ("non-finite storm wall time s (error, skip)", f"{t_error:.1f}, {t_skip:.1f}")], passed

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs before the run may finish")
    ap.add_argument("--max-steps", type=int, default=60)
    ap.add_argument("--max-delay-s", type=float, default=1.0, help="random delay after a step/checkpoint appears")
    ap.add_argument("--nonfinite", type=int, default=6, help="steps given a NaN/inf reward in the non-finite storm "
                                                              "(0: none)")
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

    if args.kills == 0:  # only the non-finite storm
        rows, passed = nonfinite_storm(work, assets, args.nonfinite, args.max_steps, rng)
        _print(rows)
        return 0 if passed else 1

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
    passed = True
    if args.nonfinite:
        more, passed = nonfinite_storm(work, assets, args.nonfinite, args.max_steps, rng)
        rows += more
    _print(rows)
    return 0 if (equal and losses_equal and corrupt_seen == 0 and passed) else 1


def _print(rows: list) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
