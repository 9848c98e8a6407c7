"""The forward passes that score completions (reference, behaviour and policy log-probs) without
redoing work: columns that are padding in every row are dropped, and each distinct prompt of a
micro-batch is run once, its G completions continuing from its KV cache.

    logits, kept = completion_logits(model, input_ids, attention_mask, n, share_prefix=True, trim=True)
    # logits (B, kept, V) predict completion tokens 0..kept-1; columns kept.. are padding in every row

Rows are left-padded prompts of width W followed by right-padded completions of width n, as
GRPOTrainer._batch builds them. Both shortcuts give the logits of the plain full forward up to
float rounding (tests/test_trainer_speed.py checks losses and gradients within 1e-5): dropped
keys are masked out of every softmax anyway, and the position ids stay those of the full
forward. What they save per micro-batch of B rows with U distinct prompts: the prompt's
(B - U) x W token-forwards (and their backward), and every all-padding column.
"""
from __future__ import annotations

import torch


def padding_columns(attention_mask: torch.Tensor, n: int) -> tuple[int, int]:
    """(left, kept): the leading prompt columns that are padding in every row, and the completion
    columns up to the last one any row uses (at least 1)."""
    used = attention_mask.bool().any(0)
    width = attention_mask.shape[1] - n
    prompt_used = used[:width].nonzero()
    left = int(prompt_used[0]) if len(prompt_used) else width
    completion_used = used[width:].nonzero()
    kept = int(completion_used[-1]) + 1 if len(completion_used) else 1
    return left, kept


def completion_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int, *,
                      share_prefix: bool, trim: bool) -> tuple[torch.Tensor, int]:
    """Logits predicting each completion token, (B, kept, V), and kept (columns kept.. are all padding;
    kept = n without `trim`). Gradients flow as through the full forward."""
    if not (share_prefix or trim):  # the plain full forward
        return model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=n + 1,
                     use_cache=False).logits[:, :-1], n
    left, kept = padding_columns(attention_mask, n) if trim else (0, n)
    width = input_ids.shape[1] - n - left  # prompt columns kept
    stop = left + width + kept - 1  # the last completion token is never an input: columns [left, stop) run
    ids, mask = input_ids[:, left:stop], attention_mask[:, left:stop]
    positions = torch.arange(left, stop, device=input_ids.device).unsqueeze(0)  # the full forward's positions
    if not share_prefix:
        return model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=kept,
                     use_cache=False).logits, kept
    # the distinct (prompt, mask) rows, and for each row the index of its own
    prompts, inverse = torch.unique(torch.cat([ids[:, :width], mask[:, :width]], dim=1), dim=0, return_inverse=True)
    out = model(input_ids=prompts[:, :width], attention_mask=prompts[:, width:], position_ids=positions[:, :width],
                use_cache=True, logits_to_keep=1)
    first = out.logits[inverse]  # the last prompt position predicts completion token 0: (B, 1, V)
    if kept == 1:
        return first, kept
    cache = out.past_key_values
    cache.reorder_cache(inverse)  # index_select per layer: each row gets its prompt's keys and values
    rest = model(input_ids=ids[:, width:], attention_mask=mask, position_ids=positions[:, width:],
                 past_key_values=cache, use_cache=True).logits
    return torch.cat([first, rest], dim=1), kept
