"""`hdc eval` and `hdc generate`: a trained model on held-out data, or on prompts you type.

    hdc eval runs/a/final --data data/arith/heldout.jsonl          # exact match, format, rewards
    hdc eval recipes/tiny-arith.yaml --model runs/a/final          # the recipe's rewards, columns, eval file
    hdc generate runs/a/final --prompt "What is 12 + 30?" -n 4     # sampled completions

A model is a save_pretrained folder (OUT/final, a checkpoint) or a LoRA checkpoint holding
only adapters (adapter_config.json names its base; the adapters are merged for inference).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from hdc.errors import UserError

DEFAULT_REWARDS = ("accuracy", "format")  # what `hdc eval MODEL` scores without a recipe


def load_for_inference(path: str, field: str = "MODEL", dtype: str = "float32"):
    """(model in eval mode, tokenizer) from a model folder or a LoRA adapter folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.checkpoint import refuse_pickled_weights
    from trainer.models import require_model_dir

    folder = Path(require_model_dir(path, field))
    refuse_pickled_weights(folder)
    adapter = folder / "adapter_config.json"
    if adapter.is_file() and not (folder / "model.safetensors").is_file():  # adapters only: load the base too
        from trainer.lora import require_peft

        base_path = json.loads(adapter.read_text()).get("base_model_name_or_path")
        base = AutoModelForCausalLM.from_pretrained(require_model_dir(base_path, f"{field} (its adapter's base)"),
                                                    dtype=getattr(torch, dtype))
        model = require_peft().PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def evaluate_model(model_path: str, data_file: str, *, reward_specs=None, prompt_column: str = "prompt",
                   answer_column: str = "answer", system_prompt: str | None = None,
                   use_chat_template: bool | str = "auto", max_new_tokens: int = 256, max_samples: int | None = None,
                   num_generations: int | None = None, temperature: float = 1.0, top_p: float = 1.0,
                   seed: int = 0) -> dict[str, float]:
    """Held-out metrics of a model: eval/exact_match and eval/format (greedy, or the mean over
    num_generations samples, with eval/pass@N), and rewards/<name>/mean of each reward function
    (the recipe's `rewards` specs, or accuracy and format) with their weighted total."""
    import torch

    from trainer.data import eval_completions, exact_match_metrics, load_jsonl
    from trainer.rewards import bind_params, resolve_reward, reward_name, score

    data = load_jsonl(data_file, "--data")
    for column in (prompt_column, answer_column):
        if column not in data.column_names:
            raise UserError(f"--data: {data_file} has no {column!r} column (columns: {', '.join(data.column_names)})")
    specs = reward_specs or [{"func": name, "weight": 1.0, "params": {}} for name in DEFAULT_REWARDS]
    funcs = [bind_params(resolve_reward(s["func"], f"rewards[{i}].func"), s.get("params") or {})
             for i, s in enumerate(specs)]
    model, tokenizer = load_for_inference(model_path)
    torch.manual_seed(seed)
    rows = [data[i] for i in range(len(data) if max_samples is None else min(len(data), max_samples))]
    texts = eval_completions(model, tokenizer, rows, max_new_tokens=max_new_tokens, prompt_column=prompt_column,
                             system_prompt=system_prompt, use_chat_template=use_chat_template,
                             num_generations=num_generations, temperature=temperature, top_p=top_p, seed=seed)
    out = exact_match_metrics(rows, texts, answer_column, num_generations)
    n = num_generations or 1
    repeat = lambda xs: [x for x in xs for _ in range(n)]  # noqa: E731 (each prompt's completions are adjacent)
    columns = {k: repeat([r[k] for r in rows]) for k in rows[0] if k != prompt_column} if rows else {}
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    per_func, totals = score(funcs, [float(s.get("weight", 1.0)) for s in specs], repeat([r[prompt_column] for r in rows]),
                             texts, columns, completion_ids=ids, trainer_state=None,
                             log_extra=lambda *a: None, log_metric=lambda *a: None)
    for func, values in zip(funcs, per_func):
        out[f"rewards/{reward_name(func)}/mean"] = _nanmean(values)
    out["rewards/total/mean"] = _nanmean(totals)
    out["eval/samples"] = len(rows)
    return out


def _nanmean(values: list[float]) -> float:
    ok = [v for v in values if not math.isnan(v)]
    return sum(ok) / len(ok) if ok else math.nan


def generate(model_path: str, prompts: list[str], *, num: int = 1, max_new_tokens: int = 256,
             temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, system_prompt: str | None = None,
             use_chat_template: bool | str = "auto") -> list[list[str]]:
    """`num` sampled completions per prompt (greedy at temperature 0), seeded per prompt."""
    from trainer.data import format_prompt
    from trainer.generation import HFGenerationBackend, SamplingParams

    model, tokenizer = load_for_inference(model_path)
    texts = [format_prompt(tokenizer, p, system_prompt, use_chat_template) for p in prompts]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            seeds=tuple(seed * 1_000_003 + i for i in range(len(prompts))))
    out = HFGenerationBackend(model, tokenizer).generate(texts, num, params).texts
    return [out[i * num:(i + 1) * num] for i in range(len(prompts))]
