"""What a TRL / torchrun / Hugging Face user reaches for first: resumed logs, chat templates,
hub ids, list-index overrides, preset sweeps."""
import json
import shutil
from pathlib import Path

import pytest

from hdc.errors import UserError
from trainer.config import GRPOConfig
from trainer.data import load_jsonl
from trainer.grpo import GRPOTrainer
from trainer.logs import read_metrics, truncate_logs
from trainer.selfcheck.assets import tiny_assets

ROOT = Path(__file__).resolve().parents[1]


def tiny_trainer(out: Path, model=None, **kw) -> GRPOTrainer:
    assets = tiny_assets()
    args = GRPOConfig(**{**dict(output_dir=str(out), learning_rate=1e-4, num_generations=4,
                                per_device_train_batch_size=8, max_completion_length=16, max_steps=2,
                                save_steps=1, seed=0), **kw})
    return GRPOTrainer(model=str(model or assets.sft_model), reward_funcs=["accuracy", "format"], args=args,
                       train_dataset=load_jsonl(str(assets.data / "train.jsonl")))


def test_resume_truncates_the_logs_to_the_checkpoint_step(tmp_path):
    # a run killed after logging step 3 but before checkpointing it: its newest checkpoint is step 2
    tiny_trainer(tmp_path, max_steps=3, save_steps=2, log_completions=True).train(progress=False)
    shutil.rmtree(tmp_path / "checkpoints" / "step-00000003")
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    tiny_trainer(tmp_path, max_steps=3, save_steps=2, log_completions=True).train(resume_from_checkpoint=True,
                                                                                  progress=False)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    steps = [json.loads(line)["step"] for line in open(tmp_path / "completions.jsonl")]
    assert sorted(set(steps)) == [1, 2, 3] and len(steps) == 3 * 4  # 4 rows per step, none twice


def test_truncate_logs_keeps_rows_up_to_the_step_and_drops_a_cut_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "eval/x": 1}\n{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    assert truncate_logs(tmp_path, 2) == {"metrics.jsonl": 2}
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1]


def test_a_tokenizer_without_a_chat_template_trains_with_the_default_auto(tmp_path):
    from transformers import AutoTokenizer

    base = tmp_path / "base"
    shutil.copytree(tiny_assets().sft_model, base)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    for extra in base.glob("chat_template.*"):
        extra.unlink()
    assert AutoTokenizer.from_pretrained(base).chat_template is None  # a base model's tokenizer
    from trainer.data import format_prompt

    trainer = tiny_trainer(tmp_path / "run", model=base, max_steps=1)
    assert trainer.data.use_chat_template == "auto"
    assert format_prompt(trainer.tokenizer, "2+2=", use_chat_template="auto") == "2+2="  # plain text
    result = trainer.train(progress=False)
    assert result["loss"] == result["loss"] and (tmp_path / "run" / "final").is_dir()
    with pytest.raises(UserError, match="data.use_chat_template: true, but the tokenizer has no chat template"):
        format_prompt(trainer.tokenizer, "1+1=", use_chat_template=True)


def test_a_hub_id_gets_a_one_line_message_to_download_it(tmp_path):
    import subprocess
    import sys

    assets = tiny_assets()
    done = subprocess.run([sys.executable, "-m", "trainer.cli", "train", "recipes/tiny-arith.yaml", "--out",
                           str(tmp_path / "out"), "--set", "model.name_or_path=Qwen/Qwen2-0.5B-Instruct",
                           "--set", f"data.train_file={assets.data / 'train.jsonl'}"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "model.name_or_path: no such directory 'Qwen/Qwen2-0.5B-Instruct'; if it is a Hugging Face Hub id" \
        in done.stderr
    assert "huggingface-cli download Qwen/Qwen2-0.5B-Instruct --local-dir" in done.stderr
    assert not (tmp_path / "out").exists()


def test_set_takes_list_indices_in_a_recipe(tmp_path):
    from trainer.config import load_recipe

    recipe = load_recipe("recipes/tiny-arith.yaml", ["rewards[0].weight=0.5", "rewards[1].params.x=1"])
    assert recipe.rewards[0].weight == 0.5 and recipe.rewards[1].params == {"x": 1}
    with pytest.raises(UserError, match=r"--set rewards\[7\].weight: index \[7\] out of range for rewards"):
        load_recipe("recipes/tiny-arith.yaml", ["rewards[7].weight=0.5"])


def test_a_sweep_over_workload_presets(tmp_path):
    import csv

    import yaml

    from experiments.sweep import load_grid, run_sweep

    grid = {"base": {"topology": "nemotron-2dc", "strategy": "hierarchical"},
            "grid": {"workload": ["llama-3-8b", "llama-3-70b"], "topology.wan[0].rtt": ["2ms", "20ms"]},
            "evaluate": "alpha_beta"}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    assert run_sweep(load_grid(str(path)), str(tmp_path / "r.csv"), progress=False) == 4
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    times = {(r["workload"], r["topology.wan[0].rtt"]): float(r["alpha_beta_sync_s"]) for r in rows}
    assert set(times) == {(w, rtt) for w in ("llama-3-8b", "llama-3-70b") for rtt in ("2ms", "20ms")}
    assert times["llama-3-70b", "2ms"] > times["llama-3-8b", "2ms"]  # each preset was evaluated


def tiny_sets(max_steps: int = 2) -> list[str]:
    assets = tiny_assets()
    sets = [f"model.name_or_path={assets.sft_model}", f"data.train_file={assets.data / 'train.jsonl'}",
            "data.eval_file=null", f"grpo.max_steps={max_steps}", "grpo.per_device_train_batch_size=8", "grpo.gradient_accumulation_steps=1",
            "grpo.max_completion_length=16", "grpo.num_generations=4", "grpo.torch_num_threads=1"]
    return [x for s in sets for x in ("--set", s)]


@pytest.mark.multiproc
def test_two_processes_show_one_progress_bar_from_rank_0(tmp_path):
    import os
    import re
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "hdc.cli", "train", "recipes/tiny-arith.yaml", "--nproc", "2",
                           "--out", str(tmp_path), *tiny_sets()], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    pieces = [p for p in re.split(r"[\r\n]", done.stdout) if p.strip()]
    bars = [p for p in pieces if "%|" in p]  # tqdm's bars, each redraw
    assert bars and all(p.startswith("[0 local] ") and "step" in p for p in bars), bars  # not transformers' bars
    last = bars[-1]
    assert "2/2" in last and "reward=" in last and "s_per_step=" in last and re.search(r"\d\d:\d\d<\d\d:\d\d", last)
    quiet = [p for p in pieces if p.startswith("[1 ")]
    assert not any("%|" in p or "Loading weights" in p for p in quiet), quiet


def test_sft_resume_equals_an_uninterrupted_sft(tmp_path):
    from safetensors.torch import load_file

    from trainer.sft import SFTConfig, sft

    assets = tiny_assets()
    data = str(assets.data / "sft.jsonl")
    cfg = SFTConfig(max_steps=6, save_steps=3, per_device_train_batch_size=8, save_total_limit=None)
    sft(str(assets.model), data, str(tmp_path / "straight"), cfg)
    sft(str(assets.model), data, str(tmp_path / "stopped"), cfg)
    # as if stopped after step 4: the newest checkpoint is step 3, the weights on disk are not final
    shutil.rmtree(tmp_path / "stopped" / "checkpoints" / "step-00000006")
    (tmp_path / "stopped" / "model.safetensors").unlink()
    out = sft(str(assets.model), data, str(tmp_path / "stopped"), cfg, resume=True)
    assert out["first_step"] == 4
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "stopped" / "model.safetensors")
    assert set(a) == set(b) and all(__import__("torch").equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="--resume: no checkpoint under"):
        sft(str(assets.model), data, str(tmp_path / "fresh"), cfg, resume=True)


def test_report_to_wandb_logs_offline_without_a_network(tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(UserError, match=r"grpo.report_to: wandb is not installed: pip install -e '.\[wandb\]'"):
            GRPOConfig(report_to=["wandb"]).validate("grpo")
        pytest.skip("wandb is not installed (the optional wandb extra)")
    for name in ("WANDB_MODE", "WANDB_SILENT"):  # unset now, restored after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    tiny_trainer(tmp_path, max_steps=2, report_to=["jsonl", "wandb"]).train(progress=False)
    [run] = list((tmp_path / "wandb").glob("offline-run-*"))  # offline by default: nothing was sent
    [records] = list(run.glob("run-*.wandb"))  # what `wandb sync` uploads later (protobuf records)
    data = records.read_bytes()
    assert all(name.encode() in data for name in ("rewards/total/mean", "time/step_s", "kl"))
    assert not (tmp_path / "tb").exists()  # tensorboard was not asked for


def test_plot_draws_a_line_per_combination_of_the_other_inputs_in_km(tmp_path):
    import pandas as pd

    from experiments.plot import apply_where, plot_csv, plot_lines

    rows = [{"config_id": f"c{d}{n}{s}", "topology.wan[0].distance": f"{d}km", "topology.wan[0].links": n,
             "strategy.name": s, "scaling_efficiency": d / 1000 + n / 100 + (s == "b"), "step_time_s": 0.25}
            for d in (2000, 500, 1000) for n in (10, 20) for s in ("a", "b")]
    path = tmp_path / "r.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    df = pd.read_csv(path)
    lines, x_label, y_label = plot_lines(df, "topology.wan[0].distance", "scaling_efficiency", "strategy.name")
    assert x_label == "topology.wan[0].distance (km)" and y_label == "scaling_efficiency"
    assert sorted(label for label, _, _ in lines) == ["a, topology.wan[0].links=10", "a, topology.wan[0].links=20",
                                                     "b, topology.wan[0].links=10", "b, topology.wan[0].links=20"]
    for label, xs, ys in lines:  # each line: one value of every other input, x sorted, in km
        assert xs == [500.0, 1000.0, 2000.0] and ys == sorted(ys)
    only = apply_where(df, ["topology.wan[0].links=20.0"], str(path))
    lines, _, _ = plot_lines(only, "topology.wan[0].distance", "step_time_s", "strategy.name")
    assert [label for label, _, _ in lines] == ["a", "b"] and lines[0][2] == [250.0] * 3  # seconds shown in ms
    assert plot_csv(str(path), "topology.wan[0].distance", "scaling_efficiency", None, str(tmp_path / "p.png"),
                    where=["strategy.name=a"]) and (tmp_path / "p.png").stat().st_size > 0
    with pytest.raises(UserError, match=r"--where topology.wan\[0\].links=30: no row left has it \(values of "
                                        r"topology.wan\[0\].links: 10, 20\)"):
        apply_where(df, ["topology.wan[0].links=30"], str(path))
