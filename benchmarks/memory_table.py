"""GPU memory of one GRPO training rank for a 1.5B and a 7B model, per option (docs/trainer.md's table).

A formula, not a measurement. N parameters, L layers, hidden h, vocabulary V; a micro-batch of b
completions of s tokens (prompt + completion), c of them completion tokens:
  weights 4N (fp32), gradients 4N (fp32), AdamW m and v 8N (fp32): 16 B per parameter
  activations per layer: 34·s·b·h bytes with 16-bit activations (the simulator's term,
    simulator/memory.py, Korthikanti et al. 2022 eq. 5, flash/SDPA attention), doubled in fp32;
    with gradient checkpointing each layer keeps only its input (2 or 4 bytes·s·b·h) and one
    layer is recomputed at a time (+ its 34·s·b·h)
  logits of the completion tokens: b·c·V × (2 + 4) bytes under bf16 (bf16 logits + the fp32 copy
    the log-probs are computed from), × (4 + 4) in fp32
  reference model (beta > 0): 4N (fp32), 2N (grpo.ref_dtype bfloat16), 0 between uses when offloaded
  sharding over R ranks: ZeRO-1 (distributed_optimizer) divides the AdamW state by R; FSDP
    (distributed.shard_within_site, HSDP) divides weights, gradients and AdamW state by R.
Not counted: the CUDA context and allocator slack (~1-2 GiB), the KV cache of generation
(2·L·kv_heads·head_dim·2 bytes per token with HF generate, freed before the update), vLLM's share.

    python benchmarks/memory_table.py [--micro-batch 8] [--seq 1024] [--completion 512] [--ranks 8]
"""
from __future__ import annotations

import argparse

# (name, N, L, h, V): Qwen2.5-1.5B and Qwen2.5-7B as published in their config.json files
MODELS = [("1.5B", 1.54e9, 28, 1536, 151936), ("7B", 7.62e9, 28, 3584, 152064)]
ROWS = [  # cumulative: each row adds one option to the row above
    ("fp32, beta 0", {}),
    ("+ grpo.bf16", {"bf16": True}),
    ("+ grpo.gradient_checkpointing", {"ckpt": True}),
    ("+ beta 0.04 (fp32 reference)", {"ref": 4}),
    ("+ grpo.ref_dtype bfloat16", {"ref": 2}),
    ("+ grpo.ref_offload", {"ref": 0}),
    ("+ distributed_optimizer (ZeRO-1), 8 ranks", {"zero": True}),
    ("+ shard_within_site (FSDP), 8 ranks", {"fsdp": True}),
]


def rank_bytes(n, layers, h, vocab, b, s, c, ranks, bf16=False, ckpt=False, ref=0, zero=False, fsdp=False) -> float:
    weights, grads, adam = 4 * n, 4 * n, 8 * n
    if fsdp:
        weights, grads, adam = weights / ranks, grads / ranks, adam / ranks
    elif zero:
        adam /= ranks
    act_byte = 2 if bf16 else 4
    full_layer = 34 * s * b * h * act_byte / 2  # 34·s·b·h counts 16-bit activations
    activations = layers * act_byte * s * b * h + full_layer if ckpt else layers * full_layer
    logits = b * c * vocab * ((2 + 4) if bf16 else (4 + 4))
    return weights + grads + adam + activations + logits + ref * n / (ranks if fsdp else 1)


def table(b: int, s: int, c: int, ranks: int) -> str:
    lines = [f"| options (cumulative), micro-batch {b} x {s} tokens ({c} completion) | "
             + " | ".join(name for name, *_ in MODELS) + " |", "|---|" + "---:|" * len(MODELS)]
    opts: dict = {}
    for label, extra in ROWS:
        opts.update(extra)
        cells = [f"{rank_bytes(n, L, h, V, b, s, c, ranks, **opts) / 2**30:.1f} GiB" for _, n, L, h, V in MODELS]
        lines.append(f"| {label.replace('8 ranks', f'{ranks} ranks')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--completion", type=int, default=512)
    parser.add_argument("--ranks", type=int, default=8)
    o = parser.parse_args()
    print(table(o.micro_batch, o.seq, o.completion, o.ranks))


if __name__ == "__main__":
    main()
