"""Whose is an output folder: `hdc train --out DIR` never mixes two runs.

A folder holding another run (its resolved recipe, metrics, checkpoints or final model) is
refused unless `--resume` continues it with the same recipe (the same `recipe_hash`, up to the
fields a resumed run may change) or `--overwrite` replaces it (only the run's own files are
removed; anything else in the folder stays). Checked before anything is written.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from hdc.errors import UserError
from hdc.outputs import check_output_folder

# What a run writes into its folder (trainer/run.py, trainer/logs.py, trainer/checkpoint.py, grpo.py).
RUN_FILES = ("recipe.resolved.yaml", "metrics.jsonl", "completions.jsonl", "latest_checkpoint", "checkpoints",
             "final", "tb")
RESOLVED = "recipe.resolved.yaml"
# Fields a resumed run may change: how long it runs, where and how often it writes, how long it waits.
RESUMABLE = frozenset({"grpo.output_dir", "grpo.max_steps", "grpo.logging_steps", "grpo.save_steps",
                       "grpo.save_total_limit", "grpo.eval_steps", "grpo.log_completions",
                       "grpo.num_completions_to_print", "distributed.timeout_s", "vllm.server_timeout_s"})
# `hdc train --nproc N` writes this topology into the folder and passes it to every rank.
LOCAL_TOPOLOGY = "topology.yaml"


def run_files(out: str | Path) -> list[str]:
    """The files and folders of a run that `out` holds (empty: no run there)."""
    return [name for name in RUN_FILES if os.path.lexists(os.path.join(out, name))]


def recipe_fields(recipe_dict: dict, out: str | Path) -> dict[str, object]:
    """The recipe as dotted field -> value, without RESUMABLE fields (what identifies a run)."""
    flat: dict[str, object] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif prefix not in RESUMABLE:
            flat[prefix] = value
    walk("", recipe_dict)
    if flat.get("distributed.topology") == os.path.join(str(out), LOCAL_TOPOLOGY):
        flat["distributed.topology"] = None  # the topology `--nproc` wrote here stands for "none given"
    return flat


def recipe_hash(recipe_dict: dict, out: str | Path) -> str:
    """sha256 (first 12 hex digits) of the recipe's identifying fields."""
    blob = json.dumps(recipe_fields(recipe_dict, out), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def check_output_dir(out: str | Path, recipe_dict: dict, *, resume: bool, overwrite: bool) -> None:
    """Refuse `out` if it holds another run, unless resuming the same recipe or overwriting."""
    check_output_folder(str(out), "--out")
    if resume and overwrite:
        raise UserError("--resume and --overwrite: give one (continue the run in --out, or replace it)")
    held = run_files(out)
    if resume:
        if not held:
            raise UserError(f"--resume: {out} holds no run to continue")
        _check_same_recipe(out, recipe_dict)
    elif held and not overwrite:
        raise UserError(f"--out {out}: holds another run ({', '.join(held)}); pass --resume to continue it "
                        f"(same recipe), --overwrite to replace it, or choose a new folder")


def _check_same_recipe(out: str | Path, recipe_dict: dict) -> None:
    from hdc.config import load_yaml

    saved_path = os.path.join(out, RESOLVED)
    if not os.path.isfile(saved_path):
        raise UserError(f"--resume: {out} has no {RESOLVED}, so which recipe it ran is unknown; "
                        f"start a new run (--overwrite or a new --out)")
    saved = load_yaml(saved_path)
    if not isinstance(saved, dict):
        raise UserError(f"--resume: {saved_path} is not a recipe mapping")
    before, now = recipe_fields(saved, out), recipe_fields(recipe_dict, out)
    if recipe_hash(saved, out) == recipe_hash(recipe_dict, out):
        return
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    k = changed[0]
    more = f" (and {len(changed) - 1} more field(s): {', '.join(changed[1:4])})" if len(changed) > 1 else ""
    raise UserError(f"--resume: {out} holds a run of another recipe (hash {recipe_hash(saved, out)}, this one "
                    f"{recipe_hash(recipe_dict, out)}): {k} was {before.get(k)!r}, now {now.get(k)!r}{more}; "
                    f"only {', '.join(sorted(RESUMABLE))} may change on resume")


def clear_run(out: str | Path) -> list[str]:
    """`--overwrite`: remove the run's own files from `out` (nothing else); returns their names."""
    removed = run_files(out)
    for name in removed:
        path = os.path.join(out, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    return removed
