"""The report: every referenced file exists, no figure is empty, the reproduction table holds
the simulator's numbers for the same inputs, and a failed build leaves nothing behind."""
import csv
import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from experiments.report import build_report
from hdc.errors import UserError

SMALL = {"distances_km": [1000.0], "wan_links": [20], "chunks": [8], "local_sgd_every": [8],
         "models": ["nemotron-4-340b"], "jobs": 2}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    cfg = tmp / "report.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    index = build_report(str(tmp / "out"), str(cfg), progress=False)
    return os.path.dirname(index)


def test_every_link_and_image_exists_and_no_figure_is_empty(report):
    import matplotlib.image as mpimg

    page = open(os.path.join(report, "index.html"), encoding="utf-8").read()
    refs = set(re.findall(r'(?:src|href)="([^"#:]+)"', page))
    assert {"breakdown.png", "distance.png", "gantt.png", "repro.csv", "published.png",
            "published_table.csv"} <= refs
    for ref in refs:
        assert os.path.isfile(os.path.join(report, ref)), ref
    for png in (r for r in refs if r.endswith(".png")):
        pixels = mpimg.imread(os.path.join(report, png))
        assert pixels.std() > 0.05, f"{png} looks blank"
        data = os.path.join(report, png[:-4] + ".csv")
        assert os.path.isfile(data) and sum(1 for _ in open(data)) > 1, f"{png} has no data rows"


def test_the_report_folder_carries_its_marker_and_may_be_rewritten(report):
    from experiments.report import REPORT_MARKER, check_report_out

    assert os.path.isfile(os.path.join(report, REPORT_MARKER))
    check_report_out(report)  # a later `hdc report --out` into it is allowed


def test_reproduction_numbers_come_from_the_simulator(report):
    from hdc.strategies import strategy_from_dict
    from simulator import SimConstants, simulate

    summary = json.load(open(os.path.join(report, "summary.json")))
    r = simulate(summary["topology"], summary["workload"], strategy_from_dict(summary["strategy"]),
                 SimConstants(compute_efficiency=summary["compute_efficiency"]))
    assert summary["predicted"]["repro/2site"]["mfu"] == pytest.approx(r.mfu, rel=1e-9)
    rows = {row[0]: row for row in csv.reader(open(os.path.join(report, "repro.csv")))}
    assert f"{r.mfu:.1%}" in rows["two-site MFU"][2]
    assert f"{r.scaling_efficiency:.1%}" in rows["scaling efficiency"][2]
    assert rows["single-site MFU"][2].startswith("51.0%")


def test_bad_inputs_leave_no_output(tmp_path):
    with pytest.raises(UserError, match="--runs"):
        build_report(str(tmp_path / "out"), runs=(str(tmp_path),), progress=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text("distances_km: [-5]\n")
    with pytest.raises(UserError, match=r"distances_km\[0\]: must be a number > 0"):
        build_report(str(tmp_path / "out"), str(bad), progress=False)
    assert not (tmp_path / "out").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".report-")]


@pytest.mark.browser
def test_chromium_renders_the_report_without_missing_images(report, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    url = "file://" + os.path.join(report, "index.html")
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert "<h1>hdc report" in dom
    assert "data-broken-images" not in dom, "an image failed to load"
    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,3000", url],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 50_000
    shutil.copy(shot, os.path.join(os.path.dirname(report), "screenshot.png"))


def test_section_6_sets_the_shipped_measurements_beside_todays_model(report):
    html = open(os.path.join(report, "index.html"), encoding="utf-8").read()
    section = html[html.index('id="measured"'):html.index('id="runs"')]
    assert "experiments/emulate/measured/" in section and "138 cases: median |error|" in section
    with open(os.path.join(report, "measured_table.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 138  # 126 of flat ring / hierarchical / chunked, 12 of the compressed validation
    assert sum(r["strategy"] == "compressed" for r in rows) == 6


def test_section_8_sets_the_placements_side_by_side_from_simulate_rl(report):
    from experiments.report_rl import CASES, _place, _topology, STRATEGY, WORKLOAD
    from simulator.rl import simulate_rl

    page = open(os.path.join(report, "index.html"), encoding="utf-8").read()
    assert 'id="rl"' in page and "rl_bandwidth.png" in page and "rl_gantt.png" in page
    with open(os.path.join(report, "rl_placements.csv"), newline="") as fh:
        rows = {r["placement"]: r for r in csv.DictReader(fh)}
    assert set(rows) == set(CASES)
    for name, spec in CASES.items():
        r = simulate_rl(_topology(100, 1000), WORKLOAD, _place(spec), STRATEGY)
        assert float(rows[name]["step (s)"]) == pytest.approx(r.step_time_s, rel=1e-9)
    with open(os.path.join(report, "rl_published.csv"), newline="") as fh:
        published = list(csv.DictReader(fh))
    assert len(published) >= 2 and all(float(r["published step (s)"]) > 0 for r in published)


def test_the_rl_section_re_predicts_the_stored_trainer_runs(report):
    from experiments import rl_check

    with open(os.path.join(report, "rl_trainer_check.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    stored = rl_check.load_measurements()
    assert [r["config"] for r in rows[:-1]] == [m["name"] for m in stored]
    assert rows[-1]["config"] == "median |error|"
    want = rl_check.compare(stored)["median_abs_error"]["step"]
    assert rows[-1]["step (s) measured / predicted"] == f"{want:.1%}"
