"""`hdc launch`: the torchrun command per site, validation, and local runs that fail fast."""
import io
import sys
import time

import pytest

from hdc.cli import _Parser
from hdc.errors import UserError
from trainer.distributed.cli import register


def _hdc(*argv):
    p = _Parser(prog="hdc")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    register(sub)
    args = p.parse_args(list(argv))
    return args.handler(args)


def test_torchrun_command_per_site():
    from trainer.distributed.launch import torchrun_command

    argv, env = torchrun_command("tiny-2site", "site-b", 0, "10.0.0.1:29500", ["hdc", "train", "r.yaml"])
    assert argv[1:4] == ["-m", "torch.distributed.run", "--nnodes=2"]
    assert "--node-rank=1" in argv and "--nproc-per-node=2" in argv and "--master-port=29500" in argv
    assert argv[-4:] == ["--no-python", "hdc", "train", "r.yaml"]
    assert env["HDC_SITE"] == "site-b" and env["HDC_SITE_INDEX"] == "1" and env["HDC_TOPOLOGY"] == "tiny-2site"


def test_dry_run_prints_command(capsys):
    from trainer.distributed import launch

    out = io.StringIO()
    assert launch.launch_site("tiny-2site", "site-a", 0, "h:1", ["python", "t.py"], dry_run=True, out=out) == 0
    assert "HDC_SITE=site-a" in out.getvalue() and "--node-rank=0" in out.getvalue()


@pytest.mark.parametrize("argv,field", [
    (["--site", "nowhere", "--node-rank", "0", "--master", "h:1"], "unknown site"),
    (["--site", "site-a", "--node-rank", "1", "--master", "h:1"], "--node-rank"),
    (["--site", "site-a", "--node-rank", "0", "--nodes-per-site", "3", "--master", "h:1"], "--nodes-per-site"),
    (["--site", "site-a", "--node-rank", "0", "--master", "h"], "--master"),
    (["--site", "site-a"], "required"),
    (["--local", "--site", "site-a"], "--site"),
])
def test_launch_validates_flags(argv, field):
    with pytest.raises(UserError, match=field):
        _hdc("launch", "--topology", "tiny-2site", *argv, "--", "true")


def test_local_launch_fails_fast_when_a_rank_fails(capfd):
    code = ("import os, sys, time; r = int(os.environ['RANK']); print('site', os.environ['HDC_SITE'], flush=True);"
            "time.sleep(0 if r == 1 else 60); sys.exit(3 if r == 1 else 0)")
    t0 = time.monotonic()
    assert _hdc("launch", "--local", "--topology", "tiny-2site", "--", sys.executable, "-c", code) == 3
    assert time.monotonic() - t0 < 30
    out = capfd.readouterr().out
    assert "[1 site-a] site site-a" in out  # (the others may be stopped before they print)
    assert "rank 1 (site-a) exited with code 3" in out


@pytest.mark.multiproc
def test_local_launch_runs_the_executor_checks(capfd):
    """End to end: 4 processes from `hdc launch --local`, init_from_env, every strategy case."""
    rc = _hdc("launch", "--local", "--topology", "tiny-2site", "--timeout-s", "60", "--",
              sys.executable, "-m", "trainer.selfcheck.executor")
    out = capfd.readouterr().out
    assert rc == 0, out
    assert "all ranks ok" in out and "backend gloo, world 4" in out
