"""The harness of the hostile-input suites: run one `hdc` command on bad input and check that it
is refused the way a user should see it.

    from hostile import Case, check_refused          # tests/ is on sys.path under pytest

    check_refused(Case("lr-inf", ["recipe", "validate", "{tmp}/r.yaml", "--set", "grpo.learning_rate=.inf"],
                       field="grpo.learning_rate", files={"r.yaml": RECIPE}), tmp_path)

A case is refused when: the exit status is 2 (`expect_rc`), stderr is exactly one line, starting
`error: ` and naming `field` (a flag, a field path or a file), no traceback anywhere, the command
finished within `limit_s`, and no file under the case's folder changed except those `allowed`
(by default none: a refusal writes nothing). Commands run in-process (`hdc.cli.main`, fast: a few
hundred cases in well under a minute) with the working directory set to the case's folder; with
`subprocess=True` they run as `python -m hdc.cli` with a hard timeout (for cases that may hang).
`{tmp}` in argv and file contents becomes the case's folder; `{repo}` the repository root.
"""
from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Callable, Optional, Union

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    id: str
    argv: list[str]                       # arguments after `hdc`
    field: str                            # what the one-line message must name
    files: dict[str, Union[str, bytes]] = dc_field(default_factory=dict)  # written under the case folder first
    setup: Optional[Callable[[Path], None]] = None  # more preparation in the case folder (folders, runs, ...)
    expect_rc: int = 2
    allowed: tuple[str, ...] = ()         # paths (relative to the case folder) that may change
    limit_s: float = 10.0
    subprocess: bool = False

    def __str__(self) -> str:
        return self.id


@dataclass
class Outcome:
    rc: int
    stdout: str
    stderr: str
    elapsed_s: float
    changed: list[str]


class _TimeLimit(BaseException):
    """Raised in the main thread by SIGALRM when an in-process case runs past its limit."""


def _fill(text: str, tmp: Path) -> str:
    return text.replace("{tmp}", str(tmp)).replace("{repo}", str(REPO))


def snapshot(root: Path) -> dict[str, tuple]:
    """(kind, size, mtime_ns) of every path under `root`, by relative path."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            out[rel] = ("d" if p.is_dir() else "f", 0 if p.is_dir() else st.st_size, st.st_mtime_ns)
    return out


def changed_paths(before: dict, after: dict, allowed: tuple[str, ...] = ()) -> list[str]:
    """Paths created, deleted or modified, except those under an allowed path."""
    diff = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return [k for k in diff if not any(k == a or k.startswith(a.rstrip("/") + "/") for a in allowed)]


def run_case(case: Case, tmp: Path) -> Outcome:
    """Prepare the case folder, run the command, return what happened."""
    tmp.mkdir(parents=True, exist_ok=True)
    for rel, content in case.files.items():
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(_fill(content, tmp), encoding="utf-8")
    if case.setup is not None:
        case.setup(tmp)
    argv = [_fill(a, tmp) for a in case.argv]
    before = snapshot(tmp)
    t0 = time.perf_counter()
    if case.subprocess:
        rc, out, err = _run_subprocess(argv, tmp, case.limit_s)
    else:
        rc, out, err = _run_in_process(argv, tmp, case.limit_s)
    elapsed = time.perf_counter() - t0
    return Outcome(rc, out, err, elapsed, changed_paths(before, snapshot(tmp), case.allowed))


def _run_in_process(argv: list[str], cwd: Path, limit_s: float) -> tuple[int, str, str]:
    from hdc.cli import main

    out, err = io.StringIO(), io.StringIO()
    old_cwd = os.getcwd()

    def on_alarm(signum, frame):
        raise _TimeLimit()

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except _TimeLimit:
                rc = 124
                print(f"timed out after {limit_s} s", file=sys.stderr)
            except SystemExit as e:  # argparse --help and friends
                rc = e.code if isinstance(e.code, int) else 1
            except BaseException:  # a bug: show it as the process would
                rc = 1
                traceback.print_exc()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        os.chdir(old_cwd)
    return rc, out.getvalue(), err.getvalue()


def _run_subprocess(argv: list[str], cwd: Path, limit_s: float) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        p = subprocess.run([sys.executable, "-m", "hdc.cli", *argv], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=limit_s)
    except subprocess.TimeoutExpired as e:
        return 124, (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""), \
            f"timed out after {limit_s} s"
    return p.returncode, p.stdout, p.stderr


def problems(case: Case, o: Outcome) -> list[str]:
    """What is wrong with how `case` was handled (empty: refused properly)."""
    bad = []
    lines = [line for line in o.stderr.splitlines() if line.strip()]
    if o.rc != case.expect_rc:
        bad.append(f"exit status {o.rc}, expected {case.expect_rc}")
    if "Traceback" in o.stderr or "Traceback" in o.stdout:
        bad.append("a traceback")
    if case.expect_rc == 2:
        if len(lines) != 1:
            bad.append(f"{len(lines)} lines on stderr, expected one")
        elif not lines[0].startswith("error: "):
            bad.append("stderr does not start with 'error: '")
        if not any(case.field in line for line in lines):
            bad.append(f"the message does not name {case.field!r}")
    if o.elapsed_s > case.limit_s:
        bad.append(f"took {o.elapsed_s:.1f} s, limit {case.limit_s} s")
    if o.changed:
        bad.append(f"changed files outside the intended output: {', '.join(o.changed[:5])}")
    return bad


def check_refused(case: Case, tmp: Path) -> Outcome:
    """Run `case` in `tmp` and fail the test (with the whole stderr) unless it was refused properly."""
    o = run_case(case, tmp)
    bad = problems(case, o)
    assert not bad, f"{case.id}: {'; '.join(bad)}\n--- stderr ---\n{o.stderr[-3000:]}\n--- stdout ---\n{o.stdout[-1000:]}"
    return o
