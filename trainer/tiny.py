"""A tiny Qwen2-style causal LM and BPE tokenizer, built locally (no hub download).

`make_tiny_model(out_dir)` trains a byte-level BPE tokenizer with `tokenizers` on the
arithmetic task's text (digits split one per token), attaches a ChatML chat template,
builds a randomly initialised Qwen2ForCausalLM (hidden 256, 4 layers, 4 heads of
head_dim 64, so vLLM can serve it) and saves both with `save_pretrained`; load them
back with `AutoModelForCausalLM.from_pretrained(out_dir)` / `AutoTokenizer...`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hdc.config import meta

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@dataclass
class TinyModelConfig:
    hidden_size: int = meta("Model width.", default=256, ge=64)
    num_hidden_layers: int = meta("Transformer blocks.", default=4, ge=1)
    num_attention_heads: int = meta("Attention heads (head_dim = hidden_size / heads, keep >= 64).",
                                    default=4, ge=1)
    intermediate_size: int = meta("MLP width.", default=704, ge=1)
    vocab_size: int = meta("BPE vocabulary size (including 256 byte symbols and special tokens).",
                           default=512, ge=300)
    max_position_embeddings: int = meta("Longest sequence.", default=512, ge=16)
    seed: int = meta("Initialisation seed.", default=0, ge=0)


def tokenizer_corpus() -> list[str]:
    """Text the tokenizer learns merges from: arithmetic prompts and answers in the task format."""
    from trainer.arith import sample_problems, sft_completion

    rows = sample_problems(3000, max_operand=999, seed=12345)
    return [r["prompt"] + "\n" + sft_completion(r, think=i % 2 == 0) for i, r in enumerate(rows)] + \
        ["system user assistant"]


def build_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def make_tiny_model(out_dir: str | Path, cfg: TinyModelConfig | None = None) -> Path:
    """Build and save a tiny Qwen2 model + tokenizer in `out_dir`; returns the path."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    cfg = cfg or TinyModelConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(cfg.vocab_size)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_attention_heads,
        head_dim=cfg.hidden_size // cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        attention_dropout=0.0)
    torch.manual_seed(cfg.seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
