"""Run untrusted code (a completion's program, judged by the row's tests) in a contained sandbox.

Two levels. **strong** (root on Linux with cgroups; the default, and required unless asked
otherwise): between fork and exec the child joins a fresh cgroup — memory (`memory_bytes`,
for the whole sandbox, page cache and tmpfs included) and process count (`max_processes`)
— and unshares mount, network, IPC and PID namespaces: no network interface is up, SysV IPC
and /dev/shm are private, /proc (mounted anew by the sandbox's PID 1) shows only the
sandbox's processes, the file system is read-only except a tmpfs working folder of
`max_disk_bytes` and private /tmp and /dev/shm (16 MiB each), and the programs run as
unprivileged uids of their own (one per slot and role), so they can neither signal nor
inspect the trainer. When PID 1 ends, the kernel kills whatever is left in the namespace;
the cgroup is emptied and removed after every run. **weak** (no root, or no cgroup): only
per-process limits — `max_processes` counted on the trainer's own uid, address space
`memory_bytes / WEAK_MAX_PROCESSES` per process with at most WEAK_MAX_PROCESSES processes
(so the total stays bounded by `memory_bytes`), file size — and a prelude that disables
socket creation; the working folder has no quota and /proc shows the host's processes. The
judge and init are not dumpable, but the program runs as the trainer's user, so a program that
goes after the trainer's own /proc entries could still forge a verdict: weak is for trusted
code and for machines without root, not for adversarial policies.
`run_judged(..., isolation="strong")` refuses (UserError) where strong isolation is missing;
"weak" uses it where it exists and otherwise warns once per process.

Judged runs (the `code` reward) keep the verdict outside the program under test: the
completion runs in one process (trainer/sandbox_harness/worker.py), the tests in another
under a different uid (judge.py) that calls the completion's functions over pipes. Values
cross as plain data, so the tests compare builtins, never the completion's objects (an `==`
that is always true has nothing to compare); the verdict is written on a pipe only the judge
holds, so `sys.exit(0)`, `os._exit(0)` or an `atexit` exit in the completion ends its own
process and fails the test. Every limit, CPU seconds and a wall-clock timeout included,
applies to the whole run.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hdc.errors import UserError
from trainer.cgroup import Cgroup

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x08000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
SANDBOX_BASE = "/var/tmp/hdc-sandbox"  # root-owned; run folders and the interpreter mount live here
PYTHON_MOUNT = SANDBOX_BASE + "/python"
SANDBOX_UID_BASE = 61000  # slot i runs its program as uid BASE + 2i and its judge as BASE + 2i + 1
SLOTS = 64
WEAK_MAX_PROCESSES = 8  # weak mode: processes per sandbox, each with memory_bytes / 8 of address space
HARNESS = Path(__file__).with_name("sandbox_harness")
ISOLATIONS = ("strong", "weak")
log = logging.getLogger("hdc.sandbox")

_PRELUDE_NO_NET = (
    "import socket as _s\n"
    "def _deny(*a, **k):\n    raise OSError('network disabled in the sandbox')\n"
    "_s.socket = _deny; _s.create_connection = _deny; _s.socketpair = _deny\n"
    "del _s, _deny\n")


@dataclass
class SandboxLimits:
    cpu_time_s: int = 5  # per process
    wall_time_s: float = 10.0  # the whole run
    memory_bytes: int = 512 * 2**20  # the whole sandbox (strong); see WEAK_MAX_PROCESSES (weak)
    max_processes: int = 32  # the whole sandbox
    max_disk_bytes: int = 64 * 2**20  # the working folder (strong)
    max_file_bytes: int = 16 * 2**20
    max_open_files: int = 64
    max_output_bytes: int = 64 * 1024


@dataclass
class SandboxResult:
    ok: bool  # program: exited 0 within the limits; judged: every test ran to its end
    reason: str  # 'ok', 'timeout', 'exit code N', 'killed by SIGNAL', 'memory limit', 'tests failed: ...', 'error: ...'
    exit_code: int | None
    stdout: str
    stderr: str
    duration_s: float
    isolation: str  # 'namespaces+cgroup' or 'rlimits-only'


# ---------------------------------------------------------------------- public API
def run_python(source: str, limits: SandboxLimits | None = None, isolation: str = "strong") -> SandboxResult:
    """Run `source` as a Python program (`main.py`) in the sandbox; ok when it exits 0."""
    return _with_slot(limits, isolation, lambda rundir, uids, strong: _write_program(rundir, source, uids, strong),
                      "program")


def run_judged(solution: str, tests: str, limits: SandboxLimits | None = None,
               isolation: str = "strong") -> SandboxResult:
    """Run the completion's `solution` and, in a separate process, the `tests` against it; ok
    only when every test ran to its end (a verdict the solution cannot write)."""
    return _with_slot(limits, isolation,
                      lambda rundir, uids, strong: _write_judged(rundir, solution, tests, uids, strong), "judged")


@functools.lru_cache(maxsize=1)
def strong_isolation_problem() -> str | None:
    """None where strong isolation works here, else why not (probed once: a real sandboxed run)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux (namespaces, cgroups, other uids)"
    try:
        Cgroup.create("probe", 64 * 2**20, 4).remove()
    except OSError as e:
        return f"no writable cgroup with memory and pids controllers ({e})"
    with _slot() as slot:
        r = _run_in_slot(SandboxLimits(), True, slot,
                         lambda rundir, uids, strong: _write_program(rundir, "pass", uids, strong), "program")
    return None if r.ok else f"a sandboxed test run failed ({r.reason}: {r.stderr.strip()[-200:]})"


def resolve_isolation(isolation: str, what: str = "code_sandbox") -> bool:
    """True for strong isolation; a UserError when `strong` is asked and missing; weak warns once."""
    if isolation not in ISOLATIONS:
        raise UserError(f"{what}: must be one of {', '.join(ISOLATIONS)}, got {isolation!r}")
    problem = strong_isolation_problem()
    if problem is None:
        return True
    if isolation == "strong":
        raise UserError(f"{what}: strong sandbox isolation is not available here: {problem}; set "
                        f"code_sandbox: weak in the recipe to run untrusted code with per-process limits only")
    _warn_weak(problem)
    return False


@functools.lru_cache(maxsize=1)
def _warn_weak(problem: str) -> None:
    log.warning("code_sandbox: weak — untrusted code runs with per-process limits only (%s): no network, mount, "
                "IPC or PID namespace, no memory or disk quota for the whole sandbox, same uid as the trainer",
                problem)


# ---------------------------------------------------------------------- one run
_slot_lock = threading.Lock()
_free_slots = list(range(SLOTS))
_slots = threading.Semaphore(SLOTS)


@contextlib.contextmanager
def _slot():
    """A free slot number (its uids are used by no other run at the same time)."""
    with _slots:
        with _slot_lock:
            slot = _free_slots.pop()
        try:
            yield slot
        finally:
            with _slot_lock:
                _free_slots.append(slot)


def _with_slot(limits, isolation, write, mode) -> SandboxResult:
    limits = limits or SandboxLimits()
    strong = resolve_isolation(isolation)
    with _slot() as slot:
        return _run_in_slot(limits, strong, slot, write, mode)


def _run_in_slot(limits: SandboxLimits, strong: bool, slot: int, write, mode: str) -> SandboxResult:
    isolation = "namespaces+cgroup" if strong else "rlimits-only"
    uids = (SANDBOX_UID_BASE + 2 * slot, SANDBOX_UID_BASE + 2 * slot + 1) if strong else (os.getuid(),) * 2
    if strong:
        os.makedirs(SANDBOX_BASE, mode=0o711, exist_ok=True)
        os.makedirs(PYTHON_MOUNT, mode=0o755, exist_ok=True)
        _sweep_run_dirs()
    rundir = tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=SANDBOX_BASE if strong else None)
    os.chmod(rundir, 0o711)
    workdir = os.path.join(rundir, "work")
    os.mkdir(workdir, 0o1777)
    os.chmod(workdir, 0o1777)
    cgroup = None
    status_r, status_w = os.pipe()
    try:
        write(rundir, uids, strong)
        for name in ("init.py", "worker.py", "judge.py"):
            shutil.copy(HARNESS / name, os.path.join(rundir, name))
            os.chmod(os.path.join(rundir, name), 0o444)
        if strong:
            cgroup = Cgroup.create(f"{os.getpid()}-{slot}", limits.memory_bytes, limits.max_processes)
        python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
        cfg = {"mode": mode, "strong": strong, "status_fd": status_w, "rundir": rundir, "workdir": workdir,
               "uid_program": uids[0], "uid_judge": uids[1],
               "python": os.path.join(PYTHON_MOUNT, os.path.relpath(python, sys.base_prefix)) if strong else python,
               "env": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "PYTHONDONTWRITEBYTECODE": "1"},
               "inputs": {"main.py": [], "worker.py": ["solution.py"], "judge.py": ["tests.py"]},
               "limits": {**asdict(limits), **_process_limits(limits, strong)}}
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(
                [python, "-I", "-S", os.path.join(rundir, "init.py"), json.dumps(cfg)], cwd=workdir, env=cfg["env"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(status_w,),
                preexec_fn=lambda: _enter_sandbox(cgroup, strong, rundir, workdir, limits),
                start_new_session=True)
        except (OSError, subprocess.SubprocessError) as e:
            return SandboxResult(False, f"error: could not start the sandbox: {e}", None, "", "", 0.0, isolation)
        os.close(status_w)
        status_w = -1
        out = _CappedReader(proc.stdout, limits.max_output_bytes)
        err = _CappedReader(proc.stderr, limits.max_output_bytes)
        timed_out = False
        try:
            proc.wait(timeout=limits.wall_time_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill(proc, cgroup)
        proc.wait()
        status = _read_status(status_r)
        out.join(timeout=2.0)  # weak mode: a daemon that left the process group may still hold the pipe
        err.join(timeout=2.0)
        oom = cgroup is not None and cgroup.oom_kills() > 0
        reason, ok, code = _outcome(mode, status, timed_out, oom)
        return SandboxResult(ok, reason, code, out.text(), err.text(), time.monotonic() - t0, isolation)
    finally:
        for fd in (status_r, status_w):
            if fd >= 0:
                os.close(fd)
        if cgroup is not None:
            cgroup.remove()
        _rmtree(rundir)


def _sweep_run_dirs() -> None:
    """Remove the run folders of trainers that were killed mid-run (run-PID-*, PID no longer alive)."""
    for name in os.listdir(SANDBOX_BASE):
        pid = name.split("-")[1] if name.startswith("run-") and name.count("-") >= 2 else ""
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            _rmtree(os.path.join(SANDBOX_BASE, name))


def _write_program(rundir: str, source: str, uids: tuple[int, int], strong: bool) -> None:
    _write_owned(os.path.join(rundir, "main.py"), source if strong else _PRELUDE_NO_NET + source, uids[0])


def _write_judged(rundir: str, solution: str, tests: str, uids: tuple[int, int], strong: bool) -> None:
    _write_owned(os.path.join(rundir, "solution.py"), solution if strong else _PRELUDE_NO_NET + solution, uids[0])
    _write_owned(os.path.join(rundir, "tests.py"), tests, uids[1])  # not readable by the solution's uid


def _write_owned(path: str, text: str, uid: int) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chown(path, uid, uid)
    os.chmod(path, 0o400)


def _process_limits(limits: SandboxLimits, strong: bool) -> dict:
    """Per-process limits the sandbox's init applies: address space and process count."""
    if strong:  # the cgroup bounds the total; per process only what one process may take, and the uid's count
        return {"address_space_bytes": limits.memory_bytes, "nproc": limits.max_processes}
    # weak: the total is bounded by the product; the trainer's uid already runs _own_tasks() tasks
    n = min(limits.max_processes, WEAK_MAX_PROCESSES)
    return {"address_space_bytes": limits.memory_bytes // n, "nproc": _own_tasks() + n}


def _outcome(mode: str, status: dict, timed_out: bool, oom: bool) -> tuple[str, bool, int | None]:
    """(reason, ok, exit code) of a run from init's status line."""
    if timed_out:
        return "timeout", False, None
    if "error" in status:
        return f"error: {status['error']}", False, None
    if mode == "judged":
        verdict, judge = status.get("verdict", ""), status.get("judge", {})
        if verdict == "pass" and judge.get("exit") == 0:
            return "ok", True, 0
        return ("memory limit" if oom else f"tests failed: {verdict or 'no verdict'}"), False, judge.get("exit")
    if "signal" in status:
        sig = status["signal"]
        reason = ("memory limit" if oom else "cpu time limit" if sig == signal.SIGXCPU
                  else f"killed by {signal.Signals(sig).name}")
        return reason, False, -sig
    if "exit" in status:
        code = status["exit"]
        return ("ok" if code == 0 else f"exit code {code}"), code == 0, code
    return "error: the sandbox ended without a status", False, None


def _read_status(fd: int) -> dict:
    """The JSON line init wrote (everything that held the pipe has ended by now)."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while chunk := os.read(fd, 65536):
            data += chunk
    except BlockingIOError:
        pass
    try:
        return json.loads(data.decode().splitlines()[0])
    except (ValueError, IndexError):
        return {}


# ---------------------------------------------------------------------- in the child, before exec
def _enter_sandbox(cgroup: "Cgroup | None", strong: bool, rundir: str, workdir: str, limits: SandboxLimits) -> None:
    """Runs in the forked child before it execs init.py: cgroup, namespaces, mounts (strong only)."""
    if not strong:
        return
    cgroup.join()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWPID) != 0:
        os._exit(120)

    def mount(src, target, fstype, flags, data=None):
        if libc.mount(src, target.encode(), fstype, flags, data) != 0:
            os._exit(121)

    mount(None, "/", None, MS_REC | MS_PRIVATE)
    for scratch in ("/tmp", "/dev/shm"):  # fresh private scratch areas
        if os.path.isdir(scratch):
            mount(b"tmpfs", scratch, b"tmpfs", MS_NOSUID | MS_NODEV, b"size=16m,mode=1777")
    mount(b"tmpfs", workdir, b"tmpfs", MS_NOSUID | MS_NODEV, f"size={limits.max_disk_bytes},mode=1777".encode())
    mount(sys.base_prefix.encode(), PYTHON_MOUNT, None, MS_BIND | MS_REC)
    for target in _mount_points():  # then the whole tree read-only except the work folder and scratch areas
        if target == workdir or target.startswith(("/proc", "/sys", "/dev", "/tmp")):
            continue
        libc.mount(None, target.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
    os.chdir(workdir)  # the cwd set before this points at the folder under the new mount


def _mount_points() -> list[str]:
    try:
        with open("/proc/self/mountinfo") as fh:
            return sorted({line.split()[4] for line in fh}, key=len)
    except OSError:
        return ["/"]


def _own_tasks() -> int:
    """Threads of this uid (RLIMIT_NPROC counts threads), from /proc."""
    uid, n = os.getuid(), 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    n += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return n


def _kill(proc: subprocess.Popen, cgroup: Cgroup | None) -> None:
    """Kill the sandbox: its process group, and (strong) everything in its cgroup."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if cgroup is not None:
        cgroup.kill_all()


class _CappedReader(threading.Thread):
    """Drains a pipe, keeping at most `cap` bytes (the rest is read and dropped)."""

    def __init__(self, pipe, cap: int):
        super().__init__(daemon=True)
        self.pipe, self.cap, self.buf, self.dropped = pipe, cap, bytearray(), 0
        self.start()

    def run(self) -> None:
        while True:
            chunk = self.pipe.read(65536) if hasattr(self.pipe, "read") else b""
            if not chunk:
                break
            room = self.cap - len(self.buf)
            self.buf += chunk[:max(room, 0)]
            self.dropped += max(len(chunk) - max(room, 0), 0)
        self.pipe.close()

    def text(self) -> str:
        s = self.buf.decode("utf-8", "replace")
        return s + (f"\n[... {self.dropped} bytes dropped]" if self.dropped else "")


def _rmtree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
