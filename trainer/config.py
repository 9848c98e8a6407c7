"""GRPO configuration: `GRPOConfig` with TRL's option names, and the YAML `Recipe` around it.

A recipe has these sections; the YAML keys, these field names and the log names are the
same words:

    model:       what to train (a local path loadable with `from_pretrained`)
    data:        JSONL files and which column holds the prompt
    rewards:     reward functions, each with a weight (and optional keyword parameters)
    grpo:        the algorithm and optimisation knobs, named as in TRL's GRPOConfig
    generation:  hf or vllm rollouts;  vllm: the engine's settings (TRL's vllm_* options)
    distributed: the topology and gradient-sync strategy of a data-parallel run

As in TRL, a *step* is one optimizer update (`max_steps`, `warmup_steps`, `logging_steps`,
`save_steps` and `eval_steps` count them). A generation round samples and scores
`generation_batch_size` completions (prompts x `num_generations`), shuffles them and cuts them
into `steps_per_generation` micro-batches of `per_device_train_batch_size` per process; each
update accumulates `gradient_accumulation_steps` of those micro-batches, and the whole batch is
gone over `num_iterations` times: one round makes num_iterations x steps_per_generation /
gradient_accumulation_steps updates (1 with the defaults).
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field, make_dataclass
from typing import Any

from hdc.config import convert_fields, fail, from_dict, load_yaml, meta, set_dotted, to_dict
from hdc.errors import UserError
from hdc.strategies import STRATEGY_NAMES, knobs, strategy_from_dict
from hdc.sync import GRAD_DTYPES, check_shard_strategy
from trainer.logs import REPORT_TO
from trainer.lora import LoraSpec, check_lora_options

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
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


def parse_chat_template(value: Any) -> bool | str:
    """data.use_chat_template: true, false or auto."""
    if value in (True, False, "auto"):
        return value
    raise ValueError(f"must be auto, true or false, got {value!r}")


@dataclass
class GRPOConfig:
    """Every GRPO knob. Names follow TRL's GRPOConfig where TRL has the option."""

    output_dir: str = meta("Where checkpoints, logs and the final model go (`hdc train --out` overrides).",
                           default="runs/grpo")
    # --- optimisation
    learning_rate: float = meta("AdamW learning rate.", default=1e-6, gt=0, le=10)
    adam_beta1: float = meta("AdamW beta1.", default=0.9, ge=0, lt=1)
    adam_beta2: float = meta("AdamW beta2.", default=0.99, ge=0, lt=1)
    weight_decay: float = meta("AdamW weight decay.", default=0.0, ge=0)
    max_grad_norm: float = meta("Clip the gradient norm to this value (0 = no clipping).", default=1.0, ge=0)
    lr_scheduler_type: str = meta("Learning-rate schedule, as in transformers.get_scheduler: constant (no "
                                  "warm-up), constant_with_warmup, linear or cosine (decay to 0 at max_steps, "
                                  "after the warm-up).", default="constant", choices=SCHEDULERS)
    warmup_ratio: float = meta("Fraction of max_steps spent warming the learning rate up linearly from 0 (not "
                               "with constant: use constant_with_warmup).", default=0.0, ge=0, le=1)
    warmup_steps: int = meta("Optimizer updates of linear warm-up from 0; overrides warmup_ratio when > 0 (not "
                             "with constant: use constant_with_warmup).", default=0, ge=0)
    max_steps: int = meta("Optimizer updates to train (TRL's global steps; a generation round makes "
                          "num_iterations x steps_per_generation / gradient_accumulation_steps of them).",
                          default=100, ge=1)
    per_device_train_batch_size: int = meta("Completions per micro-batch on each process.", default=8, ge=1)
    gradient_accumulation_steps: int = meta("Micro-batches accumulated into one optimizer update.", default=1, ge=1)
    generation_batch_size: int | None = meta(
        "Completions generated per round over all processes (prompts x num_generations): "
        "per_device_train_batch_size x processes x steps_per_generation. Set this or steps_per_generation.",
        default=None, ge=1)
    steps_per_generation: int | None = meta(
        "Micro-batches each generation batch is cut into per process (default gradient_accumulation_steps: one "
        "optimizer update per round and iteration); a multiple of gradient_accumulation_steps.", default=None, ge=1)
    shuffle_dataset: bool = meta("Draw prompts in a seeded random order (else in file order), epoch after epoch.",
                                 default=True)
    # --- GRPO algorithm
    num_generations: int = meta("Completions sampled per prompt (the group size).", default=8, ge=2)
    num_iterations: int = meta("Passes over each generation batch (mu in the GRPO paper).", default=1, ge=1)
    beta: float = meta("KL coefficient to the reference model (0 = no reference model is loaded).",
                       default=0.0, ge=0)
    use_bias_correction_kl: bool = meta("Weight the k3 KL term by the importance ratio exp(logp - old_logp), so it "
                                        "estimates the current policy's KL from the behaviour policy's samples.",
                                        default=True)
    sync_ref_model: bool = meta("Move the reference model towards the policy every ref_model_sync_steps updates "
                                "(TR-DPO; needs beta > 0).", default=False)
    ref_model_sync_steps: int = meta("Updates between reference syncs (sync_ref_model).", default=512, ge=1)
    ref_model_mixup_alpha: float = meta("Reference sync: ref = alpha x policy + (1 - alpha) x ref.", default=0.6,
                                        ge=0, le=1)
    epsilon: float = meta("Lower clip range: the ratio is clipped at 1 - epsilon.", default=0.2, gt=0, lt=1)
    epsilon_high: float | None = meta("Upper clip range: the ratio is clipped at 1 + epsilon_high "
                                      "(default: epsilon); for cispo the cap of the ratio itself (e.g. 5).",
                                      default=None, gt=0)
    delta: float | None = meta("Two-sided clipping: the unclipped ratio is also capped at delta (> 1 + epsilon "
                               "recommended; None = off).", default=None, gt=1)
    importance_sampling_level: str = meta("Importance ratio per token, or per sequence (GSPO: exp of the mean "
                                          "token log-ratio).", default="token", choices=IMPORTANCE_SAMPLING_LEVELS)
    loss_type: str = meta("grpo (per-sequence mean), bnpo (local token mean), dr_grpo (sum / (batch x "
                          "max_completion_length)), dapo (global token mean), cispo (clipped ratio as a detached "
                          "weight on logp; global token mean), sapo (sigmoid gate instead of a clip; per-sequence "
                          "mean).", default="dapo", choices=LOSS_TYPES)
    sapo_temperature_pos: float = meta("sapo: gate temperature for tokens with a positive advantage.",
                                       default=1.0, gt=0)
    sapo_temperature_neg: float = meta("sapo: gate temperature for tokens with a negative advantage.",
                                       default=1.05, gt=0)
    top_entropy_quantile: float = meta("Train only on the tokens whose entropy is in this top fraction of the "
                                       "micro-batch's (1.0 = all tokens; 0.2 in Wang et al. 2025).", default=1.0,
                                       gt=0, le=1)
    scale_rewards: str = meta("Divide advantages by the reward std of the group, of the batch, or not at all "
                              "(true = group, false = none).", default="group", parse=parse_scale_rewards)
    reward_weights: list[float] | None = meta("Weight of each reward function (default: all 1.0). In a "
                                              "recipe, use rewards[i].weight instead.", default=None)
    mask_truncated_completions: bool = meta("Exclude completions that hit max_completion_length from the loss.",
                                            default=False)
    on_nonfinite: str = meta("When a reward, the loss or a gradient is NaN/inf (checked on every rank before the "
                             "optimizer steps): error ends the run naming the reward function or the step; skip drops "
                             "that update (no optimizer step; it still counts towards max_steps) with a warning and "
                             "the metric nonfinite/skipped_steps.", default="error", choices=("error", "skip"))
    # --- generation
    max_prompt_length: int | None = meta("Keep only the last this-many prompt tokens (None = no limit).",
                                         default=512, ge=1)
    max_completion_length: int = meta("Maximum new tokens per completion.", default=256, ge=1)
    temperature: float = meta("Sampling temperature (also divides the logits in the loss).", default=1.0, gt=0)
    top_p: float = meta("Nucleus sampling: keep the smallest token set with this much probability.",
                        default=1.0, gt=0, le=1)
    top_k: int = meta("Sample only from the this-many likeliest tokens (0 = no limit).", default=0, ge=0)
    min_p: float | None = meta("Drop tokens whose probability is below min_p x the likeliest token's (None = off).",
                               default=None, ge=0, le=1)
    repetition_penalty: float = meta("Penalty on tokens already in the prompt or completion (> 1 discourages "
                                     "repeats; 1 = off).", default=1.0, gt=0)
    disable_dropout: bool = meta("Set every dropout probability of the policy (and reference) to 0.",
                                 default=False)
    # --- bookkeeping
    seed: int = meta("Seed for data order, sampling and initialisation.", default=42, ge=0)
    logging_steps: int = meta("Write metrics every this-many steps.", default=1, ge=1)
    save_steps: int = meta("Write a checkpoint every this-many steps (and at the end).", default=100, ge=1)
    save_total_limit: int | None = meta("Keep only the newest this-many checkpoints (None = keep all).",
                                        default=None, ge=1)
    eval_steps: int | None = meta("Evaluate held-out exact match every this-many steps (None = only at "
                                  "start and end; needs data.eval_file).", default=None, ge=1)
    num_generations_eval: int | None = meta(
        "Completions sampled per held-out prompt in evaluation, at the training temperature and top_p (TRL's "
        "option): eval/exact_match is their mean and eval/pass@N the share of prompts with one exact match. "
        "None: one greedy completion per prompt.", default=None, ge=1, le=1024)
    log_completions: bool = meta("Write sampled prompt/completion/reward rows to completions.jsonl.",
                                 default=False)
    num_completions_to_print: int = meta("Rows per logged step when log_completions is on.", default=4, ge=1)
    report_to: list[str] = meta(
        "Where metrics go: jsonl (metrics.jsonl, what hdc report reads), tensorboard (tb/), wandb (wandb/; "
        "offline unless WANDB_MODE is set, needs the wandb extra). TRL's option.",
        default_factory=lambda: ["jsonl", "tensorboard"], choices=REPORT_TO)
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

    # --- speed (each is exact: the losses of a fixed batch match the plain path within 1e-5)
    trim_padding: bool = meta("Drop the columns that are padding in every row of a micro-batch before its log-prob "
                              "and update passes (and the last completion token, which is never an input).",
                              default=True)
    share_prompt_prefix: bool = meta("Run each distinct prompt of a micro-batch once in the log-prob and update "
                                     "passes, its completions continuing from its KV cache (a group's G completions "
                                     "share one prompt). Not under gradient_checkpointing or HSDP.", default=True)
    fast_generation: bool = meta("hf backend: hdc's own sampling loop instead of transformers' generate: each prompt "
                                 "prefilled once for its num_generations completions, then token by token on the "
                                 "shared KV cache; the same sampling (and the same tokens for a seed).", default=True)
    # --- off-policy overlap (not exact: the rollout is one update old)
    async_generation: bool = meta(
        "One-step off-policy rollouts: while the policy updates on round t's batch, a background thread "
        "generates round t+1 and runs its behaviour and reference passes with a snapshot of the weights before "
        "those updates (rewards are scored on the main thread); the loss's importance ratio against the "
        "snapshot's log-probs corrects the staleness. hf backend; not with LoRA, HSDP, sync_ref_model or "
        "deterministic_rollouts.",
        default=False)
    onednn_linear: bool = meta("On the CPU, fp32 linear layers (forward and both backward matmuls) through oneDNN "
                               "instead of MKL: IEEE fp32 either way, 1.6-2x faster passes on the AMD EPYC "
                               "measured (docs/trainer.md). No effect on GPUs, under bf16 autocast or on "
                               "FSDP2 shards.", default=True)

    def __post_init__(self) -> None:
        # a GRPOConfig built in Python gets the recipe's per-field checks and conversions
        # (scale_rewards=True -> "group", loss_type outside LOSS_TYPES refused); validate() adds
        # the checks that relate several fields
        convert_fields(self, "grpo")

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        if self.lr_scheduler_type == "constant" and (self.warmup_ratio or self.warmup_steps):
            # transformers' "constant" silently ignores the warm-up; say so instead
            field = "warmup_steps" if self.warmup_steps else "warmup_ratio"
            raise fail(f"{p}{field}", f"lr_scheduler_type constant has no warm-up (as in transformers); use "
                                      f"lr_scheduler_type constant_with_warmup, or {field} 0, got "
                                      f"{getattr(self, field)}")
        if self.generation_batch_size is not None and self.steps_per_generation is not None:
            raise fail(f"{p}steps_per_generation", f"set generation_batch_size or steps_per_generation, not both "
                                                   f"(as in TRL), got {self.steps_per_generation} and "
                                                   f"generation_batch_size {self.generation_batch_size}")
        spg = self.steps_per_generation or self.gradient_accumulation_steps
        if spg % self.gradient_accumulation_steps:
            raise fail(f"{p}steps_per_generation", f"must be a multiple of gradient_accumulation_steps "
                                                   f"({self.gradient_accumulation_steps}), got {spg}")
        completions = self.per_device_train_batch_size * spg
        if self.generation_batch_size is None and completions % self.num_generations:
            raise fail(f"{p}num_generations",
                       f"must divide per_device_train_batch_size x steps_per_generation = {completions}, "
                       f"got {self.num_generations}")
        if self.generation_batch_size is not None and self.generation_batch_size % self.num_generations:
            raise fail(f"{p}generation_batch_size",
                       f"must be a multiple of num_generations ({self.num_generations}), got {self.generation_batch_size}")
        if self.async_generation and self.sync_ref_model:
            raise fail(f"{p}async_generation", "not with sync_ref_model (the background reference pass would "
                                               "read a reference being mixed); set one of them false")
        if self.async_generation and self.deterministic_rollouts:
            raise fail(f"{p}async_generation", "not with deterministic_rollouts (its per-prompt seeds fork the "
                                               "global RNG the update also uses); set one of them false")
        if self.sync_ref_model and self.beta == 0.0:
            raise fail(f"{p}sync_ref_model", "needs a reference model: set beta > 0, got beta 0")
        if "wandb" in self.report_to and importlib.util.find_spec("wandb") is None:
            raise fail(f"{p}report_to", "wandb is not installed: pip install -e '.[wandb]' (it logs offline, "
                                        "no account needed), or leave wandb out of report_to")

    @property
    def epsilon_low(self) -> float:
        return self.epsilon

    @property
    def epsilon_upper(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    def warmup_updates(self) -> int:
        """Optimizer updates of linear warm-up: warmup_steps, or warmup_ratio x max_steps rounded up, as
        transformers' get_warmup_steps counts them (max_steps counts updates too)."""
        return self.warmup_steps if self.warmup_steps > 0 else math.ceil(self.warmup_ratio * self.max_steps)

    def micro_batches_per_generation(self, world_size: int = 1) -> int:
        """steps_per_generation: given, or from generation_batch_size, or gradient_accumulation_steps (TRL's rule)."""
        if self.steps_per_generation is not None:
            return self.steps_per_generation
        if self.generation_batch_size is None:
            return self.gradient_accumulation_steps
        per_micro_batch = self.per_device_train_batch_size * world_size
        if self.generation_batch_size % per_micro_batch or (
                self.generation_batch_size // per_micro_batch) % self.gradient_accumulation_steps:
            raise UserError(
                f"grpo.generation_batch_size: must be per_device_train_batch_size x processes x a multiple of "
                f"gradient_accumulation_steps = {self.per_device_train_batch_size} x {world_size} x "
                f"k x {self.gradient_accumulation_steps} here, got {self.generation_batch_size}")
        return self.generation_batch_size // per_micro_batch

    def completions_per_step(self, world_size: int = 1) -> int:
        """Completions generated per generation round over all processes; checks generation_batch_size."""
        return self.per_device_train_batch_size * world_size * self.micro_batches_per_generation(world_size)

    def updates_per_generation(self, world_size: int = 1) -> int:
        """Optimizer updates made on one generation batch: num_iterations x steps_per_generation / GA."""
        return self.num_iterations * self.micro_batches_per_generation(world_size) // self.gradient_accumulation_steps


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
    # TRL's names for the two options above, accepted as aliases (they win when given)
    vllm_importance_sampling_correction: bool | None = meta("TRL's name: false = tis_level none.", default=None)
    vllm_importance_sampling_mode: str | None = meta(
        "TRL's name: token_truncate = tis_level token, sequence_truncate = sequence (TRL's *_mask modes, which "
        "zero out-of-range weights, are not supported).", default=None, choices=("token_truncate", "sequence_truncate"))
    vllm_importance_sampling_clip_max: float | None = meta("TRL's name for tis_cap.", default=None, gt=0)
    vllm_importance_sampling_cap: float | None = meta("TRL's older name for tis_cap.", default=None, gt=0)

    def validate(self, path: str = "") -> None:
        if self.vllm_importance_sampling_mode is not None:
            self.tis_level = self.vllm_importance_sampling_mode.removesuffix("_truncate")
        if self.vllm_importance_sampling_correction is False:
            self.tis_level = "none"
        cap = self.vllm_importance_sampling_clip_max or self.vllm_importance_sampling_cap
        if cap is not None:
            self.tis_cap = cap


@dataclass
class GenerationConfig:
    backend: str = meta("Rollouts: hf (generate with the training model) or vllm (see the vllm section) "
                        "[use_vllm].", default="hf", choices=("hf", "vllm"))


@dataclass
class _DistributedBase:
    """Data-parallel training over processes laid out on a topology (`hdc train --nproc/--topology`).
    The strategy's knobs are fields of this section too, generated from hdc's strategy registry
    (unset: the strategy's default; a knob the chosen strategy does not take is an error)."""

    topology: str | None = meta("Topology file or preset whose GPUs the processes stand for (None: one site of "
                                "--nproc ranks).", default=None)
    strategy: str = meta("Gradient-sync strategy (the simulator's names; its knobs are the fields below).",
                         default="flat_ring", choices=STRATEGY_NAMES)
    bucket_size_mb: float = meta("Gradient bucket size in MB (DDP's bucket_cap_mb).", default=25.0, gt=0, le=1e6)
    timeout_s: float = meta("Every collective fails with a message naming its group and sites after this long.",
                            default=300.0, gt=0, le=86400)
    backend: str = meta("torch.distributed backend (auto: nccl with GPUs, else gloo).", default="auto",
                        choices=("auto", "gloo", "nccl"))
    grad_dtype: str = meta("What the gradient sync sends and sums in: float32, or bfloat16 (half the bytes; "
                           "the simulator's workload grad_bytes 2).", default="float32",
                           choices=tuple(GRAD_DTYPES))
    shard_within_site: bool = meta(
        "HSDP: shard parameters, gradients and optimizer state over the ranks of each site with PyTorch's FSDP2; "
        "the strategy then runs only the cross-site step, on each rank's shard (hierarchical, chunked, local_sgd, "
        "compressed; not flat_ring or distributed_optimizer). Every site needs the same number of ranks, >= 2.",
        default=False)

    def strategy_knobs(self) -> dict:
        return {k: getattr(self, k) for k in knobs() if getattr(self, k) is not None}

    def build_strategy(self, path: str = "distributed"):
        """The hdc strategy this section describes (validated by the registry)."""
        return strategy_from_dict({"name": self.strategy, **self.strategy_knobs()}, path)

    def validate(self, path: str = "") -> None:
        strategy = self.build_strategy(path or "distributed")
        if self.shard_within_site:
            check_shard_strategy(strategy, f"{path or 'distributed'}.shard_within_site")


def _knob_fields() -> list:
    """One optional field per knob of any registered strategy, with the registry's help and range."""
    out = []
    for name, k in knobs().items():
        md = dict(k["metadata"])
        md["help"] = f"{k['help']} (unset: the strategy's default)"
        tp = Any if md.get("strategy") else k["type"] | None
        out.append((name, tp, field(default=None, metadata=md)))
    return out


DistributedConfig = make_dataclass("DistributedConfig", _knob_fields(), bases=(_DistributedBase,))
DistributedConfig.__module__ = __name__
DistributedConfig.__doc__ = _DistributedBase.__doc__


@dataclass
class ModelConfig:
    name_or_path: str = meta("Local directory of a causal LM saved with save_pretrained.")
    dtype: str = meta("Parameter dtype for training.", default="float32",
                      choices=("float32", "bfloat16", "float16"))
    device: str = meta("Where the model and every tensor of a step live: auto (cuda:LOCAL_RANK when torch sees "
                       "CUDA, else cpu), cpu or cuda (cuda:LOCAL_RANK; an error where there is no CUDA). Reward "
                       "functions and text stay on the host.", default="auto", choices=("auto", "cpu", "cuda"))
    lora: LoraSpec | None = meta("Train LoRA adapters (peft) instead of every weight, e.g. {r: 16, alpha: 32}; the "
                                 "reference is the base with adapters disabled, checkpoints hold the adapters, "
                                 "OUT/final the merged model (None: full fine-tuning).", default=None)


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
    use_chat_template: bool | str = meta("Format prompts with the tokenizer's chat template: auto (when the tokenizer "
                                         "has one; base models often have none), true or false.", default="auto",
                                         parse=parse_chat_template)
    eval_max_samples: int = meta("Held-out prompts used per evaluation.", default=200, ge=1)


@dataclass
class RewardSpec:
    func: str = meta("Built-in name (accuracy, format, length, code) or an import path package.module:function.")
    weight: float = meta("Weight in the summed reward.", default=1.0, ge=-1e6, le=1e6)
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
    code_sandbox: str = meta("Isolation of the code reward's sandbox: strong (namespaces, a cgroup for memory and "
                             "processes, a disk quota, other uids; refuses to run where root or cgroups are missing) "
                             "or weak (strong where available, else per-process limits only, with a warning every "
                             "run).", default="strong", choices=("strong", "weak"))

    def validate(self, path: str = "") -> None:
        if not self.rewards:
            raise fail("rewards", "must list at least one reward function")
        if self.grpo.reward_weights is not None:
            raise fail("grpo.reward_weights", "set weights per function in rewards[i].weight in a recipe")
        from trainer.device import check_precision

        check_precision(self.grpo.bf16, self.model.dtype)
        if self.model.lora is not None:
            check_lora_options(self.grpo)
            if self.distributed.shard_within_site:
                raise fail("distributed.shard_within_site", "not with model.lora (FSDP2 over peft's adapters is "
                                                            "untested; the adapters are small: replicate them)")
        if self.grpo.async_generation:
            if self.generation.backend == "vllm":
                raise fail("grpo.async_generation", "needs generation.backend hf (a vLLM engine holds its own "
                                                    "weights and is not overlapped yet), got vllm")
            if self.model.lora is not None:
                raise fail("grpo.async_generation", "not with model.lora yet; set one of them off")
            if self.distributed.shard_within_site:
                raise fail("grpo.async_generation", "not with distributed.shard_within_site (the snapshot "
                                                    "would hold the full weights on every rank)")
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
