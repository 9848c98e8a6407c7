"""Peak activation memory of one forward + backward, with and without gradient checkpointing.

What is measured: the peak of bytes allocated above the level before the forward (weights are
already there, so this is activations, logits and the gradients as they appear), for the same
Qwen2 model, batch and sequence, under `model.gradient_checkpointing_enable(use_reentrant=False)`
(what `grpo.gradient_checkpointing: true` does) and without it.
- CPU: torch.profiler with profile_memory=True; every op's self_cpu_memory_usage (bytes it
  allocated minus bytes it freed, from the allocator's events) summed in start-time order, the
  maximum of that running sum is the peak (resolution: one op). tracemalloc cannot see torch's
  allocator, so it is not used.
- CUDA: torch.cuda.max_memory_allocated() minus memory_allocated() before the forward.

    .venv/bin/python benchmarks/activation_memory.py [--batch 16] [--seq 256] [--hidden 256 --layers 4]
        [--device cpu|cuda] [--bf16]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch


def peak_cpu_bytes(step) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def peak_cuda_bytes(step) -> int:
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def measure(model, input_ids: torch.Tensor, checkpointing: bool, bf16: bool) -> int:
    from trainer.algorithm import token_logps
    from trainer.device import autocast

    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    model.train()
    device = input_ids.device

    def step():  # the trainer's loss pass: forward under autocast, fp32 log-probs, backward
        with autocast(device, bf16):
            logits = model(input_ids=input_ids, use_cache=False).logits[:, :-1]
        token_logps(logits, input_ids[:, 1:]).mean().backward()

    step()  # warm-up: lazily allocated state is not an activation
    model.zero_grad(set_to_none=True)
    peak = (peak_cuda_bytes if device.type == "cuda" else peak_cpu_bytes)(step)
    model.zero_grad(set_to_none=True)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--bf16", action="store_true", help="forward under bf16 autocast (grpo.bf16)")
    parser.add_argument("--threads", type=int, default=2)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    from transformers import AutoModelForCausalLM

    from trainer.tiny import TinyModelConfig, make_tiny_model

    root = Path(tempfile.mkdtemp(prefix="actmem-"))
    path = make_tiny_model(root / "model", TinyModelConfig(hidden_size=opts.hidden, num_hidden_layers=opts.layers,
                                                           num_attention_heads=opts.hidden // 64,
                                                           intermediate_size=opts.hidden * 11 // 4,
                                                           max_position_embeddings=max(512, opts.seq)))
    device = torch.device(opts.device)
    model = AutoModelForCausalLM.from_pretrained(path).to(device)
    ids = torch.randint(0, model.config.vocab_size, (opts.batch, opts.seq),
                        generator=torch.Generator().manual_seed(0)).to(device)
    off, on = measure(model, ids, False, opts.bf16), measure(model, ids, True, opts.bf16)
    how = "torch.profiler self memory, op resolution" if device.type == "cpu" else "torch.cuda.max_memory_allocated"
    print(f"\nactivation memory, one forward + backward: hidden {opts.hidden}, {opts.layers} layers, batch "
          f"{opts.batch} x {opts.seq} tokens, {opts.device}{', bf16 autocast' if opts.bf16 else ''} ({how})")
    print(f"{'gradient checkpointing':<24} {'peak MiB':>10}")
    print(f"{'off':<24} {off / 2**20:>10.1f}")
    print(f"{'on':<24} {on / 2**20:>10.1f}")
    print(f"checkpointing keeps {on / off:.2f}x of the peak ({off / on:.2f}x less)")


if __name__ == "__main__":
    main()
