"""Published GRPO step times to set beside `simulate_rl`'s prediction, with the model's default
constants (nothing fitted to these rows).

Source: NeMo RL v0.5 performance summary (docs/about/performance-summary.md, H100 BF16 table,
Megatron backend) and its recipes examples/configs/recipes/llm/performance/
grpo-llama3.1-8b-instruct-2n8g[-async-1off].yaml on top of grpo_math_1B.yaml: Llama 3.1 8B
Instruct, OpenMathInstruct-2, 64 prompts × 32 generations (G-GBS 2,048), T-GBS 512 (4
optimizer steps per generation batch), max sequence 4,096, KL 0.01, vLLM TP 1.
  on-policy: colocated on 2 DGX H100 nodes, training PP 2 with activation checkpointing,
             gpu_memory_utilization 0.6; published step 92.8 s, G-average sequence 1,019.
  1-step off: generation on one node (8 GPUs), training on the other (PP 1), async with
             max_trajectory_age_steps 1, gpu_memory_utilization 0.8; published step 64.8 s,
             G-average sequence 1,123.
ASSUMPTIONS (not published): "G-Average Seq len" is prompt + completion; prompts average 150
tokens (short OpenMathInstruct-2 problems) and reach 512; completions reach max_new_tokens
(4,096 − the prompt). Both recipes train with activation_checkpointing (full recomputation).

Printed by benchmarks/published_rl.py; the report's section 9 shows the same table.
"""
from __future__ import annotations

from hdc.config import from_dict
from hdc.topology import topology_from_dict
from simulator.rl import RLPlacement, rl_workload_from_dict, simulate_rl

DGX_H100_2N = {"name": "dgx-h100-2n", "gpu": {"name": "H100-SXM5-80GB", "peak_flops": "989TFLOPS", "memory": "80GB",
                                                   "generation": "hopper"},
               "sites": [{"name": "site", "nodes": 2, "gpus_per_node": 8,
                          "intra_node": {"latency": "3us", "bandwidth": "450GB/s"},
                          "intra_pod": {"latency": "5us", "bandwidth": "400Gbps"}}]}
PROMPT_MEAN, PROMPT_MAX, MAX_TOTAL = 150, 512, 4096


def _workload(avg_seq: float, pp: int, kv_fraction: float) -> dict:
    return {"model": "llama-3-8b", "prompts_per_step": 64, "num_generations": 32,
            "prompt_length": {"mean": PROMPT_MEAN, "max": PROMPT_MAX},
            "completion_length": {"mean": avg_seq - PROMPT_MEAN, "max": MAX_TOTAL - PROMPT_MEAN},
            "steps_per_generation": 4, "beta": 0.01, "train": {"tp": 1, "pp": pp, "micro_batch_size": 1, "recompute": "full"},
            "kv_cache_fraction": kv_fraction}


# (name, published step s, workload, placement)
ROWS = [
    ("NeMo RL v0.5, Llama 3.1 8B, on-policy colocated, 16 H100", 92.8, _workload(1019, 2, 0.6),
     {"kind": "colocated"}),
    ("NeMo RL v0.5, Llama 3.1 8B, 1-step off-policy, 8 gen + 8 train H100", 64.8, _workload(1123, 1, 0.8),
     {"kind": "async", "generator_fraction": 0.5, "async_steps": 1}),
]


def predictions() -> list[tuple[str, float, float]]:
    topo = topology_from_dict(DGX_H100_2N)
    out = []
    for name, published, work, place in ROWS:
        r = simulate_rl(topo, rl_workload_from_dict(work), from_dict(RLPlacement, place, "placement"), "hierarchical")
        out.append((name, published, r.step_time_s))
    return out

