"""Time a benchmark against another version of hdc (default: the `main` branch) in the same run.

`compare(script, args, ref, reps)` exports `ref` with `git archive` into a temporary folder and
runs `script --child args` alternately with PYTHONPATH at that tree and at this one (baseline
first, `reps` times each); each child prints one JSON object of seconds as its last line. The
ratio of medians (this / baseline) is what a benchmark prints: same machine, same minutes.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def export(ref: str) -> str:
    """A checkout of `ref` in a temporary folder (git archive: no worktree is touched)."""
    out = tempfile.mkdtemp(prefix=f"hdc-{ref.replace('/', '-')}-")
    archive = os.path.join(out, "ref.tar")
    subprocess.run(["git", "-C", ROOT, "archive", "--format=tar", "-o", archive, ref], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")
    os.remove(archive)
    return out


def child(script: str, args: list[str], tree: str) -> dict:
    env = {**os.environ, "PYTHONPATH": tree}
    res = subprocess.run([sys.executable, script, "--child", *args], env=env, cwd=tree, capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def compare(script: str, args: list[str], ref: str, reps: int) -> tuple[dict, dict]:
    """({name: [seconds...]} of this tree, the same of `ref`), alternating runs."""
    base_tree = export(ref)
    ours: dict = {}
    theirs: dict = {}
    try:
        for _ in range(reps):
            for tree, into in ((base_tree, theirs), (ROOT, ours)):
                for name, s in child(script, args, tree).items():
                    into.setdefault(name, []).append(s)
    finally:
        shutil.rmtree(base_tree, ignore_errors=True)
    return ours, theirs


def ratio_lines(ours: dict, theirs: dict, ref: str) -> list[str]:
    lines = []
    for name in ours:
        if name in theirs:
            a, b = statistics.median(ours[name]), statistics.median(theirs[name])
            lines.append(f"{name:<44} this {a:>7.3f} s   {ref} {b:>7.3f} s   ratio {a / b:.2f}x "
                         f"({len(ours[name])} alternating runs each)")
    return lines
