"""The real executor: runs any hdc Plan over torch.distributed process groups.

Semantics equal `hdc.reference` step for step (shard convention `hdc.plan.split`: member i
of a group — i its index in the step's group tuple — owns shard i). The buffer is one flat
tensor or a list of tensors (gradient buckets) laid end to end; plan regions index into
their concatenation.

Scheduling. Every step is issued asynchronously (async_op=True) as soon as its deps have
completed and its trigger (e.g. 'bucket:3', fired by the caller) has fired, so independent
steps — chunk c+1's reduce-scatter inside a site while chunk c crosses the WAN — are in
flight together. Collectives on one process group must be issued in the same order on every
rank, whatever order their deps complete in; so each group issues its steps in one fixed
order derived from the plan alone: (dependency depth, step id), a topological order.

Uneven shards. Gloo needs equal-size tensors for reduce-scatter/all-gather: a region of n
elements over p members is padded to p × ceil(n/p) (ring RS/AG bytes on the wire, plus at
most p-1 padding elements), and each member's shard is copied in and out.

Gloo. Both reduce-scatter and all-gather are one all_to_all_single of padded shards, which
sends the same (p-1)·ceil(n/p) elements per rank as a ring: the reduce-scatter sums what it
receives locally (gloo's own reduce_scatter Work does not report completion until wait(), so
it could not be pipelined, torch 2.13); the all-gather sends its own shard to every member
(gloo's all_gather of 64 MiB between 2 local ranks took 126-130 ms against 32-55 ms for the
all-to-all, docs/emulation.md). NCCL runs its native reduce_scatter and all_gather.

Scratch memory. Padded inputs and receive buffers come from a per-executor pool keyed by
(dtype, device, numel): a step takes what it needs when issued and gives it back when it
completes, so steps in flight together never share a buffer, and a repeated plan reuses the
same memory every call. Fresh allocations cost more than the copy itself at 16-64 MiB
(glibc maps and unmaps blocks over 32 MiB, and first touch page-faults at 1.1-1.8 GB/s on
the project's VM against 9-12 GB/s for reused memory). `scratch_bytes` says what a pool holds.

Errors. Every wait has a deadline (`timeout_s`, also the process groups' timeout); a failed
or stalled collective raises RuntimeError naming the step, its group and the sites it spans.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.distributed as dist

from hdc.plan import Plan, Step, split
from trainer.distributed.buffers import Buffers, FlatBuffers, ScratchPool
from trainer.distributed.codec import decode, encode_into, payload_bytes
from trainer.distributed.groups import ProcessGroups

_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

@dataclass
class _Op:
    step: Step
    group: tuple[int, ...]
    region: tuple[int, int]
    work: object = None
    finalize: Optional[Callable[[], None]] = None
    scratch: list = field(default_factory=list)  # pooled tensors this op holds until it completes
    issued_at: float = 0.0
    start_s: float = 0.0
    waited: bool = False  # a blocking wait() returned: complete even if is_completed() lags


@dataclass
class _Run:
    buf: FlatBuffers
    t0: float
    train_step: int
    pending: dict = field(default_factory=dict)     # step id -> Step not yet done
    queues: dict = field(default_factory=dict)      # group key -> [Step] in issue order
    trivial: list = field(default_factory=list)     # steps this rank has no part in
    done: set = field(default_factory=set)
    fired: set = field(default_factory=set)
    inflight: list = field(default_factory=list)
    spans: list = field(default_factory=list)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    low = text.lower()
    if any(k in low for k in ("connection closed", "connection reset", "broken pipe", "econnreset",
                              "epipe", "socket closed", "connection refused", "read error")):
        return f"peer unreachable ({text[:300]})"
    if "timed out" in low or "timeout" in low:
        return f"timed out ({text[:200]})"
    return text[:300]


class PlanExecutor:
    """Runs `plan` on this rank's buffer over torch.distributed.

    One-shot:      spans = ex.run(buffer, train_step=0, phase=None)
    Incremental:   ex.start(buckets, train_step); ex.fire('bucket:0'); ...; spans = ex.wait()

    `phase` restricts to 'grad' or 'param' steps; steps with period > 1 run only when
    train_step % period == 0. Spans (one per step this rank takes part in) use the
    simulator's timeline schema: rank, kind, label, step_id, op, tier, phase, chunk, group,
    start_s, end_s (perf_counter seconds from the call's t0) and bytes (the group's region).
    Creating an executor creates the plan's process groups: a COLLECTIVE call, every rank
    must build executors for the same plans in the same order. Executors that run at the same
    time (a parameter sync overlapping the next steps' gradient syncs) take different `stream`s.
    """

    def __init__(self, plan: Plan, groups: ProcessGroups, *, timeout_s: Optional[float] = None,
                 kind: str = "dp_comm", poll_s: float = 50e-6, stream: str = ""):
        self.plan, self.groups, self.stream = plan, groups, stream
        self.rank = groups.rank
        self.timeout_s = groups.timeout_s if timeout_s is None else float(timeout_s)
        self.kind, self.poll_s = kind, poll_s
        groups.for_plan(plan, stream)
        self._level = plan.depths()
        self._mine: dict[int, Optional[tuple[tuple[int, ...], tuple[int, int]]]] = {}
        for s in plan.steps:
            self._mine[s.id] = None
            for g, r in zip(s.groups, s.regions):
                if self.rank in g and len(g) > 1 and r[1] > 0:
                    self._mine[s.id] = (g, r)
        self._run: Optional[_Run] = None
        self._pool = ScratchPool()

    # ------------------------------------------------------------------ public
    @property
    def running(self) -> bool:
        return self._run is not None

    @property
    def scratch_bytes(self) -> int:
        """Scratch memory this executor keeps for reuse between calls (its pool)."""
        return self._pool.size_bytes

    def triggers(self, train_step: int = 0, phase: Optional[str] = None) -> list[str]:
        """Triggers of the steps a call with these arguments would run, in plan order."""
        out = []
        for s in self._selected(train_step, phase):
            if s.trigger and s.trigger not in out:
                out.append(s.trigger)
        return out

    def run(self, buffers: Buffers, train_step: int = 0, phase: Optional[str] = None) -> list[dict]:
        """Run the selected steps to completion, firing every trigger at once."""
        self.start(buffers, train_step, phase)
        for t in self.triggers(train_step, phase):
            self.fire(t)
        return self.wait()

    def start(self, buffers: Buffers, train_step: int = 0, phase: Optional[str] = None,
              t0: Optional[float] = None) -> None:
        if self._run is not None:
            raise RuntimeError("hdc: executor already running; call wait() first")
        buf = FlatBuffers(buffers)
        if buf.numel != self.plan.numel:
            raise ValueError(f"hdc: buffers hold {buf.numel} elements, the plan needs {self.plan.numel}")
        run = _Run(buf=buf, t0=time.perf_counter() if t0 is None else t0, train_step=train_step)
        for s in self._selected(train_step, phase):
            run.pending[s.id] = s
            mine = self._mine[s.id]
            if mine is None:
                run.trivial.append(s)
            else:
                run.queues.setdefault(tuple(sorted(mine[0])), []).append(s)
        for q in run.queues.values():
            q.sort(key=lambda s: (self._level[s.id], s.id))
        run.done = {s.id for s in self.plan.steps if s.id not in run.pending}
        self._run = run
        self._guarded_progress()

    def fire(self, trigger: str) -> None:
        """An external event happened (e.g. 'bucket:3' is ready): start what waited for it."""
        if self._run is None:
            raise RuntimeError("hdc: fire() before start()")
        self._run.fired.add(trigger)
        self._guarded_progress()

    def poll(self) -> None:
        """Make progress without blocking (complete finished steps, issue ready ones)."""
        if self._run is not None:
            self._guarded_progress()

    def _guarded_progress(self) -> None:
        try:
            self._progress()
        except BaseException:
            self._run = None  # a failed collective ends this call; the caller sees the error
            raise

    def wait(self) -> list[dict]:
        """Block until every selected step completed; return the spans of this call."""
        run = self._run
        if run is None:
            raise RuntimeError("hdc: wait() before start()")
        sleep = self.poll_s
        try:
            while True:
                if self._progress():
                    sleep = self.poll_s
                if not run.pending:
                    break
                if not run.inflight:
                    waiting = sorted({s.trigger for s in run.pending.values() if s.trigger
                                      and s.trigger not in run.fired})
                    raise RuntimeError(f"hdc: plan steps {sorted(run.pending)} wait for triggers "
                                       f"{waiting} that were never fired")
                oldest = min(run.inflight, key=lambda o: o.issued_at)
                left = oldest.issued_at + self.timeout_s - time.perf_counter()
                if left <= 0:
                    raise self._error(oldest, None)
                if len(run.inflight) == 1 and oldest.work is not None and self.groups.backend == "gloo":
                    try:  # block on the only outstanding collective, with its deadline
                        oldest.work.wait(timeout=_td(left))
                        oldest.waited = True
                    except Exception as e:  # our own deadline, or the collective failed
                        if oldest.work.is_completed():
                            raise self._error(oldest, e) from e
                else:
                    time.sleep(sleep)
                    sleep = min(sleep * 2, 1e-3)
        except BaseException:
            self._run = None
            raise
        self._run = None
        return run.spans

    # ------------------------------------------------------------------ internals
    def _selected(self, train_step: int, phase: Optional[str]) -> list[Step]:
        return [s for s in self.plan.steps if s.active(train_step) and (phase is None or s.phase == phase)]

    def _ready(self, s: Step) -> bool:
        run = self._run
        return all(d in run.done for d in s.deps) and (s.trigger is None or s.trigger in run.fired)

    def _progress(self) -> bool:
        run, moved = self._run, False
        while True:
            changed = False
            for op in list(run.inflight):
                if op.work is None or op.waited or op.work.is_completed():
                    self._complete(op)
                    changed = True
            for s in list(run.trivial):
                if self._ready(s):
                    run.trivial.remove(s)
                    run.done.add(s.id)
                    del run.pending[s.id]
                    changed = True
            for q in run.queues.values():
                while q and self._ready(q[0]):
                    self._issue(q.pop(0))
                    changed = True
            if not changed:
                return moved
            moved = True

    def _complete(self, op: _Op) -> None:
        run = self._run
        if op.work is not None:
            try:
                op.work.wait()
            except Exception as e:
                raise self._error(op, e) from e
        if op.finalize is not None:
            op.finalize()
        self._pool.give(op.scratch)  # after finalize: it reads the receive buffers
        op.scratch = []
        end = time.perf_counter()
        run.inflight.remove(op)
        run.done.add(op.step.id)
        del run.pending[op.step.id]
        s = op.step
        run.spans.append({
            "rank": self.rank, "kind": self.kind, "label": s.label, "step_id": s.id, "op": s.op,
            "tier": s.tier, "phase": s.phase, "chunk": s.chunk, "group": list(op.group),
            "start_s": op.start_s, "end_s": end - run.t0,
            "bytes": op.region[1] * self.plan.wire_bytes(op.step),
        })

    def _error(self, op: _Op, exc: Optional[BaseException]) -> RuntimeError:
        s = op.step
        elapsed = time.perf_counter() - op.issued_at
        reason = (_reason(exc) if exc is not None else
                  f"no progress within the {self.timeout_s:g} s timeout (a peer died or a link stalled)")
        took = f"{elapsed:.1f}" if elapsed < 10 else f"{elapsed:.0f}"
        return RuntimeError(f"hdc: collective '{s.label or s.op}' (step {s.id}, group {list(op.group)}: "
                            f"{self.groups.describe(op.group)}) failed after {took} s: {reason}")

    def _issue(self, s: Step) -> None:
        run = self._run
        group, (off, n) = self._mine[s.id]
        op = _Op(step=s, group=group, region=(off, n))
        op.issued_at = time.perf_counter()
        op.start_s = op.issued_at - run.t0
        try:
            if self.plan.lossy(s):
                op.work, op.finalize = self._launch_lossy(s.op, group, off, n, run.buf, op.scratch, self.plan.wire(s))
            else:
                op.work, op.finalize = self._launch(s.op, group, off, n, run.buf, op.scratch)
        except Exception as e:
            raise self._error(op, e) from e
        run.inflight.append(op)

    def _launch(self, kind: str, group: tuple[int, ...], off: int, n: int, buf: FlatBuffers,
                scratch: list):
        """Issue one step; returns (work, finalize). Pooled tensors it uses go in `scratch`:
        the op holds them until it completes (a failed call drops them with the run)."""
        pg = self.groups.get(group, self.stream)
        gloo = self.groups.backend == "gloo"

        def take(numel: int) -> torch.Tensor:
            t = self._pool.take(numel, buf.dtype, buf.device)
            scratch.append(t)
            return t

        view = buf.view(off, n)
        if kind in ("all_reduce", "broadcast", "send_recv"):
            t = view if view is not None else buf.read(off, n, out=take(n))
            fin = None if view is not None else (lambda: buf.write(off, t))
            if kind == "all_reduce":
                return dist.all_reduce(t, group=pg, async_op=True), fin
            # send_recv (src, dst) is a broadcast from src in the pair's group: the same bytes,
            # and unlike gloo's isend/irecv its Work reports completion while in flight
            return dist.broadcast(t, src=group[0], group=pg, async_op=True), fin

        p = len(group)
        shards = split(n, p)
        m = -(-n // p)
        order = self.groups.members(group)          # process-group rank order
        pos = [order.index(r) for r in group]       # member j sits at pos[j] in the pg
        me = group.index(self.rank)
        so, sn = shards[me]
        aligned = n == p * m and pos == list(range(p))
        if kind == "reduce_scatter":
            if aligned and view is not None:
                inp = view
            else:  # member j's shard at pg position pos[j], zero-padded to m
                inp = take(p * m)
                for j, (jo, jn) in enumerate(shards):
                    buf.read(off + jo, jn, out=inp[pos[j] * m: pos[j] * m + jn])
                    inp[pos[j] * m + jn: (pos[j] + 1) * m].zero_()
            dest = buf.view(off + so, sn)
            if gloo:
                # an all-to-all of the padded shards sends the same bytes per rank as a ring
                # reduce-scatter ((p-1)·ceil(n/p)); the sum over senders is done locally
                recv = take(p * m)
                work = dist.all_to_all_single(recv, inp, group=pg, async_op=True)
                parts = recv.view(p, m)[:, :sn]

                def total() -> None:
                    if dest is not None:
                        torch.sum(parts, 0, out=dest)
                    else:
                        buf.write(off + so, torch.sum(parts, 0, out=take(sn)))
                return work, total
            out = take(m)
            work = _reduce_scatter(out, inp, group=pg, async_op=True)
            return work, lambda: buf.write(off + so, out[:sn])
        if kind == "all_gather":
            mine = buf.view(off + so, sn)
            if sn == m and not gloo and mine is not None:
                inp = mine
            else:  # gloo: my shard once per member (each pg rank receives its own copy)
                copies = p if gloo else 1
                inp = take(copies * m)
                for k in range(copies):
                    buf.read(off + so, sn, out=inp[k * m: k * m + sn])
                    inp[k * m + sn: (k + 1) * m].zero_()
            # shard of pg rank k at out[k*m : k*m + its size]; aligned: that is the region itself
            direct = gloo and aligned and view is not None
            out = view if direct else take(p * m)
            if gloo:
                work = dist.all_to_all_single(out, inp, group=pg, async_op=True)
            else:
                work = _all_gather(out, inp, group=pg, async_op=True)

            def unpack() -> None:
                if direct:
                    return
                if aligned:
                    buf.write(off, out)
                    return
                for j, (jo, jn) in enumerate(shards):
                    if j != me:
                        buf.write(off + jo, out[pos[j] * m: pos[j] * m + jn])
            return work, unpack
        raise ValueError(kind)  # pragma: no cover - Step validates op


    def _launch_lossy(self, kind: str, group: tuple[int, ...], off: int, n: int, buf: FlatBuffers,
                      scratch: list, wire: str):
        """A step on a lossy wire (hdc.wire): encoded shards as bytes through one all-to-all
        (reduce-scatter: each owner decodes and sums in fp32 in member order) or one all-gather
        (every member, the owner too, writes the decoded shards)."""
        pg = self.groups.get(group, self.stream)
        p, shards = len(group), split(n, len(group))
        m = -(-n // p)
        width = payload_bytes(m, wire)
        order = self.groups.members(group)
        pos = [order.index(r) for r in group]
        me = group.index(self.rank)
        so, sn = shards[me]

        def take(numel: int, dtype=torch.uint8) -> torch.Tensor:
            t = self._pool.take(numel, dtype, buf.device)
            scratch.append(t)
            return t

        def slot(t: torch.Tensor, k: int) -> torch.Tensor:
            return t[k * width:(k + 1) * width]

        if kind == "reduce_scatter":
            inp = take(p * width)
            for j, (jo, jn) in enumerate(shards):
                encode_into(buf.read(off + jo, jn, out=take(jn, buf.dtype)).float(), wire, slot(inp, pos[j]), m)
            recv = take(p * width)
            work = dist.all_to_all_single(recv, inp, group=pg, async_op=True)

            def total() -> None:
                acc = decode(slot(recv, pos[0]), wire, sn, m)
                for j in range(1, p):  # member order, fp32: as hdc.reference does
                    acc.add_(decode(slot(recv, pos[j]), wire, sn, m))
                buf.write(off + so, acc.to(buf.dtype))
            return work, total
        if kind == "all_gather":
            gloo = self.groups.backend == "gloo"
            copies = p if gloo else 1  # gloo: an all-to-all, my shard once per member
            inp = take(copies * width)
            encode_into(buf.read(off + so, sn, out=take(sn, buf.dtype)).float(), wire, slot(inp, 0), m)
            for k in range(1, copies):
                slot(inp, k).copy_(slot(inp, 0))
            out = take(p * width)
            work = (dist.all_to_all_single(out, inp, group=pg, async_op=True) if gloo else
                    _all_gather(out, inp, group=pg, async_op=True))

            def unpack() -> None:
                for j, (jo, jn) in enumerate(shards):
                    buf.write(off + jo, decode(slot(out, pos[j]), wire, jn, m).to(buf.dtype))
            return work, unpack
        raise ValueError(f"hdc: {kind} on a lossy wire ({wire}): plan it as reduce_scatter + all_gather")


def _td(seconds: float):
    import datetime

    return datetime.timedelta(seconds=max(seconds, 1e-3))
