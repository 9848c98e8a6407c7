"""The GRPO trainer: `GRPOConfig`, `GRPOTrainer`, reward functions, recipes (see docs/trainer.md).

Attributes load lazily so `hdc --help` does not import torch.
"""
from __future__ import annotations

__all__ = ["GRPOConfig", "GRPOTrainer", "Recipe", "load_recipe"]


def __getattr__(name: str):
    if name in ("GRPOConfig", "Recipe", "load_recipe"):
        from trainer import config

        return getattr(config, name)
    if name == "GRPOTrainer":
        from trainer.grpo import GRPOTrainer

        return GRPOTrainer
    raise AttributeError(name)
