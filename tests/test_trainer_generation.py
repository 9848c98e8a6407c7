"""Generation through the transformers backend: n samples per prompt, left padding, EOS cut."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer.data import format_prompt
from trainer.generation import HFGenerationBackend, SamplingParams, cut_at_eos, encode_prompts
from trainer.selfcheck.assets import tiny_assets


@pytest.fixture(scope="module")
def model_and_tokenizer():
    assets = tiny_assets()
    return AutoModelForCausalLM.from_pretrained(assets.sft_model), AutoTokenizer.from_pretrained(assets.sft_model)


def test_cut_at_eos_keeps_the_eos_and_flags_truncation():
    ids, truncated = cut_at_eos([[5, 6, 2, 7], [5, 6, 7, 8]], {2})
    assert ids == [[5, 6, 2], [5, 6, 7, 8]]
    assert truncated == [False, True]


def test_prompts_are_left_padded_and_trimmed(model_and_tokenizer):
    _, tok = model_and_tokenizer
    enc = encode_prompts(tok, ["1+1", "12+34"])
    short, long = (len(tok("1+1")["input_ids"]), len(tok("12+34")["input_ids"]))
    assert enc["attention_mask"][0].tolist() == [0] * (long - short) + [1] * short
    assert enc["input_ids"][0, 0].item() == tok.pad_token_id
    assert encode_prompts(tok, ["12+34"], max_prompt_length=2)["input_ids"].shape == (1, 2)


def test_n_samples_per_prompt_adjacent_and_cut_at_eos(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompts = [format_prompt(tok, p) for p in ("3+4", "10-7")]
    torch.manual_seed(0)
    gen = HFGenerationBackend(model, tok).generate(prompts, 3, SamplingParams(max_new_tokens=24))
    assert len(gen.completion_ids) == len(gen.texts) == len(gen.truncated) == 6
    for ids, truncated in zip(gen.completion_ids, gen.truncated):
        assert len(ids) <= 24
        assert (ids[-1] == tok.eos_token_id) != truncated
        assert tok.eos_token_id not in ids[:-1]
    assert "<|im_end|>" not in "".join(gen.texts)


def test_greedy_batch_matches_one_prompt_at_a_time(model_and_tokenizer):
    model, tok = model_and_tokenizer
    rows = [json.loads(line) for line in open(tiny_assets().data / "heldout.jsonl")][:4]
    prompts = [format_prompt(tok, r["prompt"]) for r in rows]
    backend = HFGenerationBackend(model, tok)
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0)
    batched = backend.generate(prompts, 1, greedy).completion_ids
    alone = [backend.generate([p], 1, greedy).completion_ids[0] for p in prompts]
    assert batched == alone


def test_truncated_completions_hit_the_limit(model_and_tokenizer):
    model, tok = model_and_tokenizer
    gen = HFGenerationBackend(model, tok).generate([format_prompt(tok, "1+2")], 2, SamplingParams(max_new_tokens=3))
    assert gen.truncated == [True, True]
    assert [len(c) for c in gen.completion_ids] == [3, 3]
