"""Worker extension for vLLM: load a state dict into the running engine, in place.

vLLM mixes this class into its worker (`LLM(worker_extension_cls="trainer.vllm_worker.
WeightSyncExtension")`), so its methods can be called on every worker with
`llm.collective_rpc("hdc_load_weights", args=(weights,))`.

Why not `model.load_weights`: on CPU, vLLM repacks linear weights into oneDNN handles after
loading, so a second `load_weights` fails ("'Parameter' object has no attribute
'weight_loader'"). The model runner's `reload_weights(..., is_checkpoint_format=True)` redoes
the repacking and works on CPU and GPU alike.

`weights` is either a list of (name, tensor) pairs (engine in the caller's process: no copy)
or the bytes of a safetensors file (engine in another process: RPC arguments are pickled, and
bytes travel faster and more safely than tensors). Names are the Hugging Face checkpoint
names (`model.layers.0.self_attn.q_proj.weight`, ...), as in `model.state_dict()`.
This module imports nothing from vLLM, so the worker can import it cheaply.
"""
from __future__ import annotations

import time


def decode_weights(weights) -> list:
    """(name, tensor) pairs from a list of pairs or from safetensors bytes."""
    if isinstance(weights, (bytes, bytearray, memoryview)):
        from safetensors.torch import load

        return list(load(bytes(weights)).items())
    return list(weights)


class WeightSyncExtension:
    """Methods added to vLLM's worker; `self` is the worker (it has `reload_weights`)."""

    def hdc_load_weights(self, weights) -> dict:
        start = time.perf_counter()
        items = decode_weights(weights)
        self.reload_weights(weights_iterator=iter(items), is_checkpoint_format=True)
        return {"tensors": len(items), "seconds": time.perf_counter() - start}

    def hdc_parameter_names(self) -> list[str]:
        """Names of the engine's own (kernel-format) parameters, for debugging a failed push."""
        return [name for name, _ in self.model_runner.get_model().named_parameters()]
