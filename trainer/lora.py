"""LoRA adapters through `peft` (`model.lora: {r, alpha, dropout, target_modules}` in a recipe).

With LoRA the base weights are frozen and only the adapters train, so everything sized by the
trainable parameters shrinks to the adapter's: AdamW's state, the gradient sync's buckets and
plan (both built from the parameters that require grad), and each checkpoint (the adapter
only, peft's adapter_model.safetensors). The KL reference is the same model with its adapters
switched off (`BaseWeightsReference`): no second copy in memory. Whoever needs plain weights
(vLLM's weight push, the final model) gets them merged: W + (alpha / r) B A per adapted layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hdc.config import meta
from hdc.errors import UserError

if TYPE_CHECKING:  # annotations only: torch loads when a function runs
    import torch


@dataclass
class LoraSpec:
    r: int = meta("LoRA rank of each adapter (peft's r).", default=16, ge=1, le=4096)
    alpha: float = meta("Scale numerator: an adapter adds (alpha / r) B A to its layer (peft's lora_alpha).",
                        default=32.0, gt=0)
    dropout: float = meta("Dropout on each adapter's input while training (peft's lora_dropout).",
                          default=0.0, ge=0, lt=1)
    target_modules: list[str] | str = meta(
        "Modules to adapt: names such as [q_proj, k_proj, v_proj, o_proj], or all-linear (every linear layer "
        "but the output head).", default="all-linear")


def require_peft():
    try:
        import peft
    except ImportError:
        raise UserError("model.lora: needs the peft package: pip install -e '.[lora]'") from None
    return peft


def apply_lora(model: torch.nn.Module, spec: LoraSpec) -> torch.nn.Module:
    """`model` wrapped by peft with fresh adapters (B = 0: the start policy is the base model);
    the base weights are frozen. Adapter names that match no module are a UserError."""
    peft = require_peft()
    config = peft.LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                             target_modules=spec.target_modules, bias="none", task_type="CAUSAL_LM")
    try:
        return peft.get_peft_model(model, config)
    except ValueError as e:  # e.g. "Target modules {...} not found in the base model"
        raise UserError(f"model.lora.target_modules: {str(e).splitlines()[0]}") from None


def is_lora(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


class BaseWeightsReference:
    """The KL reference of a LoRA run: the policy's own base weights, adapters disabled, in
    eval mode for the pass (what a frozen copy of the start model would compute, as B starts
    at 0); holds no weights of its own."""

    training = False  # a reference pass never trains (what the passes ask of a model: trainer/passes.py)

    def __init__(self, model):
        self.model = model

    def __call__(self, *args, **kwargs):
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter():
                return self.model(*args, **kwargs)
        finally:
            self.model.train(was_training)


def check_lora_options(args, path: str = "grpo") -> None:
    """Options that assume a separate reference model do not apply to a LoRA run's."""
    for name in ("ref_offload", "ref_dtype", "sync_ref_model"):
        if getattr(args, name):
            raise UserError(f"{path}.{name}: not with model.lora (the reference is the base weights with the "
                            f"adapters disabled, no separate copy), got {getattr(args, name)!r}")


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The plain model's state dict (its own key names) with every adapter merged into its
    layer: W + get_delta_weight (= (alpha / r) B A), computed aside, the model left as it is."""
    import torch
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas = {}
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                for adapter in module.active_adapters:
                    deltas[f"{name}.weight"] = deltas.get(f"{name}.weight", 0) + module.get_delta_weight(adapter)
        out = {}
        for key, value in base.state_dict().items():
            if ".lora_" in key:
                continue
            plain = key.replace(".base_layer.", ".")
            out[plain] = (value + deltas[plain].to(value.dtype)) if plain in deltas else value
    return out


def export_state_dict(model) -> dict[str, torch.Tensor]:
    """Full plain weights for a consumer of checkpoints (vLLM, the final model): merged for a
    LoRA model, else the state dict with shards gathered (a collective under FSDP2)."""
    if is_lora(model):
        return merged_state_dict(model)
    from trainer.checkpoint import full_state_dict

    return full_state_dict(model)


def save_final_model(model, tokenizer, out_dir, weights: dict[str, torch.Tensor]) -> None:
    """OUT/final: a plain save_pretrained model (LoRA merged, so every tool loads it) and, for
    a LoRA run, its adapter alone in OUT/final/adapter."""
    target = model.get_base_model() if is_lora(model) else model
    target.save_pretrained(out_dir, state_dict=weights, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if is_lora(model):
        model.save_pretrained(f"{out_dir}/adapter", safe_serialization=True)


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    """What the optimizer and the gradient sync see: with LoRA, the adapters only."""
    return [p for p in model.parameters() if p.requires_grad]
