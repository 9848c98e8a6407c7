"""GRPO configuration: `GRPOConfig` with TRL's option names, and the YAML `Recipe` around it.

A recipe has these sections; the YAML keys, these field names and the log names are the
same words:

    model:       what to train (a local path loadable with `from_pretrained`)
    data:        JSONL files and which column holds the prompt
    rewards:     reward functions, each with a weight (and optional keyword parameters)
    grpo:        the algorithm and optimisation knobs, named as in TRL's GRPOConfig
    generation:  hf or vllm rollouts;  vllm: the engine's settings (TRL's vllm_* options)
    distributed: the topology and gradient-sync strategy of a data-parallel run

One *step* is one generation round: `generation_batch_size` completions (prompts x
`num_generations`) are sampled and scored, then the policy is updated `num_iterations`
times on them, each update accumulating `gradient_accumulation_steps` micro-batches of
`per_device_train_batch_size` completions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hdc.config import fail, from_dict, load_yaml, meta, set_dotted, to_dict
from hdc.errors import UserError

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
TIS_LEVELS = ("token", "sequence", "none")
SCALE_REWARDS = ("group", "batch", "none")
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")


def parse_scale_rewards(value: Any) -> str:
    """TRL accepts booleans here: true means 'group', false means 'none'."""
    if value is True:
        return "group"
    if value is False:
        return "none"
    if value in SCALE_REWARDS:
        return value
    raise ValueError(f"must be one of {', '.join(SCALE_REWARDS)} (or true/false), got {value!r}")


@dataclass
class GRPOConfig:
    """Every GRPO knob. Names follow TRL's GRPOConfig where TRL has the option."""

    output_dir: str = meta("Where checkpoints, logs and the final model go (`hdc train --out` overrides).",
                           default="runs/grpo")
    # --- optimisation
    learning_rate: float = meta("AdamW learning rate.", default=1e-6, gt=0)
    adam_beta1: float = meta("AdamW beta1.", default=0.9, ge=0, lt=1)
    adam_beta2: float = meta("AdamW beta2.", default=0.99, ge=0, lt=1)
    weight_decay: float = meta("AdamW weight decay.", default=0.0, ge=0)
    max_grad_norm: float = meta("Clip the gradient norm to this value (0 = no clipping).", default=1.0, ge=0)
    lr_scheduler_type: str = meta("Learning-rate schedule, as in transformers.get_scheduler: constant (no "
                                  "warm-up), constant_with_warmup, linear or cosine (decay to 0 at max_steps, "
                                  "after the warm-up).", default="constant", choices=SCHEDULERS)
    warmup_ratio: float = meta("Fraction of max_steps spent warming the learning rate up linearly from 0 (not "
                               "with constant: use constant_with_warmup).", default=0.0, ge=0, le=1)
    warmup_steps: int = meta("Steps of linear warm-up from 0; overrides warmup_ratio when > 0 (not with "
                             "constant: use constant_with_warmup).", default=0, ge=0)
    max_steps: int = meta("Number of steps (generation rounds) to train.", default=100, ge=1)
    per_device_train_batch_size: int = meta("Completions per micro-batch on each process.", default=8, ge=1)
    gradient_accumulation_steps: int = meta("Micro-batches accumulated into one optimizer update.", default=1, ge=1)
    generation_batch_size: int | None = meta(
        "Completions generated per step over all processes (prompts x num_generations). "
        "Default: per_device_train_batch_size x gradient_accumulation_steps x processes; if set it must equal that.",
        default=None, ge=1)
    # --- GRPO algorithm
    num_generations: int = meta("Completions sampled per prompt (the group size).", default=8, ge=2)
    num_iterations: int = meta("Policy updates per generation batch (mu in the GRPO paper).", default=1, ge=1)
    beta: float = meta("KL coefficient to the frozen reference model (0 = no reference model is loaded).",
                       default=0.0, ge=0)
    epsilon: float = meta("Lower clip range: the ratio is clipped at 1 - epsilon.", default=0.2, gt=0, lt=1)
    epsilon_high: float | None = meta("Upper clip range: the ratio is clipped at 1 + epsilon_high "
                                      "(default: epsilon).", default=None, gt=0)
    loss_type: str = meta("Loss aggregation: grpo (per-sequence mean), bnpo (local token mean), dr_grpo "
                          "(sum / (batch x max_completion_length)), dapo (global token mean).",
                          default="dapo", choices=LOSS_TYPES)
    scale_rewards: str = meta("Divide advantages by the reward std of the group, of the batch, or not at all "
                              "(true = group, false = none).", default="group", parse=parse_scale_rewards)
    reward_weights: list[float] | None = meta("Weight of each reward function (default: all 1.0). In a "
                                              "recipe, use rewards[i].weight instead.", default=None)
    mask_truncated_completions: bool = meta("Exclude completions that hit max_completion_length from the loss.",
                                            default=False)
    # --- generation
    max_prompt_length: int | None = meta("Keep only the last this-many prompt tokens (None = no limit).",
                                         default=512, ge=1)
    max_completion_length: int = meta("Maximum new tokens per completion.", default=256, ge=1)
    temperature: float = meta("Sampling temperature (also divides the logits in the loss).", default=1.0, gt=0)
    top_p: float = meta("Nucleus sampling: keep the smallest token set with this much probability.",
                        default=1.0, gt=0, le=1)
    # --- bookkeeping
    seed: int = meta("Seed for data order, sampling and initialisation.", default=42, ge=0)
    logging_steps: int = meta("Write metrics every this-many steps.", default=1, ge=1)
    save_steps: int = meta("Write a checkpoint every this-many steps (and at the end).", default=100, ge=1)
    save_total_limit: int | None = meta("Keep only the newest this-many checkpoints (None = keep all).",
                                        default=None, ge=1)
    eval_steps: int | None = meta("Evaluate held-out exact match every this-many steps (None = only at "
                                  "start and end; needs data.eval_file).", default=None, ge=1)
    log_completions: bool = meta("Write sampled prompt/completion/reward rows to completions.jsonl.",
                                 default=False)
    num_completions_to_print: int = meta("Rows per logged step when log_completions is on.", default=4, ge=1)
    deterministic_rollouts: bool = meta(
        "Sample each prompt's group with its own seed (from seed, step and the prompt's index in the step), so "
        "rollouts do not depend on batching or on the number of processes: data-parallel runs then match a "
        "single-process run. Slower with the hf backend (one generate call per prompt).", default=False)
    torch_num_threads: int | None = meta("torch.set_num_threads for CPU runs (None = torch's default).",
                                         default=None, ge=1)
    # --- memory and precision (device placement is model.device)
    bf16: bool = meta("Forward and backward under torch.autocast(bfloat16) while the weights and AdamW state stay "
                      "in model.dtype (float32: fp32 master weights); log-probs for the ratio and KL are computed in "
                      "fp32 from the bf16 logits. HF generation runs under it too. Not with model.dtype float16.",
                      default=False)
    gradient_checkpointing: bool = meta("Recompute each decoder layer's activations in backward instead of storing "
                                        "them (transformers' non-reentrant checkpointing): same losses, less "
                                        "activation memory, about one more forward of compute. Generation still "
                                        "uses the KV cache.", default=False)
    ref_dtype: str | None = meta("dtype of the reference model (beta > 0); None = model.dtype. bfloat16 halves "
                                 "its memory; its log-probs are still computed in fp32 from its logits.",
                                 default=None, choices=("float32", "bfloat16", "float16"))
    ref_offload: bool = meta("Keep the reference model (beta > 0) in CPU memory between steps, moving it to "
                             "model.device only for its no-grad log-prob pass.", default=False)

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        if self.lr_scheduler_type == "constant" and (self.warmup_ratio or self.warmup_steps):
            # transformers' "constant" silently ignores the warm-up; say so instead
            field = "warmup_steps" if self.warmup_steps else "warmup_ratio"
            raise fail(f"{p}{field}", f"lr_scheduler_type constant has no warm-up (as in transformers); use "
                                      f"lr_scheduler_type constant_with_warmup, or {field} 0, got "
                                      f"{getattr(self, field)}")
        completions = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if self.generation_batch_size is None and completions % self.num_generations:
            raise fail(f"{p}num_generations",
                       f"must divide per_device_train_batch_size x gradient_accumulation_steps = {completions}, "
                       f"got {self.num_generations}")
        if self.generation_batch_size is not None and self.generation_batch_size % self.num_generations:
            raise fail(f"{p}generation_batch_size",
                       f"must be a multiple of num_generations ({self.num_generations}), got {self.generation_batch_size}")

    @property
    def epsilon_low(self) -> float:
        return self.epsilon

    @property
    def epsilon_upper(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    def warmup_updates(self) -> int:
        """Optimizer updates of linear warm-up: warmup_steps (or warmup_ratio x max_steps), in updates
        (num_iterations per step), as transformers' get_warmup_steps counts them."""
        steps = self.warmup_steps if self.warmup_steps > 0 else math.ceil(self.warmup_ratio * self.max_steps)
        return steps * self.num_iterations

    def completions_per_step(self, world_size: int = 1) -> int:
        """Completions generated per step over all processes; checks generation_batch_size."""
        local = self.per_device_train_batch_size * self.gradient_accumulation_steps * world_size
        if self.generation_batch_size is not None and self.generation_batch_size != local:
            raise UserError(
                f"grpo.generation_batch_size: must equal per_device_train_batch_size x gradient_accumulation_steps "
                f"x processes = {self.per_device_train_batch_size} x {self.gradient_accumulation_steps} x "
                f"{world_size} = {local} here, got {self.generation_batch_size}")
        return local


@dataclass
class VLLMConfig:
    """The recipe's `vllm:` section (used when `generation.backend: vllm`). TRL names in brackets."""

    mode: str = meta("colocate: an engine inside the trainer process; server: a separate `hdc vllm-serve` "
                     "process the trainer talks to over HTTP [vllm_mode].", default="colocate",
                     choices=("colocate", "server"))
    gpu_memory_utilization: float = meta("Fraction of GPU memory vLLM may take (GPU only; colocate shares the "
                                         "GPU with training, so keep it low) [vllm_gpu_memory_utilization].",
                                         default=0.3, gt=0, le=1)
    tensor_parallel_size: int = meta("GPUs one engine is sharded over [vllm_tensor_parallel_size].",
                                     default=1, ge=1)
    kv_cache_space_gib: float = meta("CPU only: KV cache size in GiB (sets VLLM_CPU_KVCACHE_SPACE).",
                                     default=1.0, gt=0)
    enforce_eager: bool = meta("No CUDA graphs / torch.compile: slower, starts faster, exact comparisons.",
                               default=True)
    dtype: str = meta("Engine dtype (auto = the checkpoint's). float32 matches a float32 trainer best.",
                      default="float32", choices=("auto", "float32", "bfloat16", "float16"))
    enable_sleep_mode: bool = meta("Colocate: free vLLM's GPU memory between generation and the weight "
                                   "update (skipped, logged once, where vLLM cannot sleep, e.g. on CPU) "
                                   "[vllm_enable_sleep_mode].", default=True)
    server_host: str = meta("Server mode: host of `hdc vllm-serve` [vllm_server_host].", default="127.0.0.1")
    server_port: int = meta("Server mode: port of `hdc vllm-serve` [vllm_server_port].", default=8000,
                            ge=1, le=65535)
    server_timeout_s: float = meta("Server mode: seconds to wait for the server to answer (health check at "
                                   "start, each generate and each weight push) [vllm_server_timeout].",
                                   default=240.0, gt=0)
    tis_level: str = meta("Truncated importance sampling against the trainer/vLLM log-prob mismatch: per "
                          "token, per sequence (product over its tokens), or none.", default="token",
                          choices=TIS_LEVELS)
    tis_cap: float = meta("TIS truncation: weights are min(ratio, tis_cap) (Yao et al. 2025 use 2).",
                          default=2.0, gt=0)


@dataclass
class GenerationConfig:
    backend: str = meta("Rollouts: hf (generate with the training model) or vllm (see the vllm section) "
                        "[use_vllm].", default="hf", choices=("hf", "vllm"))


@dataclass
class DistributedConfig:
    """Data-parallel training over processes laid out on a topology (`hdc train --nproc/--topology`)."""

    topology: str | None = meta("Topology file or preset whose GPUs the processes stand for (None: one site of "
                                "--nproc ranks).", default=None)
    strategy: str = meta("Gradient-sync strategy (the simulator's names).", default="flat_ring",
                         choices=("flat_ring", "hierarchical", "chunked", "distributed_optimizer", "local_sgd"))
    chunks: int = meta("chunked: chunks per gradient bucket.", default=4, ge=1)
    inner: str = meta("chunked / local_sgd: the wrapped strategy.", default="hierarchical",
                      choices=("flat_ring", "hierarchical", "distributed_optimizer"))
    every: int = meta("local_sgd: steps between cross-site parameter averages.", default=10, ge=1)
    bucket_size_mb: float = meta("Gradient bucket size in MB (DDP's bucket_cap_mb).", default=25.0, gt=0)
    timeout_s: float = meta("Every collective fails with a message naming its group and sites after this long.",
                            default=300.0, gt=0)
    backend: str = meta("torch.distributed backend (auto: nccl with GPUs, else gloo).", default="auto",
                        choices=("auto", "gloo", "nccl"))


@dataclass
class ModelConfig:
    name_or_path: str = meta("Local directory of a causal LM saved with save_pretrained.")
    dtype: str = meta("Parameter dtype for training.", default="float32",
                      choices=("float32", "bfloat16", "float16"))
    device: str = meta("Where the model and every tensor of a step live: auto (cuda:LOCAL_RANK when torch sees "
                       "CUDA, else cpu), cpu or cuda (cuda:LOCAL_RANK; an error where there is no CUDA). Reward "
                       "functions and text stay on the host.", default="auto", choices=("auto", "cpu", "cuda"))


@dataclass
class DataConfig:
    train_file: str = meta("JSONL training data; every column reaches the reward functions as a keyword.")
    eval_file: str | None = meta("JSONL held-out data with prompt and answer columns, for exact-match "
                                 "evaluation.", default=None)
    prompt_column: str = meta("Column holding the prompt: a string, or a list of chat messages.",
                              default="prompt")
    answer_column: str = meta("Column holding the reference answer (used by the accuracy reward and eval).",
                              default="answer")
    system_prompt: str | None = meta("System message put before every string prompt.", default=None)
    use_chat_template: bool = meta("Format prompts with the tokenizer's chat template.", default=True)
    eval_max_samples: int = meta("Held-out prompts used per evaluation.", default=200, ge=1)


@dataclass
class RewardSpec:
    func: str = meta("Built-in name (accuracy, format, length, code) or an import path package.module:function.")
    weight: float = meta("Weight in the summed reward.", default=1.0)
    params: dict[str, Any] = meta("Extra keyword arguments passed to the function, e.g. target_length.",
                                  default_factory=dict)


@dataclass
class Recipe:
    """A whole training run as a YAML file."""

    model: ModelConfig = meta("The model to train.")
    data: DataConfig = meta("Training and held-out data.")
    rewards: list[RewardSpec] = meta("Reward functions and their weights.")
    grpo: GRPOConfig = meta("GRPO and optimisation settings (TRL names).", default_factory=GRPOConfig)
    generation: GenerationConfig = meta("How rollouts are generated.", default_factory=GenerationConfig)
    vllm: VLLMConfig = meta("vLLM settings (used when generation.backend is vllm).", default_factory=VLLMConfig)
    distributed: DistributedConfig = meta("Data-parallel layout and gradient sync (used with several processes).",
                                          default_factory=DistributedConfig)

    def validate(self, path: str = "") -> None:
        if not self.rewards:
            raise fail("rewards", "must list at least one reward function")
        if self.grpo.reward_weights is not None:
            raise fail("grpo.reward_weights", "set weights per function in rewards[i].weight in a recipe")
        from trainer.device import check_precision

        check_precision(self.grpo.bf16, self.model.dtype)
        from trainer.rewards import resolve_reward

        for i, spec in enumerate(self.rewards):
            resolve_reward(spec.func, f"rewards[{i}].func")


def load_recipe(path: str, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override (`key.sub=value`) and validate a recipe; every mistake is a UserError."""
    data = load_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: must be a mapping with keys model, data, rewards, grpo")
    for assignment in overrides:
        set_dotted(data, assignment)
    return from_dict(Recipe, data)


def recipe_to_dict(recipe: Recipe) -> dict:
    return to_dict(recipe)


__all__ = ["GRPOConfig", "Recipe", "ModelConfig", "DataConfig", "RewardSpec", "GenerationConfig", "VLLMConfig",
           "DistributedConfig", "load_recipe",
           "recipe_to_dict", "LOSS_TYPES", "SCALE_REWARDS"]
