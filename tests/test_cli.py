"""The core CLI: every user mistake is one line on stderr and exit status 2."""
import json
import subprocess
import sys

import pytest

from hdc.cli import main


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_topology_show_validate_list(capsys):
    rc, out, _ = run(capsys, "topology", "show", "nemotron-2dc")
    assert rc == 0 and "3072 × H100" in out and "ASSUMPTION" in out
    rc, out, _ = run(capsys, "topology", "validate", "tiny-2site")
    assert rc == 0 and out.startswith("ok: tiny-2site")
    rc, out, _ = run(capsys, "topology", "list")
    assert rc == 0 and "three-site" in out
    rc, out, _ = run(capsys, "topology", "show", "tiny-3site", "--json")
    assert json.loads(out)["sites"][2]["name"] == "site-c"


def test_plan_prints_steps_and_json(capsys):
    rc, out, _ = run(capsys, "plan", "--topology", "tiny-2site", "--strategy", "hierarchical", "--size", "4MiB")
    assert rc == 0 and "reduce_scatter" in out and "alpha-beta critical path" in out
    rc, out, _ = run(capsys, "plan", "--topology", "nemotron-2dc", "--strategy", "chunked", "--chunks", "2",
                     "--size", "1GiB", "--workload", "nemotron-4-340b", "--json")
    plan = json.loads(out)
    assert len(plan["steps"]) == 6 and plan["alpha_beta_total_s"] > 0
    assert plan["steps"][1]["tier"] == "wan"


@pytest.mark.parametrize("argv, message", [
    (["topology", "validate", "no-such-topology"], "no such file and no such preset"),
    (["plan", "--topology", "tiny-2site", "--strategy", "hierarchical", "--size", "lots"], "--size: expected a size"),
    (["plan", "--topology", "tiny-2site", "--strategy", "teleport", "--size", "1MiB"], "invalid choice: 'teleport'"),
    (["plan", "--topology", "tiny-2site", "--strategy", "chunked", "--chunks", "0", "--size", "1MiB"], "strategy.chunks: must be an integer >= 1 and <= 4096, got 0"),
    (["plan", "--topology", "tiny-2site", "--strategy", "hierarchical", "--every", "2", "--size", "1MiB"],
     "strategy.every: not a knob of strategy hierarchical"),
    (["plan", "--topology", "tiny-2site", "--strategy", "compressed", "--wire", "fp4", "--size", "1MiB"],
     "strategy.wire: must be one of int8, bf16, got 'fp4'"),
    (["plan", "--topology", "tiny-2site", "--strategy", "compressed", "--scope", "site", "--size", "1MiB"],
     "strategy.scope: must be one of wan, all, got 'site'"),
    (["plan", "--topology", "tiny-2site", "--strategy", "streaming_local_sgd", "--fragments", "0", "--size", "1MiB"],
     "strategy.fragments: must be an integer >= 1"),
    (["plan", "--topology", "tiny-2site", "--strategy", "streaming_local_sgd", "--every", "8", "--fragments", "2",
      "--delay", "4", "--size", "1MiB"], "strategy.delay: must be < every / fragments = 8 / 2"),
    (["plan", "--topology", "tiny-2site", "--strategy", "streaming_local_sgd", "--alpha", "1.5", "--size", "1MiB"],
     "strategy.alpha: must be a number >= 0 and <= 1, got 1.5"),
    (["plan", "--topology", "tiny-2site", "--strategy", "local_sgd", "--outer-lr", "nan", "--size", "1MiB"],
     "strategy.outer_lr: must be a number"),
    (["plan", "--topology", "tiny-2site", "--strategy", "flat_ring", "--size", "1B"], "--size: must be at least one element"),
    (["plan", "--topology", "tiny-2site", "--strategy", "flat_ring"], "required: --size"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_mistakes_exit_2_with_one_line(capsys, argv, message):
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_topology_file_names_the_field(tmp_path, capsys):
    bad = tmp_path / "t.yaml"
    bad.write_text("name: x\nsites:\n  - {name: a, nodes: -3, gpus_per_node: 8,\n"
                   "     intra_node: {latency: 1us, bandwidth: 1GB/s}, intra_pod: {latency: 1us, bandwidth: 1GB/s}}\n")
    rc, _, err = run(capsys, "topology", "validate", str(bad))
    assert rc == 2 and "sites[0].nodes: must be an integer > 0, got -3" in err


def test_installed_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "hdc.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "topology" in out.stdout


def test_a_large_topology_says_what_it_is_doing(tmp_path, capsys):
    """From 65,536 GPUs on, hdc plan (and hdc simulate) print a line before the long work and its time after."""
    path = tmp_path / "big.yaml"
    path.write_text("name: big\nsite_defaults: {nodes: 4096, gpus_per_node: 8, intra_node: {latency: 3us, "
                    "bandwidth: 450GB/s}, intra_pod: {latency: 5us, bandwidth: 400Gbps}}\n"
                    "sites: [{name: a}, {name: b}]\nwan: [{sites: [a, b], rtt: 10ms, bandwidth: 400Gbps}]\n")
    assert main(["plan", "--topology", str(path), "--strategy", "hierarchical", "--size", "64MiB"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("plan: 65,536 GPUs in 2 site(s): building the plan") and err[1].startswith("plan: done in")
