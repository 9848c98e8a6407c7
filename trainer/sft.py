"""A short supervised warm start: teach the model the answer format before GRPO.

Trains on JSONL rows with `prompt` and `completion` (the completion followed by EOS), loss
on completion tokens only, then saves with `save_pretrained`. Every `save_steps` it writes a
checkpoint under OUT/checkpoints (trainer.checkpoint's format: weights, AdamW, schedule, RNG,
data position), so `hdc sft --resume` continues a stopped run to the same weights.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from hdc.config import meta


@dataclass
class SFTConfig:
    max_steps: int = meta("Optimizer steps.", default=300, ge=1)
    per_device_train_batch_size: int = meta("Examples per step.", default=32, ge=1)
    learning_rate: float = meta("AdamW learning rate (cosine decay to 10%).", default=1e-3, gt=0)
    seed: int = meta("Seed for data order and dropout.", default=0, ge=0)
    torch_num_threads: int | None = meta("torch.set_num_threads.", default=None, ge=1)
    device: str = meta("auto (cuda:LOCAL_RANK with CUDA, else cpu), cpu or cuda, as model.device in a recipe.",
                       default="auto", choices=("auto", "cpu", "cuda"))
    save_steps: int = meta("Write a checkpoint every this-many steps (for --resume).", default=100, ge=1)
    save_total_limit: int | None = meta("Keep only the newest this-many checkpoints (None = keep all).",
                                        default=2, ge=1)


def sft(model_dir: str, data_file: str, out_dir: str, cfg: SFTConfig | None = None, resume: bool = False,
        progress: bool = False) -> dict[str, float]:
    """Train cfg.max_steps steps (from the newest checkpoint in out_dir with `resume`) and save
    the model to out_dir; `progress` shows a bar with the loss, s/step and the ETA."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hdc.errors import UserError
    from trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from trainer.data import format_prompt, load_jsonl, PromptSampler
    from trainer.device import resolve_device
    from trainer.models import require_model_dir

    cfg = cfg or SFTConfig()
    device = resolve_device(cfg.device)
    if cfg.torch_num_threads:
        torch.set_num_threads(cfg.torch_num_threads)
    torch.manual_seed(cfg.seed)
    require_model_dir(model_dir, "--model")
    checkpoint = latest_checkpoint(out_dir) if resume else None
    if resume and checkpoint is None:
        raise UserError(f"--resume: no checkpoint under {Path(out_dir) / 'checkpoints'}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    data = load_jsonl(data_file, "--data")
    for column in ("prompt", "completion"):
        if column not in data.column_names:
            raise UserError(f"--data: {data_file} has no {column!r} column (columns: {data.column_names})")
    examples = []
    for row in data:
        p = tokenizer(format_prompt(tokenizer, row["prompt"]), add_special_tokens=False)["input_ids"]
        c = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        examples.append((p, c))
    sampler = PromptSampler(len(examples), cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / cfg.max_steps)).item()))
    first = 1
    if checkpoint is not None:  # weights, AdamW, schedule, RNG and data position of that step
        state = load_checkpoint(checkpoint, model, opt, sched)
        sampler.load_state_dict(state["data"])
        first = state["step"] + 1
    model.train()
    start, loss_value = time.perf_counter(), float("nan")
    bar = tqdm(total=cfg.max_steps, initial=first - 1, desc="sft", unit="step", disable=not progress,
               dynamic_ncols=True)
    for step in range(first, cfg.max_steps + 1):
        batch = [examples[i] for i in sampler.next(cfg.per_device_train_batch_size)]
        width = max(len(p) + len(c) for p, c in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (p, c) in enumerate(batch):
            seq = p + c
            ids[i, :len(seq)] = torch.tensor(seq)
            labels[i, len(p):len(seq)] = torch.tensor(c)
            attn[i, :len(seq)] = 1
        loss = model(input_ids=ids.to(device), attention_mask=attn.to(device), labels=labels.to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss_value = loss.item()
        bar.update()
        bar.set_postfix(loss=f"{loss_value:.4f}")
        if step % cfg.save_steps == 0 or step == cfg.max_steps:
            save_checkpoint(out_dir, step, model, tokenizer, opt, sched, sampler.state_dict(),
                            keep=cfg.save_total_limit)
    bar.close()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"loss": loss_value, "time_s": time.perf_counter() - start, "first_step": first}
