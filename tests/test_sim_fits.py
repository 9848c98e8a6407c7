"""Memory that can say no: `fits` in results and sweep rows, a one-line warning, --require-fit."""
import csv
import json

import yaml

from hdc.cli import main

TOO_BIG = ["simulate", "--topology", "nemotron-2dc", "--workload", "nemotron-4-340b", "--strategy", "hierarchical",
           "--no-baseline"]


def test_simulate_warns_in_one_line_and_marks_fits(capsys):
    assert main(TOO_BIG + ["--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["fits"] is False
    assert err.count("\n") == 1 and err.startswith("warning: does not fit: 99.8 GiB per GPU")


def test_require_fit_exits_2_with_one_line(capsys):
    assert main(TOO_BIG + ["--require-fit"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip().count("\n") == 0 and "--require-fit: does not fit" in err
    ok = TOO_BIG[:6] + ["distributed_optimizer", "--no-baseline", "--require-fit"]
    assert main(ok) == 0 and "fits                 yes" in capsys.readouterr()[0]


def test_sweep_has_a_fits_column_and_require_fit(tmp_path, capsys):
    # the tiny model needs ~30 MB per rank: 1 GB fits, 10 MB does not
    grid = {"base": {"topology": "tiny-2site", "strategy": "hierarchical",
                     "workload": {"model": "tiny-qwen2", "parallel": {"dp": 4, "global_batch_size": 4}}},
            "grid": {"topology.gpu.memory": ["10MB", "1GB"]}, "evaluate": "simulate"}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid))
    out = tmp_path / "r.csv"
    assert main(["sweep", "--grid", str(path), "--out", str(out)]) == 0
    rows = {r["topology.gpu.memory"]: r["fits"] for r in csv.DictReader(open(out))}
    assert rows == {"10MB": "False", "1GB": "True"}
    assert "warning: 1 of 2 config(s) do not fit" in capsys.readouterr()[1]
    assert main(["sweep", "--grid", str(path), "--out", str(tmp_path / "r2.csv"), "--require-fit"]) == 2
    assert "--require-fit: 1 of 2 config(s) do not fit" in capsys.readouterr()[1]
