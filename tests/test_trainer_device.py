"""Device placement, bf16 autocast, gradient checkpointing and the reference model's memory options,
on the tiny local model (CPU here; benchmarks/gpu_check.sh runs the same options on a GPU)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from hdc.errors import UserError
from trainer.config import GRPOConfig
from trainer.data import load_jsonl
from trainer.device import check_bf16, check_precision, resolve_device
from trainer.generation import HFGenerationBackend, SamplingParams
from trainer.grpo import GRPOTrainer
from trainer.selfcheck.assets import tiny_assets

ROOT = Path(__file__).resolve().parents[1]


def digits(prompts, completions, **kwargs):
    """Differs within every group (the warm start of tiny_assets scores 0 on accuracy), so advantages are not 0."""
    return [float(sum(ch.isdigit() for ch in c)) for c in completions]


def make(out: Path, device: str | None = None, sampler=None, **kw) -> GRPOTrainer:
    assets = tiny_assets()
    base = dict(output_dir=str(out), learning_rate=1e-4, num_generations=4, per_device_train_batch_size=8,
                gradient_accumulation_steps=2, max_completion_length=24, max_steps=5, save_steps=100, seed=0,
                loss_type="dr_grpo")
    extra = {} if device is None else {"device": device}
    t = GRPOTrainer(str(assets.sft_model), [digits], GRPOConfig(**{**base, **kw}),
                    load_jsonl(str(assets.data / "train.jsonl")), **extra)
    if sampler is not None:
        t.backend = sampler(t)
    return t


def run(t: GRPOTrainer, steps: int) -> list[dict]:
    out = []
    for _ in range(steps):
        out.append(t.train_step())
        t.step += 1
    return out


def weights(t: GRPOTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in t.model.state_dict().items()}


def test_explicit_cpu_is_the_default_here_bit_for_bit(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("auto means cuda on this machine")
    a = make(tmp_path / "a")  # each trainer seeds torch when built: build, run, then the next
    la, wa = [m["loss"] for m in run(a, 2)], weights(a)
    b = make(tmp_path / "b", device="cpu")
    lb, wb = [m["loss"] for m in run(b, 2)], weights(b)
    assert a.device == b.device == torch.device("cpu")
    assert la == lb and any(x != 0.0 for x in la)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def frozen_fp32_sampler(t: GRPOTrainer) -> HFGenerationBackend:
    """Rollouts from a frozen fp32 copy of the start model (as a vLLM server that is never updated)."""
    return HFGenerationBackend(AutoModelForCausalLM.from_pretrained(tiny_assets().sft_model), t.tokenizer, 64)


def test_bf16_autocast_trains_like_fp32(tmp_path):
    # Why the rollouts are fixed: sampled on-policy, bf16 logits differ from fp32 ones in the third digit, so some
    # sampled tokens differ from step 1 on and the two runs then see different completions (their losses are not
    # comparable step by step). With the same completions, the loss still depends on the forward precision:
    # beta > 0 adds the KL to the reference and num_iterations 2 makes the second update's ratio differ from 1.
    kw = dict(beta=0.04, num_iterations=2, sampler=frozen_fp32_sampler)
    fp32 = make(tmp_path / "fp32", **kw)
    start = weights(fp32)
    m32, w32 = run(fp32, 5), weights(fp32)
    bf16 = make(tmp_path / "bf16", bf16=True, **kw)
    m16, w16 = run(bf16, 5), weights(bf16)
    for a, b in zip(m32, m16):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.02), (a["loss"], b["loss"])
        assert abs(a["loss"]) > 1e-3
    assert m16[-1]["kl"] > 0.01  # the policy moved away from the reference, and the KL term sees it
    # master weights and AdamW state stay fp32; both runs moved the weights the same way
    assert {p.dtype for p in bf16.model.parameters()} == {torch.float32}
    assert {s["exp_avg"].dtype for s in bf16.optimizer.state.values()} == {torch.float32}
    d32 = torch.cat([(v - start[k]).flatten() for k, v in w32.items()])
    d16 = torch.cat([(v - start[k]).flatten() for k, v in w16.items()])
    assert float(torch.nn.functional.cosine_similarity(d32, d16, dim=0)) > 0.99
    assert float(d16.norm()) == pytest.approx(float(d32.norm()), rel=0.05)


def test_bf16_log_probs_are_fp32_from_bf16_logits(tmp_path):
    t = make(tmp_path, bf16=True)
    gen = t.backend.generate(["<|im_start|>user\n1+2<|im_end|>\n<|im_start|>assistant\n"], 4, SamplingParams(8))
    batch = t._batch(["<|im_start|>user\n1+2<|im_end|>\n<|im_start|>assistant\n"] * 4, gen.completion_ids,
                     gen.truncated)
    logps, entropy = t._logps(t.model, batch, with_entropy=True)
    assert logps.dtype == entropy.dtype == torch.float32
    t.args.bf16 = False
    exact = t._logps(t.model, batch)[0]
    assert not torch.equal(logps, exact)  # the forward really ran in bf16 ...
    assert torch.allclose(logps, exact, atol=0.1)  # ... and its log-probs are close to the fp32 ones


def test_gradient_checkpointing_gives_the_same_losses(tmp_path):
    plain = make(tmp_path / "a", share_prompt_prefix=False)  # checkpointing runs the update without shared prompts
    la, wa = [m["loss"] for m in run(plain, 3)], weights(plain)
    ckpt = make(tmp_path / "b", gradient_checkpointing=True)
    lb, wb = [m["loss"] for m in run(ckpt, 3)], weights(ckpt)
    assert ckpt.model.is_gradient_checkpointing and not plain.model.is_gradient_checkpointing
    assert lb == pytest.approx(la, rel=1e-6) and any(x != 0.0 for x in la)
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-5, atol=1e-7) for k in wa)


def test_gradient_checkpointing_keeps_the_kv_cache_for_generation(tmp_path):
    t = make(tmp_path, gradient_checkpointing=True)
    t.model.train()  # as between two updates
    widths = []
    hook = t.model.model.register_forward_pre_hook(lambda mod, args, kw: widths.append(kw["input_ids"].shape[1]),
                                                   with_kwargs=True)
    t.backend.generate(["<|im_start|>user\n1+2<|im_end|>\n<|im_start|>assistant\n"], 2,
                       SamplingParams(6, temperature=1.0))
    hook.remove()
    assert widths[0] > 1 and set(widths[1:]) == {1}, widths  # prompt once, then one new token per forward
    assert t.model.training  # generate switched to eval and back


def test_reference_model_in_bf16_and_offloaded(tmp_path):
    a = make(tmp_path / "a", beta=0.04, num_iterations=2).train_step()
    half = make(tmp_path / "b", beta=0.04, num_iterations=2, ref_dtype="bfloat16", ref_offload=True)
    assert {p.dtype for p in half.ref_model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in half.model.parameters()} == {torch.float32}
    b = half.train_step()
    assert b["kl"] == pytest.approx(a["kl"], rel=0.1)  # a bf16 reference only adds its rounding noise
    assert b["loss"] == pytest.approx(a["loss"], rel=0.01)
    assert half.ref_home == torch.device("cpu") and {p.device.type for p in half.ref_model.parameters()} == {"cpu"}


def test_device_and_precision_checks_name_the_field():
    assert resolve_device("auto", cuda_available=False) == torch.device("cpu")
    assert resolve_device("auto", cuda_available=True, local_rank=1, cuda_count=2) == torch.device("cuda", 1)
    with pytest.raises(UserError, match=r"^model.device: cuda, but torch sees no CUDA device"):
        resolve_device("cuda", cuda_available=False)
    with pytest.raises(UserError, match=r"^model.device: cuda means cuda:LOCAL_RANK, but LOCAL_RANK is 2 and this "
                                        r"machine has 2 GPU\(s\)"):
        resolve_device("cuda", cuda_available=True, local_rank=2, cuda_count=2)
    with pytest.raises(UserError, match=r"^grpo.bf16: true, but .* does not support bfloat16"):
        check_bf16(torch.device("cuda", 0), True, supported=False)
    check_bf16(torch.device("cuda", 0), True, supported=True)
    check_bf16(torch.device("cpu"), True)  # CPUs run bf16 autocast
    with pytest.raises(UserError, match=r"^grpo.bf16: true with model.dtype float16"):
        check_precision(True, "float16")
    check_precision(True, "bfloat16")


def _hdc(*argv):
    code = "import sys; from trainer.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("sets, message", [
    (["model.device=cuda"], "error: model.device: cuda, but torch sees no CUDA device"),
    (["grpo.bf16=true", "model.dtype=float16"], "error: grpo.bf16: true with model.dtype float16"),
])
def test_bad_placement_exits_2_with_one_line_and_writes_nothing(tmp_path, sets, message):
    if "model.device=cuda" in sets and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    flags = [x for s in sets for x in ("--set", s)]
    out = tmp_path / "run"
    for argv in (["train", "recipes/tiny-arith.yaml", "--out", str(out), *flags],
                 ["train", "recipes/tiny-arith.yaml", "--out", str(out), "--nproc", "2", *flags],
                 ["recipe", "validate", "recipes/tiny-arith.yaml", *flags]):
        done = _hdc(*argv)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(message) and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr
        assert not out.exists()
