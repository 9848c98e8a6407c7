"""`hdc validate` end to end on one small config (root, ~1 min): calibration probe, real
executor under emulation, prediction and bound side by side in the CSV, nothing left behind."""
from __future__ import annotations

import csv
import os
import shutil

import pytest

from experiments.emulate import netns

pytestmark = [
    pytest.mark.emulation,
    pytest.mark.skipif(os.geteuid() != 0, reason="emulation tests need root (network namespaces, TUN, tc)"),
    pytest.mark.skipif(shutil.which("ip") is None or not os.path.exists("/dev/net/tun"),
                       reason="emulation tests need iproute2 and /dev/net/tun"),
]


def test_validate_writes_measured_predicted_and_bound(tmp_path, capsys):
    from tests.test_emulate_netns import _cli

    out = tmp_path / "v.csv"
    try:
        rc = _cli(["validate", "--topology", "tiny-2site", "--one-way-delays", "5ms", "--bandwidths", "1Gbps",
                   "--strategies", "flat_ring,hierarchical", "--sizes", "1MiB", "--repeats", "2",
                   "--prefix", "hdctest", "--out", str(out), "--timeout-s", "240"])
    finally:
        netns.down("hdctest", quiet=True)
    assert rc == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["strategy"] for r in rows] == ["flat_ring", "hierarchical"]
    for r in rows:
        meas, pred, bound = (float(r[k]) for k in ("measured_median_ms", "predicted_ms", "alpha_beta_bound_ms"))
        assert meas > 0 and pred > 0 and bound > 0
        assert meas >= 0.8 * bound  # gloo's ring pipelining can beat the synchronous-round bound a little
        assert float(r["probe_wan_alpha_ms"]) >= 5.0  # at least the configured one-way delay
        assert float(r["calib_call_overhead_ms"]) >= 0 and 0.25 <= float(r["calib_wan_efficiency"]) <= 1
        # the delay line's CPU was read while the WAN was saturated: a capacity of a few hundred MB/s
        assert 20 <= float(r["calib_forwarder_MBps"]) <= 5000
    # the simulator's ranking: hierarchical sends half the bytes and half the WAN rounds
    by = {r["strategy"]: float(r["measured_median_ms"]) for r in rows}
    assert by["hierarchical"] < by["flat_ring"]
    assert "median |error|" in capsys.readouterr().out
    assert netns.list_netns("hdctest") == []
