"""A dead or silent peer ends the run with a clear error on the survivors, within the timeout."""
import pytest


def _run(mode, timeout_s):
    from trainer.selfcheck.executor import fault_case
    from trainer.distributed.local import spawn_world

    out = spawn_world(fault_case, 4, args=(mode, 3, timeout_s), collective_timeout_s=timeout_s,
                      may_die=[3], timeout_s=60)
    return [r for r in out if r is not None and not r.get("victim")]


@pytest.mark.multiproc
def test_killed_peer_gives_clear_error_within_timeout():
    survivors = _run("kill", 5.0)
    assert len(survivors) == 3
    for r in survivors:
        assert r["error"] and r["error"].startswith("hdc: collective '"), r
        assert "site-" in r["error"] and "group [" in r["error"], r
        assert r["elapsed_s"] < 5.0 + 2.0, r


@pytest.mark.multiproc
def test_stalled_peer_times_out_with_clear_error():
    survivors = _run("stall", 3.0)
    for r in survivors:
        assert r["error"] and "failed after" in r["error"], r
        assert 2.5 < r["elapsed_s"] < 3.0 + 3.0, r
    assert any("site-a<->site-b" in r["error"] for r in survivors)
