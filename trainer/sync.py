"""How gradients (and a few step-wide counts) are shared between processes.

The trainer is handed a `GradientSync` and calls it at fixed points of the step; it never
asks which one it got (torchtitan style). `LocalSync` is the single-process one and does
nothing. A torch.distributed implementation (driven by an hdc strategy's plan) provides
the same members.

Call order in one step:
    attach(model)                  once, before training
    all_reduce_sum([...])          step-wide counts (tokens for the dapo loss, metrics)
    after_backward(model)          after each micro-batch's backward (may start bucketed reduces)
    finish(step)                   before optimizer.step(): gradients are final when it returns
    after_optimizer_step(...)      after optimizer.step() (parameter all-gather, local SGD average)
    reload_parameters()            after a checkpoint replaced the weights
    flush()                        after the last step (an overlapped parameter sync completes)
    with full_parameters(model):   around generation and evaluation (forward passes whose number
                                   differs between processes): a sharded model gathers its weights
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, Protocol, runtime_checkable

import torch


@runtime_checkable
class GradientSync(Protocol):
    rank: int
    world_size: int

    def attach(self, model: torch.nn.Module) -> None:
        """Prepare for this model (register hooks, build buckets)."""

    def after_backward(self, model: torch.nn.Module) -> None:
        """Called after every micro-batch backward."""

    def finish(self, step: int) -> None:
        """Make the gradients of `model` equal on every process (averaged); called once per update."""

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum of `values` over all processes (same length everywhere)."""

    def after_optimizer_step(self, model: torch.nn.Module, optimizer, step: int) -> None:
        """After optimizer.step(): all-gather sharded parameters, or local SGD's periodic average."""

    def make_optimizer(self, optimizer_cls, params, **kwargs):
        """The optimizer to train with (sharded across processes for the distributed optimizer)."""

    @property
    def optimizer_is_sharded(self) -> bool:
        """make_optimizer gave an optimizer over this process's shards (its checkpoint is per rank)."""

    @property
    def supports_resume(self) -> bool:
        """A checkpoint holds everything needed to continue this sync exactly."""

    def reload_parameters(self) -> None:
        """The model's parameters were replaced (checkpoint loaded): refresh any copy of them."""

    def flush(self) -> None:
        """After the last step: complete any parameter sync still overlapping later steps."""

    def full_parameters(self, model: torch.nn.Module) -> ContextManager[torch.nn.Module]:
        """A block in which every process holds the model's full parameters (a sharded model
        all-gathers them once; otherwise nothing happens)."""


class LocalSync:
    """One process: there is nothing to synchronise."""

    rank = 0
    world_size = 1
    optimizer_is_sharded = False
    supports_resume = True

    def attach(self, model: torch.nn.Module) -> None:
        pass

    def after_backward(self, model: torch.nn.Module) -> None:
        pass

    def finish(self, step: int) -> None:
        pass

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        return list(values)

    def after_optimizer_step(self, model: torch.nn.Module, optimizer, step: int) -> None:
        pass

    def make_optimizer(self, optimizer_cls, params, **kwargs):
        return optimizer_cls(params, **kwargs)

    def reload_parameters(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def full_parameters(self, model: torch.nn.Module) -> ContextManager[torch.nn.Module]:
        return contextlib.nullcontext(model)
