"""`hdc` subcommands of the trainer: train, recipe validate/show, make-tiny-model, make-arith-data, sft, eval,
generate.

Registered through the `hdc.commands` entry point; torch and transformers are imported
inside the handlers so `hdc --help` stays fast. `python -m trainer.cli ...` runs these
commands alone.
"""
from __future__ import annotations

import json
import sys

import yaml

from hdc.commands import MAX_LOCAL_PROCESSES, add_strategy_args, positive_int, strategy_knobs
from hdc.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="Train a causal LM with GRPO from a YAML recipe.",
                              description="Train a causal LM with GRPO from a YAML recipe.")
    p.add_argument("recipe", help="recipe YAML file (see recipes/)")
    p.add_argument("--out", help="output directory (overrides grpo.output_dir)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set grpo.max_steps=10 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in the output dir (same recipe) from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in the output dir (its checkpoints, logs and final model are removed)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--nproc", type=positive_int("--nproc", MAX_LOCAL_PROCESSES), default=None, metavar="N",
                   help="data-parallel processes on this machine (default: the topology's GPU count, or 1)")
    p.add_argument("--topology", default=None, metavar="PATH|PRESET",
                   help="lay the processes out on this topology (sets distributed.topology)")
    add_strategy_args(p, required=False)  # --strategy and every knob: they set distributed.<name>
    p.set_defaults(handler=cmd_train)

    r = subparsers.add_parser("recipe", help="Validate or print a GRPO recipe.")
    rsub = r.add_subparsers(dest="recipe_command", metavar="ACTION", parser_class=subparsers._parser_class)
    rsub.required = True
    for name, handler, text in (("validate", cmd_recipe_validate, "check a recipe; exit 0, or 2 naming the field"),
                                ("show", cmd_recipe_show, "print the fully resolved recipe, defaults included")):
        q = rsub.add_parser(name, help=text, description=text)
        q.add_argument("recipe")
        q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
        q.set_defaults(handler=handler)

    t = subparsers.add_parser("make-tiny-model", help="Build a tiny Qwen2-style model + BPE tokenizer locally.")
    t.add_argument("--out", required=True, help="directory to save_pretrained into")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="TinyModelConfig field, e.g. --set num_hidden_layers=2")
    t.set_defaults(handler=cmd_make_tiny_model)

    d = subparsers.add_parser("make-arith-data", help="Write the arithmetic task's train/heldout/sft JSONL files.")
    d.add_argument("--out", required=True, help="directory for train.jsonl, heldout.jsonl, sft.jsonl")
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="ArithDataConfig field, e.g. --set max_operand=49")
    d.set_defaults(handler=cmd_make_arith_data)

    s = subparsers.add_parser("sft", help="Supervised warm start on prompt/completion JSONL.")
    s.add_argument("--model", required=True, help="model directory to start from")
    s.add_argument("--data", required=True, help="JSONL with prompt and completion columns")
    s.add_argument("--out", required=True, help="directory for the warm-started model")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="SFTConfig field, e.g. --set max_steps=300")
    s.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    s.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    s.set_defaults(handler=cmd_sft)

    e = subparsers.add_parser("eval", help="Held-out exact match and rewards of a trained model.",
                              description="Greedy (or sampled) completions of held-out prompts, scored by exact "
                                          "match against the answer column and by the recipe's rewards (without "
                                          "a recipe: accuracy and format).")
    e.add_argument("target", metavar="RECIPE|MODEL", help="a recipe YAML (its model, rewards, columns, eval "
                                                          "file) or a model folder (OUT/final, a checkpoint)")
    e.add_argument("--model", default=None, help="with a recipe: evaluate this folder instead of its model")
    e.add_argument("--data", default=None, help="JSONL with prompt and answer columns (default: the recipe's "
                                                "data.eval_file)")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set data.answer_column=solution")
    e.add_argument("--max-samples", type=positive_int("--max-samples"), default=None, help="first N rows only")
    e.add_argument("--num-generations", type=positive_int("--num-generations"), default=None, metavar="N",
                   help="N sampled completions per prompt (mean exact match and pass@N) instead of one greedy")
    e.add_argument("--max-new-tokens", type=positive_int("--max-new-tokens"), default=None,
                   help="tokens per completion (default: the recipe's grpo.max_completion_length, or 256)")
    e.add_argument("--seed", type=int, default=0, help="sampling seed (with --num-generations)")
    e.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    e.set_defaults(handler=cmd_eval)

    g = subparsers.add_parser("generate", help="Sample completions from a trained model.",
                              description="Sampled completions of your prompts from a model folder or checkpoint.")
    g.add_argument("model", metavar="MODEL", help="model folder (OUT/final, a checkpoint, a LoRA adapter folder)")
    g.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    g.add_argument("-n", "--num", type=positive_int("--num"), default=1, help="completions per prompt")
    g.add_argument("--max-new-tokens", type=positive_int("--max-new-tokens"), default=128)
    g.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--system-prompt", default=None)
    g.add_argument("--no-chat-template", action="store_true", help="pass prompts as plain text")
    g.add_argument("--json", action="store_true", help="one JSON object per prompt")
    g.set_defaults(handler=cmd_generate)


def _config(cls, overrides: list[str]):
    from hdc.config import from_dict, set_dotted

    data: dict = {}
    for assignment in overrides:
        set_dotted(data, assignment)
    return from_dict(cls, data)


def cmd_recipe_validate(args) -> int:
    from trainer.code_reward import check_code_sandbox
    from trainer.config import load_recipe
    from trainer.device import check_recipe_placement
    from trainer.run import check_recipe_inputs

    recipe = load_recipe(args.recipe, args.overrides)
    check_recipe_placement(recipe)
    check_code_sandbox(recipe)
    check_recipe_inputs(recipe)  # the model folder, data files, columns and topology exist
    print(f"{args.recipe}: ok")
    return 0


def cmd_recipe_show(args) -> int:
    from trainer.config import load_recipe, recipe_to_dict

    recipe = load_recipe(args.recipe, args.overrides)
    sys.stdout.write(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
    return 0


def cmd_train(args) -> int:
    import os

    from trainer.config import load_recipe

    overrides = list(args.overrides)
    if args.topology is not None:
        overrides.append(f"distributed.topology={args.topology}")
    if args.strategy is not None:
        overrides.append(f"distributed.strategy={args.strategy}")
    overrides += [f"distributed.{k}={json.dumps(v)}" for k, v in strategy_knobs(args).items()]
    recipe = load_recipe(args.recipe, overrides)
    from trainer.code_reward import check_code_sandbox
    from trainer.device import check_recipe_placement

    check_recipe_placement(recipe)  # before anything is written
    check_code_sandbox(recipe)
    out = args.out or recipe.grpo.output_dir
    is_rank0 = os.environ.get("RANK", "0") == "0"  # one process decides whose the folder is
    if is_rank0:
        from trainer.config import recipe_to_dict
        from trainer.outdir import check_output_dir

        check_output_dir(out, recipe_to_dict(recipe), resume=args.resume, overwrite=args.overwrite)
    if "WORLD_SIZE" not in os.environ and (args.nproc or recipe.distributed.topology):
        return _launch_local_training(args, recipe, overrides, out)
    from trainer.run import build_grad_sync, build_trainer, check_recipe_inputs, write_resolved

    if "WORLD_SIZE" not in os.environ:  # where the user started it (the ranks a launcher starts were checked)
        check_recipe_inputs(recipe)  # the model folder, data, columns and topology, before anything is written

    if is_rank0 and args.overwrite:
        _clear_run(out)

    progress = not args.no_progress and int(os.environ.get("RANK", "0")) == 0  # one bar, rank 0's, for the job
    quiet_transformers_bars()
    sync = build_grad_sync(recipe)
    if sync.rank == 0:
        write_resolved(recipe, out)
    trainer = build_trainer(recipe, out, grad_sync=sync)
    result = trainer.train(resume_from_checkpoint=args.resume, progress=progress)
    keys = [k for k in ("eval/exact_match_start", "eval/exact_match_end", "eval/format_start", "eval/format_end",
                        "rewards/total/mean", "time/step_s") if k in result]
    if sync.rank == 0:
        print(" ".join(f"{k}={result[k]:.4g}" for k in keys))
        print(f"final model: {out}/final")
    if sync.world_size > 1:
        from trainer.distributed.groups import shutdown_distributed

        shutdown_distributed()
    return 0


def _clear_run(out: str) -> None:
    """--overwrite, once every check passed and just before the first write: remove the old run."""
    from trainer.outdir import clear_run

    removed = clear_run(out)
    if removed:
        print(f"--overwrite: removed {', '.join(removed)} from {out}", file=sys.stderr)


def _launch_local_training(args, recipe, overrides: list[str], out: str) -> int:
    """`hdc train --nproc N [--topology T]`: start every rank on this machine through `hdc launch --local`."""
    import os

    from hdc.sync import check_shard_topology
    from hdc.topology import load_topology, topology_from_dict
    from trainer.distributed.launch import launch_local

    topo_arg = recipe.distributed.topology
    if recipe.distributed.shard_within_site:  # before anything is written
        check_shard_topology(load_topology(topo_arg) if topo_arg else topology_from_dict(local_topology(args.nproc)))
    from trainer.run import check_recipe_inputs

    check_recipe_inputs(recipe)
    if args.overwrite:  # the ranks start in a folder without the old run (they are not given --overwrite)
        _clear_run(out)
    if topo_arg is None:
        os.makedirs(out, exist_ok=True)
        topo_arg = os.path.join(out, "topology.yaml")
        with open(topo_arg, "w", encoding="utf-8") as fh:
            yaml.safe_dump(local_topology(args.nproc), fh)
    n = load_topology(topo_arg).num_gpus
    if args.nproc is not None and args.nproc != n:
        raise UserError(f"--nproc: the topology {topo_arg} has {n} GPUs, one process each; got --nproc {args.nproc}")
    cmd = [sys.executable, "-m", "hdc.cli", "train", args.recipe, "--out", out,
           *(["--no-progress"] if args.no_progress else []),  # the other ranks are quiet by themselves
           *[x for o in overrides if not o.startswith("distributed.topology=") for x in ("--set", o)],
           "--set", f"distributed.topology={topo_arg}"] + (["--resume"] if args.resume else [])
    return launch_local(topo_arg, cmd, timeout_s=recipe.distributed.timeout_s,
                        backend=None if recipe.distributed.backend == "auto" else recipe.distributed.backend)


def quiet_transformers_bars() -> None:
    """transformers' own bars ("Loading weights", "Writing model shards" at every checkpoint)
    off: hdc train and sft show one bar of their own, or none with --no-progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def local_topology(n: int) -> dict:
    """One site of n CPU ranks on this machine (what `--nproc N` means without a topology)."""
    tier = {"latency": "20us", "bandwidth": "2GB/s"}
    return {"name": f"local-{n}", "description": f"{n} local processes, loopback",
            "gpu": {"name": "cpu-rank", "peak_flops": "50GFLOPS", "memory": "4GB"},
            "sites": [{"name": "local", "nodes": 1, "gpus_per_node": n, "intra_node": tier, "intra_pod": tier}],
            "assumptions": ["ASSUMPTION: CPU processes on one machine over loopback"]}


def cmd_make_tiny_model(args) -> int:
    from trainer.tiny import TinyModelConfig, count_parameters, make_tiny_model

    out = make_tiny_model(args.out, _config(TinyModelConfig, args.overrides))
    from transformers import AutoModelForCausalLM

    n = count_parameters(AutoModelForCausalLM.from_pretrained(out))
    print(f"wrote {out} ({n / 1e6:.2f}M parameters)")
    return 0


def cmd_make_arith_data(args) -> int:
    from trainer.arith import ArithDataConfig, make_arith_data

    paths = make_arith_data(args.out, _config(ArithDataConfig, args.overrides))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def cmd_sft(args) -> int:
    from trainer.sft import SFTConfig, sft

    quiet_transformers_bars()
    result = sft(args.model, args.data, args.out, _config(SFTConfig, args.overrides), resume=args.resume,
                 progress=not args.no_progress)
    resumed = f", resumed at step {result['first_step']}" if args.resume else ""
    print(f"wrote {args.out} (final loss {result['loss']:.4f}, {result['time_s']:.1f} s{resumed})")
    return 0


def cmd_eval(args) -> int:
    from pathlib import Path

    from trainer.evaluate import evaluate_model

    kwargs: dict = {"max_new_tokens": args.max_new_tokens or 256}
    model, data = args.target, args.data
    if Path(args.target).is_file() or args.target.endswith((".yaml", ".yml")):  # a recipe
        from trainer.config import load_recipe, recipe_to_dict

        recipe = load_recipe(args.target, args.overrides)
        d = recipe.data
        model, data = args.model or recipe.model.name_or_path, args.data or d.eval_file
        if data is None:
            raise UserError(f"--data: {args.target} has no data.eval_file; pass --data FILE")
        kwargs.update(reward_specs=recipe_to_dict(recipe)["rewards"], prompt_column=d.prompt_column,
                      answer_column=d.answer_column, system_prompt=d.system_prompt,
                      use_chat_template=d.use_chat_template, temperature=recipe.grpo.temperature,
                      top_p=recipe.grpo.top_p, max_new_tokens=args.max_new_tokens or recipe.grpo.max_completion_length)
    elif args.model or args.overrides:
        raise UserError(f"{'--model' if args.model else '--set'}: only with a recipe; {args.target} is a model")
    elif data is None:
        raise UserError("--data: required with a model (a JSONL file with prompt and answer columns)")
    quiet_transformers_bars()
    metrics = evaluate_model(model, data, max_samples=args.max_samples, num_generations=args.num_generations,
                             seed=args.seed, **kwargs)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{model} on {data}:")
        for k, v in metrics.items():
            print(f"  {k:<28} {v:.4g}" if isinstance(v, float) else f"  {k:<28} {v}")
    return 0


def cmd_generate(args) -> int:
    from trainer.evaluate import generate

    if not args.temperature >= 0:
        raise UserError(f"--temperature: must be >= 0 (0 = greedy), got {args.temperature}")
    if args.temperature == 0 and args.num > 1:
        raise UserError(f"--num: greedy decoding (--temperature 0) gives one completion per prompt, got {args.num}")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p: must be in (0, 1], got {args.top_p}")
    quiet_transformers_bars()
    outs = generate(args.model, args.prompt, num=args.num, max_new_tokens=args.max_new_tokens,
                    temperature=args.temperature, top_p=args.top_p, seed=args.seed, system_prompt=args.system_prompt,
                    use_chat_template=False if args.no_chat_template else "auto")
    for prompt, completions in zip(args.prompt, outs):
        if args.json:
            print(json.dumps({"prompt": prompt, "completions": completions}))
            continue
        print(f"### {prompt}")
        for i, c in enumerate(completions):
            print(f"--- [{i}] {c}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """These commands without the rest of `hdc` (same exit statuses)."""
    from hdc.cli import _Parser

    parser = _Parser(prog="hdc")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    register(sub)
    try:
        args = parser.parse_args(argv)
        return int(args.handler(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
