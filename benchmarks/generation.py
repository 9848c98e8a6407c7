"""Rollout tokens/s: transformers `generate` (the HF backend) against vLLM colocated, and the weight sync.

Both backends sample the same prompts (temperature 1, no EOS stop in practice: the models are
random, so nearly every completion runs to --new-tokens) from the same locally built model:
the 3.3M-parameter tiny model and a ~50M-parameter one (hidden 768, 7 layers, head_dim 64).
Weight sync = `update_weights(model)` on the colocated engine (in place, in process), and the
server mode's extra cost of turning the state dict into a safetensors payload.

    .venv-vllm/bin/python benchmarks/generation.py [--prompts 16] [--n 8] [--new-tokens 32] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process (as colocate uses it)
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

import torch  # noqa: E402

MODELS = {  # name -> TinyModelConfig overrides
    "tiny-3M": {},
    "mid-50M": {"hidden_size": 768, "num_hidden_layers": 7, "num_attention_heads": 12, "intermediate_size": 2048},
}


def build(root: Path, name: str) -> Path:
    from trainer.tiny import TinyModelConfig, make_tiny_model

    return make_tiny_model(root / name, TinyModelConfig(**MODELS[name]))


def prompts_for(tok, count: int) -> list[str]:
    from trainer.arith import sample_problems

    rows = sample_problems(count, max_operand=99, seed=0)
    return [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                    add_generation_prompt=True) for r in rows]


def tokens_per_s(backend, prompts, n, params, repeats) -> tuple[float, float]:
    backend.generate(prompts[:2], 2, params)  # warm-up
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        gen = backend.generate(prompts, n, params)
        rates.append(sum(len(c) for c in gen.completion_ids) / (time.perf_counter() - t))
    return statistics.median(rates), sum(len(c) for c in gen.completion_ids) / len(gen.completion_ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8, help="completions per prompt")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--syncs", type=int, default=5, help="weight pushes timed per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.generation import HFGenerationBackend, SamplingParams
    from trainer.tiny import count_parameters
    from trainer.vllm_backend import VLLMColocateBackend, VLLMConfig, state_dict_bytes

    params = SamplingParams(max_new_tokens=opts.new_tokens, temperature=1.0)
    root = Path(tempfile.mkdtemp(prefix="hdc-genbench-"))
    print(f"{opts.prompts} prompts x {opts.n} completions x {opts.new_tokens} new tokens, temperature 1, "
          f"median of {opts.repeats}, torch threads {opts.threads}")
    rows = []
    for name in opts.models:
        path = build(root, name)
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        prompts = prompts_for(tok, opts.prompts)
        hf, hf_len = tokens_per_s(HFGenerationBackend(model, tok, 64), prompts, opts.n, params, opts.repeats)
        t = time.perf_counter()
        vllm = VLLMColocateBackend(path, tok, VLLMConfig(), max_prompt_length=64)
        start_s = time.perf_counter() - t
        vl, vl_len = tokens_per_s(vllm, prompts, opts.n, params, opts.repeats)
        syncs, payload = [], []
        for _ in range(opts.syncs):
            with torch.no_grad():
                next(model.parameters()).add_(1e-3)
            vllm.update_weights(model)
            syncs.append(vllm.last_sync_s)
            t = time.perf_counter()
            size = len(state_dict_bytes(model, torch.float32))
            payload.append(time.perf_counter() - t)
        rows.append((name, count_parameters(model) / 1e6, hf, vl, vl / hf, start_s, statistics.median(syncs) * 1e3,
                     size / 2**20, statistics.median(payload) * 1e3, hf_len, vl_len))
        del vllm
    print(f"\n{'model':9} {'params':>7} {'HF tok/s':>9} {'vLLM tok/s':>10} {'ratio':>6} {'vLLM start':>10} "
          f"{'sync/step':>9} {'payload':>8} {'serialize':>9} {'len HF/vLLM':>11}")
    for r in rows:
        print(f"{r[0]:9} {r[1]:6.1f}M {r[2]:9.0f} {r[3]:10.0f} {r[4]:5.2f}x {r[5]:9.1f}s {r[6]:7.0f}ms "
              f"{r[7]:6.0f}MB {r[8]:7.0f}ms {r[9]:5.1f}/{r[10]:<5.1f}")
    print("\nsync/step: colocate update_weights (in-place reload + prefix-cache reset); payload/serialize: the "
          "server mode's safetensors body and the time to build it (HTTP transfer not included)")


if __name__ == "__main__":
    main()
