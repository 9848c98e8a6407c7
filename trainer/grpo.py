"""GRPOTrainer: generate -> reward -> advantage -> loss -> sync -> update, one step in `train_step`.

    trainer = GRPOTrainer(model="runs/tiny-sft", reward_funcs=["accuracy", "format"],
                          args=GRPOConfig(...), train_dataset=load_jsonl("train.jsonl"))
    trainer.train()

The trainer does not know how gradients are shared between processes: it is handed a
`GradientSync` (default `LocalSync`) and a `GenerationBackend` (default transformers).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import dataclasses
import math
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from hdc.errors import UserError
from trainer.algorithm import (TIS, generation_order, group_advantages, grpo_loss, high_entropy_mask, mix_reference,
                               pad_logprobs, reward_moments, std_from_moments, tis_metrics, tis_weights,
                               token_entropy, token_logps)
from trainer.checkpoint import latest_checkpoint, load_checkpoint, refuse_pickled_weights, save_checkpoint
from trainer.config import DataConfig, GRPOConfig
from trainer.data import PromptSampler, evaluate_exact_match, format_prompt
from trainer.device import autocast, check_bf16, check_precision, resolve_device, visiting
from trainer.generation import GenerationBackend, HFGenerationBackend, SamplingParams, encode_prompts
from trainer.guards import StepGuard
from trainer.kernels import use_onednn_linear
from trainer.logs import MetricsLogger, truncate_logs
from trainer.lora import (BaseWeightsReference, LoraSpec, apply_lora, check_lora_options, export_state_dict,
                          save_final_model, trainable_parameters)
from trainer.models import require_model_dir
from trainer.passes import completion_logits
from trainer.rewards import check_reward_columns, resolve_reward, reward_name, score
from trainer.sync import GradientSync, LocalSync


def build_scheduler(optimizer: torch.optim.Optimizer, args: GRPOConfig):
    """transformers.get_scheduler over max_steps optimizer updates, with args.warmup_updates() of
    linear warm-up (constant_with_warmup, linear, cosine)."""
    from transformers import get_scheduler

    return get_scheduler(args.lr_scheduler_type, optimizer, num_training_steps=args.max_steps,
                         num_warmup_steps=args.warmup_updates())


def sync_wait_parts(stamps: Sequence[Sequence[tuple[float, float]]]) -> tuple[float, float]:
    """(skew, collective) seconds of one step's gradient syncs, summed over its updates, from
    stamps[rank][update] = (wall-clock time the rank entered finish(), time finish() returned).

    time/sync_s is the longest wait of one rank, and a rank that arrives early also waits for
    the last one to arrive; these two parts separate that. skew = latest entry - earliest
    entry: how long the first rank to arrive waited for the last. collective = latest return -
    latest entry: the sync once every rank had handed in its gradients, the quantity a model of
    the plan alone predicts. Their sum (latest return - earliest entry) bounds the longest
    single wait from above."""
    skew = collective = 0.0
    for update in zip(*stamps):
        entered = [e for e, _ in update]
        skew += max(entered) - min(entered)
        collective += max(d for _, d in update) - max(entered)
    return skew, collective


@dataclasses.dataclass
class Rollout:
    """One generation round before it is scored: its prompts and completions, and the token tensors in
    the shuffled order the update reads, with behaviour and reference log-probs."""

    rows: list
    prompts: list
    gen: Any
    batch: dict[str, torch.Tensor]
    order: torch.Tensor
    metrics: dict[str, float]  # time/generate_s, time/reference_s


@torch.no_grad()
def copy_weights(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    """dst's parameters <- src's, in place (dst a copy of src's architecture)."""
    for d, p in zip(dst.parameters(), src.parameters()):
        d.copy_(p)


class GRPOTrainer:
    def __init__(self, model: str | torch.nn.Module, reward_funcs: Any, args: GRPOConfig, train_dataset: Any,
                 eval_dataset: Any = None, processing_class: Any = None, data: DataConfig | None = None,
                 grad_sync: GradientSync | None = None, generation_backend: GenerationBackend | None = None,
                 dtype: str = "float32", tis: TIS | None = None, device: str = "auto", lora: LoraSpec | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        args.validate("grpo")  # a GRPOConfig built in Python gets the checks a recipe gets
        self.device = resolve_device(device)  # model.device; every tensor of a step lives here
        check_bf16(self.device, args.bf16)
        check_precision(args.bf16, dtype)
        self.args, self.data = args, data or DataConfig(train_file="")
        self.grad_sync = grad_sync or LocalSync()
        if args.torch_num_threads:
            torch.set_num_threads(args.torch_num_threads)
        torch.manual_seed(args.seed)
        random.seed(args.seed)
        torch_dtype = getattr(torch, dtype)
        if isinstance(model, (str, Path)):
            require_model_dir(model, "model.name_or_path")
            refuse_pickled_weights(model)  # safetensors only: a pickle can run code when loaded
            self.model_path = str(model)
            self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch_dtype)
        else:
            self.model_path, self.model = None, model
        if args.disable_dropout:  # TRL's disable_dropout_in_model
            for module in self.model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
        if lora is not None:  # base weights frozen: the optimizer, the sync and checkpoints see the adapters only
            check_lora_options(args)
            self.model = apply_lora(self.model, lora)
        if args.onednn_linear:  # before the reference is copied: it runs the same kernels
            use_onednn_linear(self.model)
        self.tokenizer = processing_class or AutoTokenizer.from_pretrained(self.model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # No reference model at all when beta == 0 (saves its memory and its forward pass). Copied before the
        # model moves, so an offloaded (CPU) reference never occupies the GPU twice.
        self.ref_model, self.ref_home = None, self.device
        if args.beta != 0.0 and lora is not None:
            self.ref_model = BaseWeightsReference(self.model)
        elif args.beta != 0.0:
            self.ref_home = torch.device("cpu") if args.ref_offload else self.device
            ref_dtype = getattr(torch, args.ref_dtype) if args.ref_dtype else None
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False).to(self.ref_home, ref_dtype)
        self.model.to(self.device)
        if args.gradient_checkpointing:  # non-reentrant: no input that requires grad needed, and it is what
            # PyTorch recommends; transformers turns the KV cache off only while training, so generate keeps it
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

        funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        self.reward_funcs: list[Callable] = [resolve_reward(f, f"reward_funcs[{i}]") if isinstance(f, str) else f
                                             for i, f in enumerate(funcs)]
        self.reward_names = [reward_name(f) for f in self.reward_funcs]
        self.reward_weights = list(args.reward_weights or [1.0] * len(self.reward_funcs))
        if len(self.reward_weights) != len(self.reward_funcs):
            raise UserError(f"grpo.reward_weights: must have one weight per reward function "
                            f"({len(self.reward_funcs)}), got {len(self.reward_weights)}")

        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        if self.data.prompt_column not in train_dataset.column_names:
            raise UserError(f"data.prompt_column: no column {self.data.prompt_column!r} in the training data "
                            f"(columns: {', '.join(train_dataset.column_names)})")
        check_reward_columns(self.reward_funcs, train_dataset.column_names)
        self.guard = StepGuard(self.reward_names, args.on_nonfinite, self.grad_sync.all_reduce_sum)
        world = self.grad_sync.world_size
        self.prompts_per_step = args.completions_per_step(world) // args.num_generations
        self.prompts_per_process = self.prompts_per_step // world
        self.updates_per_generation = args.updates_per_generation(world)
        self.sampler = PromptSampler(len(train_dataset), args.seed, shuffle=args.shuffle_dataset)
        # grpo.async_generation: rollouts come from a snapshot of the policy, on a background thread
        self.rollout_model = self._rollout_snapshot(generation_backend, lora)
        self.rollout_pool = (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hdc-rollout")
                             if self.rollout_model is not None else None)
        self.pending_rollout: concurrent.futures.Future | None = None
        self.backend = generation_backend or HFGenerationBackend(
            self.rollout_model or self.model, self.tokenizer, args.max_prompt_length, bf16=args.bf16,
            shared_prefill=args.fast_generation)
        self.sampling = SamplingParams(args.max_completion_length, args.temperature, args.top_p, top_k=args.top_k,
                                       min_p=args.min_p, repetition_penalty=args.repetition_penalty)

        # attach first: the distributed optimizer shards the parameters it sees there
        self.grad_sync.attach(self.model)
        if self.rollout_model is not None and self._sharded(self.model):
            raise UserError("grpo.async_generation: not with distributed.shard_within_site (the snapshot would "
                            "hold the full weights on every rank)")
        self.optimizer = self.grad_sync.make_optimizer(
            torch.optim.AdamW, trainable_parameters(self.model), lr=args.learning_rate, weight_decay=args.weight_decay,
            betas=(args.adam_beta1, args.adam_beta2))
        self.scheduler = build_scheduler(getattr(self.optimizer, "inner", self.optimizer), args)
        self.tis = tis or TIS()  # applied when the backend returns the sampler's log-probs (vLLM)
        from transformers import TrainerState

        self.trainer_state = TrainerState(max_steps=args.max_steps)  # reward functions' `trainer_state`, as TRL's
        self.updates = 0  # optimizer updates so far
        self.step = 0  # = updates at the start of a round: TRL's global step
        self.logger: MetricsLogger | None = None

    def _rollout_snapshot(self, generation_backend, lora) -> torch.nn.Module | None:
        """grpo.async_generation: a frozen copy of the policy that generates the next round while
        the policy updates (its weights refreshed from the policy as each round starts); None otherwise."""
        if not self.args.async_generation:
            return None
        if generation_backend is not None:
            raise UserError("grpo.async_generation: needs the hf generation backend (generation.backend hf); "
                            "a vLLM engine holds its own weights and is not overlapped yet")
        if lora is not None:
            raise UserError("grpo.async_generation: not with model.lora yet (the reference pass runs the "
                            "policy's own base weights); set one of them off")
        return copy.deepcopy(self.model).eval().requires_grad_(False)

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        """One generation round: sample, score, advantages, then the policy updates on it. With
        grpo.async_generation the round's rollout was made during the previous round's updates (by the
        weights before them), and the next round's rollout is made during this round's updates."""
        m: dict[str, float] = {}  # this step's metrics; timings go in through self._timed(m, name)
        with self._timed(m, "time/step_s"):
            if self.rollout_model is None:
                rollout = self._rollout(self._sample_prompts(), self.step, self.model)
            else:
                rollout = self._next_rollout(m)
            m.update(rollout.metrics)
            # 4. Rewards, on this thread (reward functions may rely on signals, as math-verify's timeouts
            #    do): every dataset column, and TRL's other keywords, reach the reward functions.
            with self._timed(m, "time/score_s"):
                per_func, totals, extra_columns = self._score(rollout.rows, rollout.prompts, rollout.gen, m)
            # 5. Group-relative advantages (a group never spans processes; 'batch' scaling uses the step),
            #    in the order the batch was shuffled into.
            rewards = torch.tensor(totals, dtype=torch.float32)
            advantages = self._advantages(rewards)
            batch = dict(rollout.batch, advantages=advantages[rollout.order])
            # 6. Policy updates: num_iterations passes over the steps_per_generation micro-batches, an
            #    optimizer update (sync, step) after every gradient_accumulation_steps of them.
            stamps = self._update(batch, "sampler_logps" in batch, m)
            with self._timed(m, "time/weight_sync_s"):
                self.backend.update_weights(self.model)  # after the all-gather: vLLM gets the full new weights
        # 7. Metrics, over every process.
        self._step_metrics(m, per_func, rewards, advantages, rollout.gen)
        m = self._gather_metrics(m, stamps)
        self._log_completions(rollout.prompts, rollout.gen, totals, advantages, per_func, extra_columns)
        return m

    def _rollout(self, sampled: tuple[list, list, list[str]], step: int, model: torch.nn.Module) -> "Rollout":
        """A round's batch from its sampled prompts, generated by `model` (the policy, or under
        grpo.async_generation its snapshot, on a background thread: nothing here may touch the policy,
        the optimizer, a reward function or a collective then)."""
        rows, prompts, prompt_texts = sampled
        m: dict[str, float] = {}
        # 1. Generate G completions per prompt (adjacent), cut after EOS.
        with self._timed(m, "time/generate_s"):
            gen = self._generate(prompt_texts, step)
        # 2. Token tensors: left-padded prompts + right-padded completions; loss mask ends at EOS.
        batch = self._batch(self._repeat(prompt_texts), gen.completion_ids, gen.truncated)
        if self.tis.level != "none" and getattr(gen, "logprobs", None) is not None:
            # the sampler's own log-probs, for truncated importance sampling
            batch["sampler_logps"] = pad_logprobs(gen.logprobs, batch["completion_ids"].shape[1]).to(self.device)
        # Shuffled before it is cut into micro-batches, as TRL does (seeded: a resumed run cuts it alike).
        order = generation_order(len(gen.completion_ids), self.args.seed, step)
        batch = {k: v[order] for k, v in batch.items()}
        # 3. Behaviour log-probs (when a batch is reused, or made by the weights before an update) and
        #    reference log-probs (beta > 0), on the micro-batches the update will see.
        with self._timed(m, "time/reference_s"):
            old, ref = self._old_and_ref_logps(batch, model)
        batch.update({k: v for k, v in (("old_logps", old), ("ref_logps", ref)) if v is not None})
        return Rollout(rows, prompts, gen, batch, order, m)

    def _next_rollout(self, m: dict) -> "Rollout":
        """grpo.async_generation: this round's rollout (made in the background during the last round's
        updates; the first round makes its own), and the next round's started on the weights of now."""
        pending, self.pending_rollout = self.pending_rollout, None
        if pending is None:  # the first round (or the first after a resume): on the policy's weights of now
            copy_weights(self.rollout_model, self.model)
            rollout = self._rollout(self._sample_prompts(), self.step, self.rollout_model)
        else:
            with self._timed(m, "time/rollout_wait_s"):  # what the background did not hide
                rollout = pending.result()
        if self.step + self.updates_per_generation < self.args.max_steps:  # a later round will use it
            with self._timed(m, "time/weight_sync_s"):
                copy_weights(self.rollout_model, self.model)
            self.pending_rollout = self.rollout_pool.submit(
                self._rollout, self._sample_prompts(), self.step + self.updates_per_generation, self.rollout_model)
        return rollout

    # ------------------------------------------------------------------ the step's parts
    def _repeat(self, xs: list) -> list:
        """Each item G times, adjacent (a prompt's group)."""
        return [x for x in xs for _ in range(self.args.num_generations)]

    def _sample_prompts(self) -> tuple[list, list, list[str]]:
        sync = self.grad_sync
        ids = self.sampler.next(self.prompts_per_step)
        ids = ids[sync.rank * self.prompts_per_process:(sync.rank + 1) * self.prompts_per_process]
        rows = [self.train_dataset[i] for i in ids]
        prompts = [row[self.data.prompt_column] for row in rows]
        texts = [format_prompt(self.tokenizer, p, self.data.system_prompt, self.data.use_chat_template)
                 for p in prompts]
        return rows, prompts, texts

    def _generate(self, prompt_texts: list[str], step: int):
        args, sampling = self.args, self.sampling
        if args.deterministic_rollouts:  # a seed per prompt of the step: the same on any number of processes
            first = self.grad_sync.rank * self.prompts_per_process
            sampling = dataclasses.replace(sampling, seeds=tuple(
                (args.seed * 1_000_003 + step * 10_007 + first + i) % 2**31 for i in range(len(prompt_texts))))
        with self.grad_sync.full_parameters(self.model):  # a sharded model: one all-gather, not one per token
            return self.backend.generate(prompt_texts, args.num_generations, sampling)

    def _score(self, rows: list, prompts: list, gen, m: dict) -> tuple[list[list[float]], list[float], dict]:
        """Per-function rewards, weighted totals and the columns reward functions logged; their
        log_metric values go into `m` (averaged over the step, as TRL does)."""
        columns = {k: self._repeat([row[k] for row in rows]) for k in rows[0] if k != self.data.prompt_column}
        completions = gen.texts if isinstance(prompts[0], str) else [[{"role": "assistant", "content": c}]
                                                                      for c in gen.texts]
        extra_columns: dict[str, list] = defaultdict(list)
        reward_metrics: dict[str, list[float]] = defaultdict(list)
        self.trainer_state.global_step = self.updates
        self.guard.start_round()
        per_func, totals = score(self.reward_funcs, self.reward_weights, self._repeat(prompts), completions, columns,
                                 nonfinite=self.guard.reward,
                                 completion_ids=gen.completion_ids, trainer_state=self.trainer_state,
                                 log_extra=lambda column, values: extra_columns[column].extend(values),
                                 log_metric=lambda name, value: reward_metrics[name].append(float(value)))
        m.update({name: sum(v) / len(v) for name, v in reward_metrics.items()})
        return per_func, totals, extra_columns

    def _advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        args, sync = self.args, self.grad_sync
        batch_std = None
        if args.scale_rewards == "batch" and sync.world_size > 1:
            batch_std = std_from_moments(*sync.all_reduce_sum(reward_moments(rewards)))
        return group_advantages(rewards, args.num_generations, args.scale_rewards, batch_std).to(self.device)

    def _old_and_ref_logps(self, batch: dict, model: torch.nn.Module):
        """Behaviour log-probs under `model`, the weights that generated the batch (needed when the batch
        is reused, or is a step old under grpo.async_generation), and reference log-probs, micro-batch by
        micro-batch (the update's rows together, so a policy still equal to the reference gets exactly its
        log-probs, and the peak memory of one)."""
        size = self.args.per_device_train_batch_size
        rows = len(batch["completion_ids"])
        chunks = [{k: v[i:i + size] for k, v in batch.items()} for i in range(0, rows, size)]
        with torch.no_grad():
            old = (torch.cat([self._logps(model, mb)[0] for mb in chunks])
                   if self.updates_per_generation > 1 or model is not self.model else None)
            ref = None
            if self.ref_model is not None:  # on the model's device for this pass only when offloaded
                with visiting(self.ref_model, self.device, self.ref_home) as model:
                    ref = torch.cat([self._logps(model, mb)[0] for mb in chunks])
        return old, ref

    def _update(self, batch: dict, use_tis: bool, m: dict) -> list[tuple[float, float]]:
        """The optimizer updates on one generation batch; their loss metrics go into `m`.
        Returns, per update, the wall-clock times this rank entered and left the gradient sync."""
        args, sync = self.args, self.grad_sync
        n_micro, size = args.gradient_accumulation_steps, args.per_device_train_batch_size
        per_pass = self.updates_per_generation // args.num_iterations  # updates per pass over the batch
        n_updates = max(1, min(self.updates_per_generation, args.max_steps - self.step))  # a last round may stop early
        rows = n_micro * size  # rows of one update
        tokens_per_update = batch["completion_mask"].view(per_pass, -1).sum(1)  # the rows of update u: u % per_pass
        processed_tokens = sum(float(tokens_per_update[u % per_pass]) for u in range(n_updates))  # for metric means
        global_tokens = sync.all_reduce_sum([float(batch["completion_mask"].sum())])[0]
        sums = {"loss": 0.0, "kl": 0.0, "clip_ratio/low": 0.0, "clip_ratio/high": 0.0, "entropy": 0.0}
        stamps: list[tuple[float, float]] = []
        grad_norm, sync_s, start = 0.0, 0.0, time.perf_counter()
        self.model.train()
        for update in range(n_updates):
            first = (update % per_pass) * rows
            for k in range(n_micro):
                mb = {key: v[first + k * size: first + (k + 1) * size] for key, v in batch.items()}
                loss, stats, entropy, tis = self._micro_batch_loss(
                    mb, use_tis, n_micro, global_tokens / sync.world_size / per_pass)
                loss.backward()
                s = time.perf_counter()
                sync.after_backward(self.model)
                sync_s += time.perf_counter() - s
                w = stats.tokens / max(processed_tokens, 1.0)  # token-weighted means
                loss_value = loss.item()
                self.guard.loss(loss_value)
                sums["loss"] += loss_value / n_updates
                sums["kl"] += stats.kl * w
                sums["clip_ratio/low"] += stats.clip_ratio_low * w
                sums["clip_ratio/high"] += stats.clip_ratio_high * w
                sums["entropy"] += float((entropy * mb["completion_mask"]).sum()) / max(processed_tokens, 1.0)
                for key, v in tis.items():
                    sums[key] = sums.get(key, 0.0) + v / (n_micro * n_updates)
            s, entered = time.perf_counter(), time.time()  # wall clock: comparable between ranks of one host
            sync.finish(self.updates)
            stamps.append((entered, time.time()))
            sync_s += time.perf_counter() - s
            if args.max_grad_norm > 0:
                clip = getattr(self.optimizer, "clip_grad_norm_", None)  # a sharded optimizer sees only its shard
                grad_norm = float(clip(args.max_grad_norm) if clip else
                                  torch.nn.utils.clip_grad_norm_(self.model.parameters(), args.max_grad_norm))
            # non-finite rewards, losses or gradients on any rank: error, or skip this update on every rank
            if self.guard.allows_update(self.model, grad_norm if args.max_grad_norm > 0 else None, self.updates + 1):
                self.optimizer.step()
            s = time.perf_counter()
            sync.after_optimizer_step(self.model, self.optimizer, self.updates)
            sync_s += time.perf_counter() - s
            self.updates += 1
            if args.sync_ref_model and self.updates % args.ref_model_sync_steps == 0:
                mix_reference(self.ref_model, self.model, args.ref_model_mixup_alpha)
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        m.update(sums)
        m["grad_norm"] = grad_norm
        m["nonfinite/skipped_steps"] = float(self.guard.skipped_steps)
        m["time/sync_s"] = sync_s
        m["time/update_s"] = time.perf_counter() - start - sync_s
        return stamps

    def _micro_batch_loss(self, mb: dict, use_tis: bool, n_micro: int, num_items_in_batch: float):
        """(loss, its stats, per-token entropy, TIS metrics) of one micro-batch under the policy."""
        args = self.args
        logps, entropy = self._logps(self.model, mb, with_entropy=True)
        behaviour = mb["old_logps"] if "old_logps" in mb else logps.detach()
        is_w, tis = None, {}
        if use_tis:
            is_w = tis_weights(behaviour, mb["sampler_logps"], mb["completion_mask"], self.tis.cap, self.tis.level)
            tis = tis_metrics(behaviour, mb["sampler_logps"], mb["completion_mask"], self.tis.cap, self.tis.level)
        entropy_mask = (high_entropy_mask(entropy, mb["completion_mask"], args.top_entropy_quantile)
                        if args.top_entropy_quantile < 1.0 else None)
        loss, stats = grpo_loss(
            logps, behaviour, mb["advantages"], mb["completion_mask"], loss_type=args.loss_type,
            epsilon_low=args.epsilon_low, epsilon_high=args.epsilon_upper, beta=args.beta,
            ref_logps=mb.get("ref_logps"), max_completion_length=args.max_completion_length,
            num_micro_batches=n_micro,
            num_items_in_batch=num_items_in_batch,  # TRL: the batch's tokens over processes, one update's share
            is_weights=is_w, importance_sampling_level=args.importance_sampling_level, delta=args.delta,
            use_bias_correction_kl=args.use_bias_correction_kl, entropy_mask=entropy_mask,
            sapo_temperature_pos=args.sapo_temperature_pos, sapo_temperature_neg=args.sapo_temperature_neg)
        return loss, stats, entropy, tis

    @staticmethod
    @contextlib.contextmanager
    def _timed(m: dict, name: str):
        """Add the block's wall-clock seconds to metric `name`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            m[name] = m.get(name, 0.0) + time.perf_counter() - start

    def _step_metrics(self, m: dict, per_func, rewards: torch.Tensor, advantages: torch.Tensor, gen) -> None:
        """This process's reward, advantage and completion metrics of the step."""
        for name, values in zip(self.reward_names, per_func):
            v = torch.tensor(values)
            ok = v[~torch.isnan(v)]
            m[f"rewards/{name}/mean"] = float(ok.mean()) if len(ok) else math.nan
            m[f"rewards/{name}/std"] = float(ok.std()) if len(ok) > 1 else math.nan
        scored = rewards[~torch.isnan(rewards)]  # unscorable completions are left out, as in TRL
        m["rewards/total/mean"] = float(scored.mean()) if len(scored) else math.nan
        m["rewards/total/std"] = float(scored.std()) if len(scored) > 1 else math.nan
        m["advantages/mean"], m["advantages/std"] = float(advantages.mean()), float(advantages.std())
        lengths = torch.tensor([len(c) for c in gen.completion_ids], dtype=torch.float32)
        m["completions/mean_length"] = float(lengths.mean())
        m["completions/max_length"] = float(lengths.max())
        m["completions/truncated_fraction"] = sum(gen.truncated) / len(gen.truncated)
        m["learning_rate"] = self.scheduler.get_last_lr()[0]
        m["throughput/tokens_per_s"] = float(lengths.sum()) / m["time/step_s"]

    def _gather_metrics(self, m: dict, stamps: list[tuple[float, float]]) -> dict:
        """The step's metrics over every process, with the sync wait split into skew and collective."""
        per_rank = [stamps]
        if self.grad_sync.world_size > 1:
            m, gathered = self._reduce_metrics(m, [x for pair in stamps for x in pair])
            per_rank = [list(zip(row[::2], row[1::2])) for row in gathered]
        m["time/sync_skew_s"], m["time/sync_collective_s"] = sync_wait_parts(per_rank)
        return m

    def _log_completions(self, prompts, gen, totals, advantages, per_func, extra_columns) -> None:
        if not (self.args.log_completions and self.logger is not None):
            return
        G = self.args.num_generations
        self.logger.log_completions(self.step + 1, [
            {"prompt": prompts[i // G], "completion": gen.texts[i], "reward": totals[i],
             "advantage": float(advantages[i]),
             **{f"rewards/{n}": per_func[j][i] for j, n in enumerate(self.reward_names)},
             **{c: v[i] for c, v in extra_columns.items() if i < len(v)}}
            for i in range(min(self.args.num_completions_to_print, len(gen.texts)))])

    # ------------------------------------------------------------------ helpers
    def _reduce_metrics(self, m: dict[str, float], gather: list[float]) -> tuple[dict[str, float], list[list[float]]]:
        """Metrics of the whole step: means over processes (NaN-aware), maxima for times and
        maximum lengths, sums for throughput; and every rank's `gather` list (same length on all)."""
        keys = sorted(m)
        vals = [0.0 if math.isnan(m[k]) else m[k] for k in keys]
        valid = [0.0 if math.isnan(m[k]) else 1.0 for k in keys]
        tot = self.grad_sync.all_reduce_sum(vals + valid)
        out = {}
        for i, k in enumerate(keys):
            n = tot[len(keys) + i]
            out[k] = tot[i] / n if n else math.nan
        # maxima cannot come from a sum: every rank fills its own row of a zero matrix, summed once
        world, rank = self.grad_sync.world_size, self.grad_sync.rank
        maxed = [k for k in keys if k.startswith("time/") or k.endswith("max_length")]
        mine = [m[k] for k in maxed] + gather
        width = len(mine)
        flat = [0.0] * (world * width)
        flat[rank * width:(rank + 1) * width] = mine
        flat = self.grad_sync.all_reduce_sum(flat)
        table = [flat[r * width:(r + 1) * width] for r in range(world)]
        for j, k in enumerate(maxed):
            out[k] = max(row[j] for row in table)
        if "throughput/tokens_per_s" in out:
            out["throughput/tokens_per_s"] *= world
        return out, [row[len(maxed):] for row in table]

    def _batch(self, prompt_texts: list[str], completion_ids: list[list[int]], truncated: list[bool]) -> dict:
        enc = encode_prompts(self.tokenizer, prompt_texts, self.args.max_prompt_length)
        width = max(1, max(len(c) for c in completion_ids))
        pad = self.tokenizer.pad_token_id
        comp = torch.full((len(completion_ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(completion_ids), width), dtype=torch.long)
        for i, c in enumerate(completion_ids):
            comp[i, :len(c)] = torch.tensor(c, dtype=torch.long)
            mask[i, :len(c)] = 1
        attention = torch.cat([enc["attention_mask"], mask], dim=1)
        if self.args.mask_truncated_completions:
            mask = mask * (~torch.tensor(truncated)).long().unsqueeze(1)
        batch = {"input_ids": torch.cat([enc["input_ids"], comp], dim=1), "attention_mask": attention,
                 "completion_ids": comp, "completion_mask": mask}
        return {k: v.to(self.device) for k, v in batch.items()}

    def _logps(self, model, batch: dict, with_entropy: bool = False):
        """Per-token log-probs of the completion tokens (and their entropies) under `model`: the forward
        under bf16 autocast when grpo.bf16 (its backward then runs in the same dtypes), log-probs in fp32;
        all-padding columns dropped and each distinct prompt run once (trainer/passes.py), 0 on dropped
        columns."""
        n = batch["completion_ids"].shape[1]
        with autocast(self.device, self.args.bf16):
            logits, kept = completion_logits(model, batch["input_ids"], batch["attention_mask"], n,
                                             share_prefix=self._share_prefix(model), trim=self.args.trim_padding)
        logps = token_logps(logits, batch["completion_ids"][:, :kept], self.args.temperature)
        entropy = token_entropy(logits, self.args.temperature) if with_entropy else None
        if kept < n:
            logps = torch.nn.functional.pad(logps, (0, n - kept))
            entropy = None if entropy is None else torch.nn.functional.pad(entropy, (0, n - kept))
        return logps, entropy

    def _share_prefix(self, model) -> bool:
        """Prompt KV caches shared by a group's completions: not under gradient checkpointing (transformers
        turns the cache off there) nor on an FSDP2-sharded model (one forward per micro-batch there)."""
        return (self.args.share_prompt_prefix and not (model.training and self.args.gradient_checkpointing)
                and not self._sharded(model))

    @staticmethod
    def _sharded(model: torch.nn.Module) -> bool:
        from torch.distributed.fsdp import FSDPModule

        return isinstance(model, FSDPModule)

    def evaluate(self) -> dict[str, float]:
        if self.eval_dataset is None:
            return {}
        rows = [self.eval_dataset[i] for i in range(min(len(self.eval_dataset), self.data.eval_max_samples))]
        with self.grad_sync.full_parameters(self.model):
            return evaluate_exact_match(self.model, self.tokenizer, rows,
                                        max_new_tokens=self.args.max_completion_length,
                                        prompt_column=self.data.prompt_column, answer_column=self.data.answer_column,
                                        system_prompt=self.data.system_prompt,
                                        use_chat_template=self.data.use_chat_template,
                                        num_generations=self.args.num_generations_eval,
                                        temperature=self.args.temperature, top_p=self.args.top_p,
                                        seed=self.args.seed + self.step)

    def save(self, out_dir: Path) -> Path:
        """Checkpoint on every rank: each writes its RNG state (and optimizer shard), rank 0 seals it."""
        sync = self.grad_sync
        return save_checkpoint(out_dir, self.step, self.model, self.tokenizer, self.optimizer, self.scheduler,
                               self.sampler.state_dict(), keep=self.args.save_total_limit, rank=sync.rank,
                               world_size=sync.world_size, barrier=lambda: sync.all_reduce_sum([0.0]),
                               sharded_optimizer=self._sharded_optimizer,
                               any_rank=lambda flag: sync.all_reduce_sum([float(flag)])[0] > 0)

    @property
    def _sharded_optimizer(self) -> bool:
        return self.grad_sync.optimizer_is_sharded  # make_optimizer gave a ShardedOptimizer

    # ------------------------------------------------------------------ the loop
    def train(self, resume_from_checkpoint: bool | str = False, progress: bool = True) -> dict[str, float]:
        """Run max_steps steps; returns the last logged metrics (with eval/* before and after)."""
        from tqdm import tqdm

        args, out = self.args, Path(self.args.output_dir)
        if resume_from_checkpoint:
            path = latest_checkpoint(out) if resume_from_checkpoint is True else Path(resume_from_checkpoint)
            if path is None:
                raise UserError(f"--resume: no checkpoint under {out / 'checkpoints'}")
            if not self.grad_sync.supports_resume:
                raise UserError("--resume: not supported with a strategy that averages replicas across sites "
                                "(local_sgd: its outer anchor and momentum are not in the checkpoint); start a "
                                "new run or use another strategy")
            state = load_checkpoint(path, self.model, self.optimizer, self.scheduler, rank=self.grad_sync.rank,
                                    world_size=self.grad_sync.world_size,
                                    sharded_optimizer=self._sharded_optimizer)
            self.grad_sync.reload_parameters()  # the sync may hold a copy of the weights: refresh it
            self.step = state["step"]
            self.updates = self.step  # a step is an optimizer update
            self.sampler.load_state_dict(state["data"])
            self.backend.update_weights(self.model)  # a separate engine must not keep the start weights
        is_main = self.grad_sync.rank == 0
        resumed_at = self.step if resume_from_checkpoint else None
        if is_main and resumed_at is not None:
            truncate_logs(out, resumed_at)  # the steps after the checkpoint are logged again below
        self.logger = MetricsLogger(out, args.report_to, resumed_at, dataclasses.asdict(args)) if is_main else None
        summary: dict[str, float] = {}
        if self.step == 0 and self.eval_dataset is not None:
            summary.update({f"{k}_start": v for k, v in self.evaluate().items()})
            self._log(0, {k[:-len("_start")]: v for k, v in summary.items()})
        bar = tqdm(total=args.max_steps, initial=self.step, disable=not (progress and is_main), desc="train",
                   unit="step", dynamic_ncols=True)
        last: dict[str, float] = {}
        while self.step < args.max_steps:
            metrics = self.train_step()
            before, self.step = self.step, self.updates  # one round: updates_per_generation steps
            last = metrics
            bar.update(self.step - before)
            bar.set_postfix(reward=f"{metrics['rewards/total/mean']:.3f}", s_per_step=f"{metrics['time/step_s']:.2f}")
            reached = lambda every: self.step // every > before // every  # noqa: E731 (a multiple of `every` passed)
            if args.eval_steps and reached(args.eval_steps) and self.step < args.max_steps:
                metrics.update(self.evaluate())
            if reached(args.logging_steps) or self.step == args.max_steps:
                self._log(self.step, metrics)
            if reached(args.save_steps) or self.step == args.max_steps:  # every rank takes part
                self.save(out)
        bar.close()
        self.grad_sync.flush()  # a parameter sync overlapping the last steps completes
        if self.eval_dataset is not None:
            final = self.evaluate()
            self._log(self.step, final)
            summary.update({f"{k}_end": v for k, v in final.items()})
        weights = export_state_dict(self.model)  # every rank: a sharded model gathers its shards
        if is_main:
            save_final_model(self.model, self.tokenizer, out / "final", weights)
            self.logger.close()
        return {**last, **summary}

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        if self.logger is not None:
            self.logger.log(step, metrics)
