"""Each speed-up of the GRPO step keeps the losses of a fixed batch equal to the plain path (1e-5):
padding trimmed, prompts shared by their group's completions, hdc's own sampling loop, the CPU's
fp32 linear layers through oneDNN.

Real parts throughout: the tiny local Qwen2 (trainer/selfcheck/assets.py), a real GRPOTrainer,
real transformers generate as the reference the sampling loop must reproduce.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer.config import GRPOConfig
from trainer.data import format_prompt, load_jsonl
from trainer.generation import HFGenerationBackend, SamplingParams
from trainer.grpo import GRPOTrainer
from trainer.kernels import OneDNNLinear
from trainer.passes import completion_logits, padding_columns
from trainer.selfcheck.assets import tiny_assets

SPEEDUPS = ("trim_padding", "share_prompt_prefix", "fast_generation", "onednn_linear")
BATCH_SPEEDUPS = ("trim_padding", "share_prompt_prefix", "onednn_linear")  # the ones acting on a fixed batch


@pytest.fixture(scope="module")
def model_and_tokenizer():
    path = tiny_assets().sft_model
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def ragged_batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """3 distinct left-padded prompts (widths 5, 3, 2 of 6 columns, so one all-padding column), each
    twice, followed by completions of 4, 2, 1, 3, 2, 1 tokens in 6 columns (two all-padding)."""
    g = torch.Generator().manual_seed(0)
    prompt_lengths, completion_lengths, W, n = [5, 3, 2], [4, 2, 1, 3, 2, 1], 6, 6
    ids = torch.zeros(6, W + n, dtype=torch.long)
    mask = torch.zeros(6, W + n, dtype=torch.long)
    prompts = [torch.randint(3, vocab, (p,), generator=g) for p in prompt_lengths]
    for row, c in enumerate(completion_lengths):
        p = prompts[row // 2]
        ids[row, W - len(p):W] = p
        mask[row, W - len(p):W] = 1
        ids[row, W:W + c] = torch.randint(3, vocab, (c,), generator=g)
        mask[row, W:W + c] = 1
    return ids, mask, n


def test_padding_columns_finds_the_all_padding_columns():
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 0, 0, 0]])
    assert padding_columns(mask, n=4) == (1, 2)  # prompt column 0 unused; completion columns 2, 3 unused


@pytest.mark.parametrize("share_prefix,trim", [(False, True), (True, False), (True, True)])
def test_completion_logits_and_gradients_match_the_full_forward(model_and_tokenizer, share_prefix, trim):
    model, _ = model_and_tokenizer
    ids, mask, n = ragged_batch(model.config.vocab_size)
    completion_mask = mask[:, -n:].bool()

    def run(**kw):
        model.zero_grad()
        logits, kept = completion_logits(model, ids, mask, n, **kw)
        picked = torch.log_softmax(logits, -1).gather(-1, ids[:, -n:][:, :kept, None]).squeeze(-1)
        (picked * completion_mask[:, :kept]).sum().backward()
        return logits, kept, [p.grad.clone() for p in model.parameters()]

    full, n_full, full_grads = run(share_prefix=False, trim=False)
    fast, kept, fast_grads = run(share_prefix=share_prefix, trim=trim)
    assert n_full == n and kept == (4 if trim else n)
    used = completion_mask[:, :kept]
    assert torch.allclose(fast[used], full[:, :kept][used], atol=1e-5)
    for a, b in zip(fast_grads, full_grads):  # float32 sums in another order: 1e-5 of the gradient's scale
        assert (a - b).abs().max() <= 1e-5 * max(1.0, float(b.abs().max())), float((a - b).abs().max())


def trainer_with(tmp_path, **speedups) -> GRPOTrainer:
    assets = tiny_assets()
    args = GRPOConfig(output_dir=str(tmp_path), learning_rate=1e-4, num_generations=4, per_device_train_batch_size=8,
                      gradient_accumulation_steps=2, max_completion_length=24, max_steps=2, seed=0, beta=0.04,
                      loss_type="grpo", **speedups)
    return GRPOTrainer(str(assets.sft_model), ["accuracy", "format"], args,
                       load_jsonl(str(assets.data / "train.jsonl")))


@pytest.mark.parametrize("speedup", BATCH_SPEEDUPS)
def test_a_fixed_batchs_losses_match_the_plain_path(tmp_path, speedup):
    """The same batch (sampled once) through the plain trainer and one with `speedup`: reference
    log-probs, loss, KL and gradients within 1e-5."""
    plain = trainer_with(tmp_path / "plain", **{s: False for s in SPEEDUPS})
    fast = trainer_with(tmp_path / "fast", **{s: s == speedup for s in SPEEDUPS})
    swapped = any(isinstance(m, OneDNNLinear) for m in fast.model.modules())
    assert swapped == (speedup == "onednn_linear") and not any(isinstance(m, OneDNNLinear) for m in plain.model.modules())
    _, _, texts = plain._sample_prompts()
    gen = plain._generate(texts, plain.step)
    batch = plain._batch(plain._repeat(texts), gen.completion_ids, gen.truncated)
    assert batch["attention_mask"].bool().all(0).logical_not().any(), "the batch has padding to skip"
    batch["advantages"] = torch.linspace(-1, 1, len(gen.completion_ids))
    out = {}
    for name, trainer in (("plain", plain), ("fast", fast)):
        b = dict(batch)
        b["old_logps"], b["ref_logps"] = trainer._old_and_ref_logps(b, trainer.model)
        trainer.model.zero_grad()
        loss, stats, entropy, _ = trainer._micro_batch_loss({k: v for k, v in b.items() if v is not None},
                                                            False, 1, float(b["completion_mask"].sum()))
        loss.backward()
        out[name] = (b["ref_logps"], loss.detach(), stats.kl, entropy, [p.grad.clone() for p in trainer.model.parameters()])
    (ref_a, loss_a, kl_a, ent_a, g_a), (ref_b, loss_b, kl_b, ent_b, g_b) = out["plain"], out["fast"]
    mask = batch["completion_mask"].bool()
    assert torch.allclose(ref_a[mask], ref_b[mask], atol=1e-5)
    assert abs(float(loss_a - loss_b)) < 1e-5 and abs(kl_a - kl_b) < 1e-5
    assert torch.allclose(ent_a[mask], ent_b[mask], atol=1e-5)
    for a, b in zip(g_a, g_b):  # float32 sums in another order: 1e-5 of the gradient's scale
        assert (a - b).abs().max() <= 1e-5 * max(1.0, float(b.abs().max())), float((a - b).abs().max())


@pytest.mark.parametrize("params", [
    SamplingParams(max_new_tokens=32, temperature=0.0),
    SamplingParams(max_new_tokens=32, temperature=1.0),
    SamplingParams(max_new_tokens=32, temperature=0.7, top_p=0.9, top_k=20, repetition_penalty=1.3),
    SamplingParams(max_new_tokens=32, temperature=1.2, min_p=0.05),
], ids=["greedy", "t1", "processed", "min_p"])
def test_the_shared_prefill_loop_samples_generates_tokens(model_and_tokenizer, params):
    """Prompts of different lengths (left padding), 4 sampled completions each, the same seed: the same tokens,
    EOS cuts and truncation as transformers' generate."""
    model, tok = model_and_tokenizer
    prompts = [format_prompt(tok, p) for p in ("1+2", "345+678", "12+9")]
    n = 4 if params.temperature > 0 else 1  # generate refuses several greedy completions
    out = {}
    for shared in (False, True):
        torch.manual_seed(7)
        out[shared] = HFGenerationBackend(model, tok, shared_prefill=shared).generate(prompts, n, params)
    assert out[True].completion_ids == out[False].completion_ids
    assert out[True].truncated == out[False].truncated
    assert any(not t for t in out[True].truncated), "some completions stop at EOS"


def test_the_trainer_samples_the_same_rollouts_with_fast_generation(tmp_path):
    plain = trainer_with(tmp_path / "plain", fast_generation=False)
    fast = trainer_with(tmp_path / "fast", fast_generation=True)
    gens = []
    for trainer in (plain, fast):
        _, _, texts = trainer._sample_prompts()
        torch.manual_seed(3)
        gens.append(trainer._generate(texts, trainer.step))
    assert gens[0].completion_ids == gens[1].completion_ids and gens[0].texts == gens[1].texts
