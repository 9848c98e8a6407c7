"""Data-parallel runs (`hdc train --nproc 2`) under kill -9: exact resume, and a rank killed
mid-step ends the job within distributed.timeout_s (no hang) with a message naming the rank
and site (launcher) or the collective and group (a survivor on its own); --resume continues."""
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from trainer.logs import read_metrics


from trainer.selfcheck import runs as ks
from trainer.selfcheck.runs import kill_after_step_5_and_resume, tiny_run_assets as assets

TIMEOUT_S = 10.0


def _rank_pids(launcher: subprocess.Popen) -> dict[int, int]:
    found = {}
    for pid in ks.descendants(launcher.pid):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"HDC_LOCAL=1" in env:
            rank = [e for e in env if e.startswith(b"RANK=")]
            if rank:
                found[int(rank[0][5:])] = pid
    return found


@pytest.mark.multiproc
def test_kill9_of_a_two_process_run_then_resume_is_exact(tmp_path):
    out = kill_after_step_5_and_resume(tmp_path, nproc=2)
    names = {p.name for p in (out / "checkpoints" / "step-00000005").iterdir()}
    assert {"rng.pt", "rng.rank1.pt", "optimizer.pt"} <= names  # every rank's RNG state


@pytest.mark.multiproc
def test_a_rank_killed_mid_step_ends_the_job_in_time_and_resume_continues(tmp_path):
    recipe = ks.write_recipe(tmp_path / "recipe.yaml", assets(), max_steps=8, save_steps=3, timeout_s=TIMEOUT_S)
    out = tmp_path / "run"
    job = ks.start_train(recipe, out, nproc=2)
    assert ks.wait_for(lambda: ks.latest_pointer(out) == "checkpoints/step-00000003", job, timeout_s=240)
    ranks = _rank_pids(job)
    assert sorted(ranks) == [0, 1]
    os.kill(ranks[1], 9)
    killed = time.monotonic()
    try:
        rc = job.wait(timeout=TIMEOUT_S + 5)
    except subprocess.TimeoutExpired:
        ks.kill_tree(job)
        pytest.fail("the job hung after a rank was killed")
    latency_s = time.monotonic() - killed
    assert rc != 0 and latency_s < TIMEOUT_S
    assert ks.wait_for(lambda: not Path(f"/proc/{ranks[0]}").exists() or ks._state(ranks[0]) == "Z", timeout_s=5)
    log = (tmp_path / "run.log").read_text()
    assert "hdc launch: rank 1 (local) exited with code -9; stopping the other ranks" in log
    print(f"launcher: job ended {latency_s:.2f} s after rank 1 was killed")

    done = ks.run_train(recipe, out, nproc=2, resume=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "final model:" in done.stdout
    steps = [row["step"] for row in read_metrics(out / "metrics.jsonl") if "loss" in row]
    assert steps[-1] == 8 and 4 in steps  # resumed after the step-3 checkpoint and ran to the end
    assert ks.redone_steps_agree(out)


@pytest.mark.multiproc
def test_a_survivor_without_the_launcher_fails_its_collective_within_the_timeout(tmp_path):
    """What a rank on another machine sees: its peer is gone; its own collective fails in time."""
    import yaml

    from hdc.cli import main  # noqa: F401  (the command the ranks run)
    from hdc.topology import load_topology
    from trainer.cli import local_topology
    from trainer.distributed.launch import free_port, local_env

    recipe = ks.write_recipe(tmp_path / "recipe.yaml", assets(), max_steps=200, save_steps=2, timeout_s=TIMEOUT_S)
    topo_path = tmp_path / "topology.yaml"
    topo_path.write_text(yaml.safe_dump(local_topology(2)))
    topo, port = load_topology(str(topo_path)), free_port()
    out = tmp_path / "run"
    argv = ks.train_argv(recipe, out, sets=(f"distributed.topology={topo_path}",))
    procs = []
    for r in range(2):
        env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo",
               **local_env(str(topo_path), topo, r, port, TIMEOUT_S, None)}
        procs.append(subprocess.Popen(argv, cwd=ks.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    try:
        assert ks.wait_for(lambda: ks.latest_pointer(out) == "checkpoints/step-00000002", procs[0], timeout_s=240)
        procs[1].kill()
        killed = time.monotonic()
        text, _ = procs[0].communicate(timeout=TIMEOUT_S + 10)
        latency_s = time.monotonic() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert procs[0].returncode != 0
    assert latency_s < TIMEOUT_S + 2.0, latency_s
    # a dead peer shows either as the timeout running out or at once as a reset connection
    assert re.search(r"hdc: .* failed after [0-9.]+ s", text), text[-3000:]
    assert "over the world" in text or "group [" in text, text[-3000:]
    print(f"survivor: exited {latency_s:.2f} s after its peer was killed:",
          [line for line in text.splitlines() if "failed after" in line][-1])
