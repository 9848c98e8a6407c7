"""Run a Python function in a world of local processes (gloo on loopback): for tests,
benchmarks and quick experiments. `hdc launch --local` is the same for shell commands.

    results = spawn_world(fn, world_size=4, args=(...))   # fn(rank, world_size, *args) -> picklable

Every process initializes torch.distributed through a file:// store in a fresh temporary
directory (no port to pick). The first failing rank fails the whole world at once: the
others are terminated and its traceback is raised here.
"""
from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import queue as queue_mod
import shutil
import tempfile
import time
import traceback
from typing import Any, Callable, Optional, Sequence


def _entry(fn: Callable, rank: int, world_size: int, store: str, backend: str, timeout_s: float,
           args: Sequence[Any], env: dict, q) -> None:
    os.environ.update(env)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank)})
    status, payload = "ok", None
    try:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
        payload = fn(rank, world_size, *args)
    except BaseException:  # report, then leave without tearing down groups that may hang
        status, payload = "err", traceback.format_exc()
    q.put((rank, status, payload))
    q.close()
    q.join_thread()
    os._exit(0)


def spawn_world(fn: Callable, world_size: int, args: Sequence[Any] = (), *, backend: str = "gloo",
                timeout_s: float = 120.0, collective_timeout_s: float = 60.0,
                env: Optional[dict] = None, may_die: Sequence[int] = (),
                start_method: str = "forkserver") -> list[Any]:
    """fn(rank, world_size, *args) in `world_size` spawned processes; returns results by rank.

    fn must be importable (a module-level function). Raises RuntimeError with the first
    failing rank's traceback, or after `timeout_s` without all results. Ranks in `may_die`
    may exit without reporting (fault-injection tests); their result is None.
    The default start method, forkserver, imports torch once per calling process (a
    server that forks the ranks), so later worlds start in well under a second.
    """
    ctx = mp.get_context(start_method)
    if start_method == "forkserver":
        # torch._dynamo: torch.optim imports it on the first optimizer (seconds per rank)
        ctx.set_forkserver_preload(["torch", "torch.distributed", "torch._dynamo", "numpy", "trainer.distributed.executor",
                                    "trainer.distributed.grad_sync", "trainer.selfcheck.executor"])
    tmp = tempfile.mkdtemp(prefix="hdc-world-")
    store = os.path.join(tmp, "store")
    q = ctx.Queue()
    procs = [ctx.Process(target=_entry, args=(fn, r, world_size, store, backend, collective_timeout_s,
                                                tuple(args), dict(env or {}), q), daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(results) < world_size:
            gone = [r for r in may_die if r not in results and procs[r].exitcode is not None]
            for r in gone:
                results[r] = None
            if len(results) == world_size:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(range(world_size)) - set(results))
                raise RuntimeError(f"hdc: local world timed out after {timeout_s:g} s; ranks {missing} did not finish")
            try:
                rank, status, payload = q.get(timeout=min(left, 0.5))
            except queue_mod.Empty:
                dead = [r for r, p in enumerate(procs)
                        if p.exitcode not in (None, 0) and r not in results and r not in may_die]
                if dead:
                    raise RuntimeError(f"hdc: rank {dead[0]} died (exit code {procs[dead[0]].exitcode}) "
                                       f"without reporting") from None
                continue
            if status == "err":
                raise RuntimeError(f"hdc: rank {rank} failed:\n{payload}")
            results[rank] = payload
    finally:
        for p in procs:
            p.join(timeout=2)
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=2)
        shutil.rmtree(tmp, ignore_errors=True)
    return [results[r] for r in range(world_size)]
