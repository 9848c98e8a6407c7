"""One sandbox run's cgroup (trainer/sandbox.py): a memory limit without swap and a process limit for
everything the run starts, joined between fork and exec, emptied and removed afterwards.

cgroup v2 where /sys/fs/cgroup is the unified hierarchy with the memory and pids controllers
(the groups live under /sys/fs/cgroup/hdc-sandbox/, with both controllers enabled for it), else
v1 (/sys/fs/cgroup/memory/hdc-sandbox/ and /sys/fs/cgroup/pids/hdc-sandbox/).
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

CGROUP_NAME = "hdc-sandbox"


class Cgroup:
    """One run's cgroup: v2 (unified /sys/fs/cgroup with memory and pids) or v1 (memory and pids
    hierarchies): memory limit, no swap, process limit; join, kill all, remove."""

    ROOT = Path("/sys/fs/cgroup")

    def __init__(self, dirs: list[Path], v2: bool):
        self.dirs, self.v2 = dirs, v2

    @classmethod
    def create(cls, name: str, memory_bytes: int, max_pids: int) -> "Cgroup":
        controllers = cls.ROOT / "cgroup.controllers"
        if controllers.is_file() and {"memory", "pids"} <= set(controllers.read_text().split()):
            parent = cls.ROOT / CGROUP_NAME
            parent.mkdir(exist_ok=True)
            for d in (cls.ROOT, parent):  # enable the controllers for the children
                (d / "cgroup.subtree_control").write_text("+memory +pids")
            group = cls([parent / name], v2=True)
            group._make()
            group._write("memory.max", memory_bytes)
            group._write("memory.swap.max", 0, optional=True)
            group._write("pids.max", max_pids)
            return group
        mem, pids = cls.ROOT / "memory", cls.ROOT / "pids"
        if not ((mem / "cgroup.procs").is_file() and (pids / "cgroup.procs").is_file()):
            raise OSError(f"{cls.ROOT} has neither cgroup v2 with memory+pids nor v1 memory and pids hierarchies")
        group = cls([mem / CGROUP_NAME / name, pids / CGROUP_NAME / name], v2=False)
        group._make()
        group._write("memory.limit_in_bytes", memory_bytes)
        group._write("memory.memsw.limit_in_bytes", memory_bytes, optional=True)  # no swap beyond the limit
        group._write("pids.max", max_pids)
        return group

    def _make(self) -> None:
        for d in self.dirs:
            self._sweep(d.parent)
            if d.exists():  # a leftover of a killed trainer with this pid and slot
                self._kill_in(d)
                d.rmdir()
            d.mkdir(parents=True)

    @classmethod
    def _sweep(cls, parent: Path) -> None:
        """Remove the groups of trainers that died without removing theirs (named PID-SLOT)."""
        if not parent.is_dir():
            return
        for d in parent.iterdir():
            pid = d.name.split("-")[0]
            if d.is_dir() and pid.isdigit() and not Path(f"/proc/{pid}").exists():
                cls._kill_in(d)
                try:
                    d.rmdir()
                except OSError:
                    pass

    def _write(self, name: str, value: int, optional: bool = False) -> None:
        for d in self.dirs:
            if (d / name).exists():
                (d / name).write_text(str(value))
                return
        if not optional:
            raise OSError(f"no {name} in {', '.join(map(str, self.dirs))}")

    def join(self) -> None:
        """The calling process (and so everything it starts) enters the cgroup: before exec, in the child."""
        for d in self.dirs:
            fd = os.open(d / "cgroup.procs", os.O_WRONLY)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)

    def oom_kills(self) -> int:
        for d in self.dirs:
            for name in ("memory.events", "memory.oom_control"):
                try:
                    for line in (d / name).read_text().splitlines():
                        key, _, value = line.partition(" ")
                        if key == "oom_kill":
                            return int(value)
                except OSError:
                    continue
        return 0

    @staticmethod
    def _kill_in(d: Path) -> None:
        kill = d / "cgroup.kill"
        if kill.exists():
            kill.write_text("1")
        for _ in range(200):  # a fork bomb may still be spawning: sweep until none is left
            try:
                pids = [int(p) for p in (d / "cgroup.procs").read_text().split()]
            except OSError:
                return
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.005)

    def kill_all(self) -> None:
        for d in self.dirs:
            self._kill_in(d)

    def remove(self) -> None:
        self.kill_all()
        for d in self.dirs:
            for _ in range(200):  # rmdir fails while the last killed processes are being reaped
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.005)
