"""Run untrusted code (a completion's program and its tests) in a contained child process.

Containment, applied in the child between fork and exec:
- resource limits: CPU seconds, address space, open files, file size, process count;
- a wall-clock timeout; the whole process group and every process of the sandbox's user
  are killed afterwards, so nothing outlives the run;
- an empty temporary working directory, no inherited environment (`python -I`, a minimal
  PATH), output captured and capped;
- when running as root (namespaces available): a fresh network namespace (no interfaces up,
  so connect() fails), a private mount namespace where the file system is read-only except
  the working directory and fresh, private /tmp and /dev/shm, and a dedicated unprivileged
  uid per concurrent slot, so the code can neither signal nor read (/proc/PID/environ) the
  trainer's processes and RLIMIT_NPROC really caps a fork bomb;
- without root: the limits above plus a prelude that disables socket creation in the child
  (weaker; stated in `SandboxResult.isolation`).
"""
from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
SANDBOX_BASE = "/var/tmp/hdc-sandbox"  # root-owned; work dirs and the interpreter mount live here
PYTHON_MOUNT = SANDBOX_BASE + "/python"
SANDBOX_UID_BASE = 61000  # slot i runs as uid/gid SANDBOX_UID_BASE + i (no passwd entry needed)

_PRELUDE_NO_NET = (
    "import socket as _s\n"
    "def _deny(*a, **k):\n    raise OSError('network disabled in the sandbox')\n"
    "_s.socket = _deny; _s.create_connection = _deny; _s.socketpair = _deny\n"
    "del _s, _deny\n")


@dataclass
class SandboxLimits:
    cpu_time_s: int = 5
    wall_time_s: float = 10.0
    memory_bytes: int = 512 * 2**20
    max_processes: int = 32
    max_file_bytes: int = 16 * 2**20
    max_open_files: int = 64
    max_output_bytes: int = 64 * 1024


@dataclass
class SandboxResult:
    ok: bool  # exited 0 within the limits
    reason: str  # 'ok', 'timeout', 'exit code N', 'killed by SIGNAL', 'error: ...'
    exit_code: int | None
    stdout: str
    stderr: str
    duration_s: float
    isolation: str  # 'namespaces+uid' or 'rlimits-only'


def namespaces_available() -> bool:
    return os.geteuid() == 0 and sys.platform == "linux"


_slots = threading.Semaphore(64)
_slot_lock = threading.Lock()
_free_slots = list(range(64))


def run_python(source: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run `source` as a Python program inside the sandbox."""
    limits = limits or SandboxLimits()
    isolated = namespaces_available()
    with _slots:
        with _slot_lock:
            slot = _free_slots.pop()
        try:
            return _run(source, limits, isolated, SANDBOX_UID_BASE + slot)
        finally:
            with _slot_lock:
                _free_slots.append(slot)


def _run(source: str, limits: SandboxLimits, isolated: bool, uid: int) -> SandboxResult:
    # not under /tmp: the child mounts a fresh private /tmp over it
    base = SANDBOX_BASE if isolated else None
    if base:
        os.makedirs(base, mode=0o711, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="run-", dir=base)
    try:
        prog = os.path.join(workdir, "main.py")
        with open(prog, "w", encoding="utf-8") as fh:
            fh.write(source if isolated else _PRELUDE_NO_NET + source)
        if isolated:
            os.chown(workdir, uid, uid)
            os.chown(prog, uid, uid)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "PYTHONDONTWRITEBYTECODE": "1"}
        python = sys.executable
        if isolated:  # the interpreter may sit under a private home: bind it where the uid can reach it
            os.makedirs(PYTHON_MOUNT, mode=0o755, exist_ok=True)
            real = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
            python = os.path.join(PYTHON_MOUNT, os.path.relpath(real, sys.base_prefix))
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(
                [python, "-I", "-S", prog], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,
                preexec_fn=lambda: _child_setup(limits, isolated, uid, workdir), start_new_session=True)
        except (OSError, subprocess.SubprocessError) as e:
            return SandboxResult(False, f"error: could not start sandbox: {e}", None, "", "", 0.0,
                                 "namespaces+uid" if isolated else "rlimits-only")
        out = _CappedReader(proc.stdout, limits.max_output_bytes)
        err = _CappedReader(proc.stderr, limits.max_output_bytes)
        reason = None
        try:
            proc.wait(timeout=limits.wall_time_s)
        except subprocess.TimeoutExpired:
            reason = "timeout"
        _kill_all(proc, uid if isolated else None)
        proc.wait()
        out.join()
        err.join()
        duration = time.monotonic() - t0
        code = proc.returncode
        if reason is None:
            if code == 0:
                reason = "ok"
            elif code < 0:
                sig = signal.Signals(-code).name
                reason = "cpu time limit" if -code == signal.SIGXCPU else f"killed by {sig}"
            else:
                reason = f"exit code {code}"
        return SandboxResult(reason == "ok", reason, code, out.text(), err.text(), duration,
                             "namespaces+uid" if isolated else "rlimits-only")
    finally:
        _rmtree(workdir)


def _child_setup(limits: SandboxLimits, isolated: bool, uid: int, workdir: str) -> None:
    """Runs in the forked child before exec: namespaces, mounts, limits, then drop privileges."""
    if isolated:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNS | CLONE_NEWNET) != 0:
            os._exit(120)
        def mount(src, target, fstype, flags, data=None):
            if libc.mount(src, target.encode(), fstype, flags, data) != 0:
                os._exit(121)
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        # fresh private scratch areas, then the whole tree read-only except the work dir
        for scratch in ("/tmp", "/dev/shm"):
            if os.path.isdir(scratch):
                mount(b"tmpfs", scratch, b"tmpfs", MS_NOSUID | MS_NODEV, b"size=16m,mode=1777")
        mount(workdir.encode(), workdir, None, MS_BIND)
        mount(sys.base_prefix.encode(), PYTHON_MOUNT, None, MS_BIND | MS_REC)
        for target in _mount_points():
            if target == workdir or target.startswith(("/proc", "/sys", "/dev", "/tmp")):
                continue
            libc.mount(None, target.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
        mount(None, workdir, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
        os.chdir(workdir)  # the cwd set before this still points into the read-only mount
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_time_s, limits.cpu_time_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.max_open_files, limits.max_open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if isolated:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))
    else:
        used = _count_own_processes()
        resource.setrlimit(resource.RLIMIT_NPROC, (used + limits.max_processes,) * 2)


def _mount_points() -> list[str]:
    try:
        with open("/proc/self/mountinfo") as fh:
            return sorted({line.split()[4] for line in fh}, key=len)
    except OSError:
        return ["/"]


def _count_own_processes() -> int:
    uid, n = os.getuid(), 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


def _kill_all(proc: subprocess.Popen, uid: int | None) -> None:
    """Kill the child's process group, and every process of the sandbox uid (escaped forks)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uid is None:
        return
    for _ in range(50):  # a fork bomb may still be spawning: sweep until none is left
        pids = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    if os.stat(f"/proc/{pid}").st_uid == uid:
                        pids.append(int(pid))
                except OSError:
                    pass
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


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
    import shutil

    shutil.rmtree(path, ignore_errors=True)
