"""simulate-rl against hdc's own trainer (experiments/rl_check.py): the stored measurements are
re-predicted within the issue's bar, the fit inverts the cost model, and the probe + run + store
path works end to end on this machine (slow)."""
import json
import math
from dataclasses import replace

import pytest

from experiments import rl_check
from simulator.model import SimConstants
from simulator.rl import forward_pass_s


def test_the_stored_trainer_runs_are_re_predicted_within_the_bar():
    found = rl_check.load_measurements()
    names = {m["name"] for m in found}
    assert len(found) >= 6, names
    assert any(m["config"]["procs"] == 1 and m["config"]["backend"] == "hf" for m in found)
    assert {m["config"]["strategy"] for m in found if m["config"]["procs"] == 4} >= {"hierarchical", "local_sgd"}
    assert any(m["config"]["backend"] == "vllm" for m in found)
    result = rl_check.compare(found)
    med = result["median_abs_error"]
    for phase, err in med.items():
        assert err <= (0.10 if phase == "step" else 0.15), (phase, err, rl_check.format_table(result))
    assert {"generate", "update", "sync", "step"} <= set(med)
    for m in found:  # each record says what the machine was doing (the load includes the previous config's run)
        assert len(m["machine"]["loadavg_before"]) == 3 and m["machine"]["cpus"] >= 1, m["name"]


def test_the_fit_inverts_the_cost_model():
    """Probe timings made by the cost model itself with known constants give those constants back."""
    model = rl_check.model_spec({"num_attention_heads": 4, "num_hidden_layers": 4, "hidden_size": 256,
                                 "intermediate_size": 704, "vocab_size": 285})
    peak, fwd_eff, copy = 5e10, 0.8, 4e9
    c = SimConstants(compute_efficiency=1.0, activation_bytes=4, hbm_bandwidth_Bps=copy)
    gpu = rl_check.cpu_gpu(peak)
    overhead, per_seq = 0.01, 2.0 * model.matmul_params / peak / 0.4
    raw = {"backend": "hf", "copy_Bps": copy, "score_s": 1e-5,
           "forward": [[s, t, forward_pass_s(model, t, s, 1, gpu, replace(c, compute_efficiency=fwd_eff))]
                       for s, t in rl_check.FORWARD_SHAPES],
           "train": [[s, t, rl_check._train_pass_s(model, s, t, peak, c)] for s, t in rl_check.FORWARD_SHAPES],
           "decode": []}
    for rows in rl_check.DECODE_ROWS:
        prompts, k = rows // 8, rl_check.DECODE_TOKENS
        prefill = forward_pass_s(model, 20, prompts, 1, gpu, replace(c, compute_efficiency=fwd_eff))
        raw["decode"].append({"prompts": prompts, "prompt_tokens": 20, "lengths": [k] * rows,
                              "seconds": prefill + k * (overhead + per_seq * rows)})
    f = rl_check.fit(raw, model)
    assert f["peak_flops"] == pytest.approx(peak, rel=1e-6)
    assert f["forward_compute_efficiency"] == pytest.approx(fwd_eff, rel=1e-6)
    assert f["decode_iteration_overhead_s"] == pytest.approx(overhead, rel=1e-6)
    assert f["decode_compute_efficiency"] == pytest.approx(0.4, rel=1e-6)


@pytest.mark.slow
def test_probe_run_and_prediction_on_this_machine(tmp_path):
    """benchmarks/rl_trainer_check.py's path for one 1-process config, 3 steps: a real probe, a real
    `hdc train`, a stored measurement that re-predicts (no accuracy bar: the machine may be busy)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(rl_check.__file__).resolve().parents[1] / "benchmarks"))
    import rl_trainer_check as bench
    from trainer.selfcheck.assets import tiny_assets

    assets = tiny_assets(sft_steps=1, small=True, num_train=100)
    m = bench.run_one("1proc-hf", assets, tmp_path, steps=3)
    m = json.loads(json.dumps(m))  # what a stored file holds
    assert [s["step"] for s in m["steps"]] == [1, 2, 3]
    pred, meas = rl_check.predict(m), rl_check.measured(m)
    assert all(math.isfinite(v) and v >= 0 for v in pred.values()), pred
    assert pred["generate"] > 0 and pred["update"] > 0 and meas["generate"] > 0
    assert m["fit"]["peak_flops"] > 1e8
