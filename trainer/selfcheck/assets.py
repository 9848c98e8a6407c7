"""Tiny local assets for tests, benchmarks and demos, built once per process.

`tiny_assets(sft_steps)` builds (in a temporary directory) a small Qwen2 model and its
tokenizer, the arithmetic data, and a warm-started copy; later calls with the same
arguments return the same paths. Nothing is downloaded.
"""
from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Small enough for fast tests, still head_dim 64 like the real tiny model.
SMALL_MODEL = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256}


@dataclass(frozen=True)
class TinyAssets:
    root: Path
    model: Path      # random initialisation
    sft_model: Path  # after the supervised warm start
    data: Path       # train.jsonl, heldout.jsonl, sft.jsonl


@functools.lru_cache(maxsize=None)
def tiny_assets(sft_steps: int = 150, small: bool = True, num_train: int = 2000) -> TinyAssets:
    from trainer.arith import ArithDataConfig, make_arith_data
    from trainer.sft import SFTConfig, sft
    from trainer.tiny import TinyModelConfig, make_tiny_model

    root = Path(tempfile.mkdtemp(prefix="hdc-tiny-"))
    cfg = TinyModelConfig(**SMALL_MODEL) if small else TinyModelConfig()
    make_tiny_model(root / "model", cfg)
    make_arith_data(root / "data", ArithDataConfig(num_train=num_train, num_heldout=200, num_sft=num_train))
    sft(str(root / "model"), str(root / "data" / "sft.jsonl"), str(root / "sft"),
        SFTConfig(max_steps=sft_steps, learning_rate=2e-3))
    return TinyAssets(root=root, model=root / "model", sft_model=root / "sft", data=root / "data")
