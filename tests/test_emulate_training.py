"""A data-parallel GRPO run on emulated sites (2 sites x 2 ranks, hierarchical) survives a dead WAN:
the cross-site link is cut mid-run, every rank exits within distributed.timeout_s (+ margin)
with a message naming the collective's group/sites, and `--resume` after the link is restored
continues from the last checkpoint.

Marked `emulation`; skipped with the reason when not root or without ip/TUN. Prefix `hdctest`;
everything under it is torn down afterwards, pass or fail.
Run: .venv/bin/python -m pytest -m emulation tests/test_emulate_training.py -q -s
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hdc.topology import load_topology
from trainer.logs import read_metrics
from experiments.emulate import launch, netns
from experiments.emulate.spec import build_spec, with_ranks_per_site, with_wan, write_topology

from trainer.selfcheck import runs as ks

PREFIX = "hdctest"
TIMEOUT_S = 8.0
MARGIN_S = 30.0

pytestmark = [
    pytest.mark.emulation,
    pytest.mark.multiproc,
    pytest.mark.skipif(os.geteuid() != 0, reason="emulation tests need root (network namespaces, TUN, tc)"),
    pytest.mark.skipif(shutil.which("ip") is None or shutil.which("tc") is None,
                       reason="emulation tests need iproute2 (ip, tc)"),
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="emulation tests need /dev/net/tun"),
]


def topology(one_way_s=0.005, bw=125e6, ranks=2):
    return with_ranks_per_site(with_wan(load_topology("tiny-2site"), one_way_s=one_way_s, bandwidth_Bps=bw), ranks)


def up(topo):
    spec = build_spec(topo, prefix=PREFIX, mode="delayline")
    spec.extra = {"shaped": True, "sysctl": {}}
    netns.up(spec, shape_bandwidth=True)
    spec.extra["topology_file"] = write_topology(topo, os.path.join(spec.state_dir, "topology.yaml"))
    return spec


@pytest.fixture
def emu():
    netns.down(PREFIX, quiet=True)  # leftovers of an earlier crash
    try:
        yield up
    finally:
        netns.down(PREFIX, quiet=True)
        assert netns.list_netns(PREFIX) == []


def start_train(spec, recipe: Path, out: Path, logs: Path, resume=False) -> list[subprocess.Popen]:
    """`hdc train` once per rank inside its site; rank r's output in logs/rank<r>.log."""
    logs.mkdir(parents=True, exist_ok=True)
    argv = ks.train_argv(recipe, out, resume=resume)
    wrap = ["sh", "-c", f'exec "$@" >>{logs}/rank$RANK.log 2>&1', "sh", *argv]
    return launch.start_ranks(spec, wrap, spec.extra["topology_file"], extra_env={"PYTHONUNBUFFERED": "1"})


def logged_steps(out: Path) -> list[int]:
    return [row["step"] for row in read_metrics(out / "metrics.jsonl") if "loss" in row]


def test_wan_cut_mid_run_ends_every_rank_in_time_then_resume_continues(emu, tmp_path):
    from trainer.selfcheck.runs import tiny_run_assets as assets

    spec = emu(topology())
    recipe = ks.write_recipe(tmp_path / "recipe.yaml", assets(), max_steps=6, save_steps=2, save_total_limit=None,
                             timeout_s=TIMEOUT_S, strategy="hierarchical")
    out, logs = tmp_path / "run", tmp_path / "logs"
    procs = start_train(spec, recipe, out, logs)
    try:
        assert ks.wait_for(lambda: ks.latest_pointer(out) is not None, procs[0], timeout_s=150), \
            (logs / "rank0.log").read_text()[-3000:]
        time.sleep(0.3)  # into the next step (generation + backward + its bucket syncs)
        assert all(p.poll() is None for p in procs), "the run was still going when the link was cut"
        site_b = spec.sites[1]
        subprocess.run(["ip", "-n", site_b.netns, "link", "set", site_b.dev, "down"], check=True)  # the WAN dies
        cut = time.monotonic()
        exit_s = {}
        while len(exit_s) < len(procs) and time.monotonic() - cut < TIMEOUT_S + MARGIN_S:
            for r, p in enumerate(procs):
                if r not in exit_s and p.poll() is not None:
                    exit_s[r] = time.monotonic() - cut
            time.sleep(0.05)
    finally:
        hung = [r for r, p in enumerate(procs) if p.poll() is None]
        launch.stop(procs)
    assert not hung, f"ranks {hung} still running {TIMEOUT_S + MARGIN_S:g} s after the WAN was cut"
    texts = {r: (logs / f"rank{r}.log").read_text() for r in range(len(procs))}
    last_fail = []
    for r, p in enumerate(procs):
        assert p.returncode != 0, f"rank {r} exited 0 after the cut:\n{texts[r][-2000:]}"
        fail = [line for line in texts[r].splitlines() if "hdc: " in line and "failed after" in line]
        assert fail, f"rank {r}: no collective failure message:\n{texts[r][-3000:]}"
        assert "group [" in fail[-1] or "over the world" in fail[-1], fail[-1]
        assert "site-" in fail[-1], fail[-1]  # the message names the sites of its group
        last_fail.append(fail[-1])
        print(f"rank {r} exited {exit_s[r]:.2f} s after the cut (rc {p.returncode}): {fail[-1].strip()[:240]}")
    # the first cross-site collective after the cut is the one that fails: a bucket of the gradient
    # sync (the executor names the group and its sites) or, if the cut lands in generation/scoring,
    # the trainer's metric all-reduce over the world
    for t in texts.values():
        for line in t.splitlines():
            if "hdc: collective" in line and "failed after" in line:
                assert "site-" in line, line  # e.g. "group [1, 3]: site-a<->site-b"
    # a rank whose cross-site exchange had already finished stalls next on an in-site collective
    # (its site peer is the one stuck on the WAN), so only some ranks see the WAN group itself
    assert any("site-a" in line and "site-b" in line for line in last_fail), last_fail
    assert max(exit_s.values()) < TIMEOUT_S + MARGIN_S

    ckpt = ks.latest_pointer(out)
    last = int(ckpt.rsplit("-", 1)[1])
    assert 2 <= last < 6, ckpt
    # the link comes back (prefix route restored with it); resume from the last checkpoint
    subprocess.run(["ip", "-n", site_b.netns, "link", "set", site_b.dev, "up"], check=True)
    before = ks.step_losses(out)  # steps logged before the cut, the ones after the checkpoint included
    procs = start_train(spec, recipe, out, logs, resume=True)
    try:
        rc = launch.wait_ranks(procs, timeout_s=180)
    finally:
        launch.stop(procs)
    assert rc == 0, (logs / "rank0.log").read_text()[-3000:]
    assert "final model:" in (logs / "rank0.log").read_text()
    steps = logged_steps(out)
    assert steps == list(range(1, 7)), (ckpt, steps)  # each step once: resume cut the log back to the checkpoint
    after = ks.step_losses(out)
    assert all(after[k] == v for k, v in before.items()), "steps logged before the cut and redone after it agree"
    resumed = steps[last:]
    print(f"resumed from {ckpt}: logged steps {resumed}")
