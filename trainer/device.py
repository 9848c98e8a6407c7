"""Where a GRPO step runs and in what precision: `model.device`, `grpo.bf16`, the reference model.

    device = resolve_device("auto")               # cuda:LOCAL_RANK when CUDA is there, else cpu
    check_bf16(device, bf16=True)                 # a GPU without bf16 is refused, naming grpo.bf16
    with autocast(device, bf16=True): loss = ...  # bf16 matmuls; fp32 master weights and AdamW state

Every tensor of a step lives on `device`; rewards and text stay on the host. The checks raise
`UserError` naming the field, so `hdc train` and `hdc recipe validate` run them before anything
is written (`check_recipe_placement`) and `GRPOTrainer(...)` runs them for Python users.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from hdc.errors import UserError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(choice: str, *, cuda_available: bool | None = None, local_rank: int | None = None,
                   cuda_count: int | None = None) -> torch.device:
    """`model.device` as a torch.device: auto = cuda:LOCAL_RANK with CUDA, else cpu; cuda needs CUDA.
    The capabilities default to this machine's (passed in by tests)."""
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if choice == "cpu" or (choice == "auto" and not cuda_available):
        return torch.device("cpu")
    if choice != "cuda" and choice != "auto":
        raise UserError(f"model.device: must be one of {', '.join(DEVICES)}, got {choice!r}")
    if not cuda_available:
        raise UserError("model.device: cuda, but torch sees no CUDA device on this machine "
                        f"(torch {torch.__version__}); use auto or cpu")
    rank = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank
    count = torch.cuda.device_count() if cuda_count is None else cuda_count
    if rank >= count:
        raise UserError(f"model.device: {choice} means cuda:LOCAL_RANK, but LOCAL_RANK is {rank} and this machine "
                        f"has {count} GPU(s); start at most {count} process(es) per machine")
    return torch.device("cuda", rank)


def check_bf16(device: torch.device, bf16: bool, *, supported: bool | None = None) -> None:
    """grpo.bf16 on a GPU that has no bf16 (pre-Ampere) is refused; CPUs emulate it (autocast works)."""
    if not bf16 or device.type != "cuda":
        return
    if supported is None:
        supported = torch.cuda.is_bf16_supported()
    if not supported:
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else str(device)
        raise UserError(f"grpo.bf16: true, but {name} does not support bfloat16 "
                        "(torch.cuda.is_bf16_supported() is false); set grpo.bf16 false")


def check_precision(bf16: bool, model_dtype: str) -> None:
    """bf16 autocast over float16 weights would recast every fp16 weight to bf16 (fewer mantissa bits) at
    every matmul: contradictory, refused. Over bfloat16 weights it is allowed (autocast keeps softmax,
    norms and the log-probs in fp32), but there are no fp32 master weights then."""
    if bf16 and model_dtype == "float16":
        raise UserError("grpo.bf16: true with model.dtype float16 mixes two half-precision formats; use "
                        "model.dtype float32 (fp32 master weights, bf16 compute) or grpo.bf16 false")


def check_recipe_placement(recipe) -> torch.device:
    """The machine-dependent checks of a recipe (device, bf16 support), run at the edge before anything
    is written: `hdc train`, `hdc recipe validate`."""
    device = resolve_device(recipe.model.device)
    check_bf16(device, recipe.grpo.bf16)
    return device


def autocast(device: torch.device, bf16: bool):
    """torch.autocast(device.type, bfloat16) when bf16, else a no-op context."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def visiting(module: torch.nn.Module, device: torch.device, home: torch.device) -> Iterator[torch.nn.Module]:
    """Move `module` to `device` for the body, back to `home` after (the offloaded reference model)."""
    if device == home:
        yield module
        return
    module.to(device)
    try:
        yield module
    finally:
        module.to(home)
