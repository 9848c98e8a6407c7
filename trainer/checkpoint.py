"""Checkpoints: model (safetensors), optimizer, scheduler, per-rank RNG and data position.

Layout of OUT/checkpoints/:

    step-00000042/          model.safetensors + config + tokenizer (save_pretrained; a LoRA run:
                            adapter_model.safetensors + adapter_config.json, the adapters only),
                            optimizer.pt        (or optimizer.rank{r}.pt: one shard per rank, ZeRO-1 or
                                                 FSDP2 with distributed.shard_within_site)
                            scheduler.pt, trainer_state.json,
                            rng.pt              (rank 0; rng.rank{r}.pt for the other ranks)
                            manifest.json       size and sha256 of every file above, written last
OUT/latest_checkpoint holds "checkpoints/step-00000042": the newest sealed checkpoint, the one
resume takes (validated; when it is missing or damaged, resume takes the newest complete one).

Atomicity: a checkpoint is written to `.tmp-step-.../`, every file and the directory are
fsynced, the manifest is written (and fsynced) last, the directory is renamed into place
and the parent fsynced; `latest_checkpoint` is replaced with write-temp + fsync + os.replace. Old
checkpoints are renamed to `.trash-...` before they are deleted. A process killed at any
moment therefore leaves either a complete checkpoint or a directory that `latest_checkpoint`
skips with a warning (no manifest, missing or changed files).

Safe loading: model weights only from safetensors, everything else with
torch.load(weights_only=True); a file that needs pickle to load is refused (UserError).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Callable, Optional

import torch

from hdc.errors import UserError

PREFIX = "step-"
MANIFEST = "manifest.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft's name: a LoRA run checkpoints its adapters only
LATEST = "latest_checkpoint"  # in OUT/, next to checkpoints/
log = logging.getLogger(__name__)


def checkpoint_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"{PREFIX}{step:08d}"


def rng_file(rank: int) -> str:
    return "rng.pt" if rank == 0 else f"rng.rank{rank}.pt"


def optimizer_shard_file(rank: int) -> str:
    return f"optimizer.rank{rank}.pt"


# ---------------------------------------------------------------------- writing
def save_checkpoint(out_dir: str | Path, step: int, model, tokenizer, optimizer, scheduler,
                    data_state: dict, keep: int | None = None, *, rank: int = 0, world_size: int = 1,
                    barrier: Optional[Callable[[], None]] = None, sharded_optimizer: bool = False,
                    any_rank: Optional[Callable[[bool], bool]] = None) -> Path:
    """Write checkpoint `step` atomically. Called on every rank (barrier = a collective that
    every rank reaches); each rank writes its RNG state (and its optimizer shard when
    `sharded_optimizer`), then rank 0 writes the rest, the manifest, renames and points
    `latest` at it. Returns the final directory.

    Weights holding NaN/inf are never sealed: every rank checks its full weights and
    `any_rank(flag)` (a collective, also the barrier before sealing) makes every rank raise
    NonFiniteError alike; the unsealed temporary folder is removed."""
    final = checkpoint_dir(out_dir, step)
    tmp = final.parent / f".tmp-{final.name}"
    barrier = barrier or (lambda: None)
    if rank == 0:
        for stale in partial_dirs(out_dir):  # leftovers of a killed run (already warned about on resume)
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()  # the directory exists (and holds no stale files) before any rank writes into it
    _save_torch(rng_state(), tmp / rng_file(rank))
    if sharded_optimizer:  # ZeRO-1 or FSDP2: the optimizer's state (and master copy) of this rank's shard
        _save_torch({"state": optimizer.state_dict()}, tmp / optimizer_shard_file(rank))
    weights = full_state_dict(model)  # every rank takes part when the model is sharded (FSDP2)
    bad = nonfinite_tensor(weights)
    any_rank = any_rank or (lambda flag: (barrier(), flag)[1])
    if any_rank(bad is not None):  # every rank's files are on disk before rank 0 seals the checkpoint
        from trainer.guards import NonFiniteError

        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        where = f"weight {bad!r}" if bad else "another rank's weights"
        raise NonFiniteError(f"checkpoint of step {step}: {where} holds NaN/inf; not sealed (the newest sealed "
                             f"checkpoint is still {latest_checkpoint_name(out_dir)})")
    if rank != 0:
        return final
    model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if not sharded_optimizer:
        _save_torch(optimizer.state_dict(), tmp / "optimizer.pt")
    _save_torch(scheduler.state_dict(), tmp / "scheduler.pt")
    state = {"step": step, "data": data_state, "world_size": world_size, "sharded_optimizer": sharded_optimizer}
    _write_bytes(tmp / "trainer_state.json", json.dumps(state, indent=2).encode())
    files = {}
    for p in sorted(tmp.iterdir()):
        _fsync_file(p)
        files[p.name] = {"size_bytes": p.stat().st_size, "sha256": _sha256(p)}
    manifest = {"step": step, "world_size": world_size, "files": files}
    _write_bytes(tmp / MANIFEST, json.dumps(manifest, indent=2).encode())  # last: its presence means complete
    _fsync_dir(tmp)
    if final.exists():  # an earlier, unusable copy of this step
        _discard(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    _write_atomic(Path(out_dir) / LATEST, f"checkpoints/{final.name}\n")
    if keep is not None:
        for old in list_checkpoints(out_dir)[:-keep]:
            _discard(old)
    return final


def nonfinite_tensor(weights: dict) -> str | None:
    """The name of the first floating-point tensor holding NaN/inf, or None."""
    for name, t in weights.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def latest_checkpoint_name(out_dir: str | Path) -> str:
    """What OUT/latest_checkpoint points at, or 'none'."""
    path = Path(out_dir) / LATEST
    return path.read_text().strip() if path.is_file() else "none"


def full_state_dict(model) -> dict:
    """The model's state dict with full tensors: a DTensor (an FSDP2 shard) is all-gathered, a
    COLLECTIVE over its mesh, so every rank holding shards must call this."""
    from torch.distributed.tensor import DTensor

    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in model.state_dict().items()}


def as_model_placement(model, weights: dict) -> dict:
    """Full tensors (from safetensors) laid out as the model holds them: where the model has a
    DTensor, this rank's shard of the full tensor (cut locally, no communication)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    held = model.state_dict()
    return {k: distribute_tensor(v, held[k].device_mesh, held[k].placements, src_data_rank=None)
            if isinstance(held.get(k), DTensor) else v for k, v in weights.items()}


def rng_state() -> dict:
    """Python, numpy and torch (CPU, and CUDA when present) RNG state as weights-only types."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                          "has_gauss": int(has_gauss), "gauss": float(gauss)}
    except ImportError:
        pass
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["gauss"]))


# ---------------------------------------------------------------------- finding and validating
def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Every step-* directory, oldest first (complete or not)."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def partial_dirs(out_dir: str | Path) -> list[Path]:
    """Leftovers of interrupted writes or deletes (.tmp-*, .trash-*): never resumed from."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith((".tmp-", ".trash-")))


def validate_checkpoint(path: str | Path, verify_hashes: bool = True) -> Optional[str]:
    """None if `path` is a complete checkpoint, else why not (one line)."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return "no manifest.json (the write did not finish)"
    except (ValueError, KeyError, TypeError) as e:
        return f"unreadable manifest.json ({e})"
    required = {weights_file(files), "scheduler.pt", "trainer_state.json", "rng.pt"}
    if not required <= set(files):
        return f"manifest lists no {sorted(required - set(files))}"
    for name, meta in files.items():
        p = path / name
        if not p.is_file():
            return f"missing {name}"
        if p.stat().st_size != meta["size_bytes"]:
            return f"{name} has {p.stat().st_size} bytes, the manifest says {meta['size_bytes']}"
        if verify_hashes and _sha256(p) != meta["sha256"]:
            return f"{name} does not match its sha256 in the manifest"
    return None


def pointed_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint OUT/latest_checkpoint names (None without one, or when it names anything
    but a step-* folder of OUT/checkpoints)."""
    try:
        name = (Path(out_dir) / LATEST).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    parts = Path(name).parts
    if len(parts) != 2 or parts[0] != "checkpoints" or not parts[1].startswith(PREFIX):
        log.warning("checkpoint: ignoring %s: it names %r, not checkpoints/%s...", LATEST, name, PREFIX)
        return None
    return Path(out_dir) / name


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint `latest_checkpoint` names when it is complete, else the newest complete one;
    incomplete or corrupt ones are skipped with a warning."""
    for d in partial_dirs(out_dir):
        log.warning("checkpoint: ignoring partial directory %s (an interrupted write or delete)", d)
    pointed = pointed_checkpoint(out_dir)
    if pointed is not None:
        problem = validate_checkpoint(pointed)
        if problem is None:
            return pointed
        log.warning("checkpoint: %s names %s, which is not usable (%s); taking the newest complete one",
                    LATEST, pointed, problem)
    for path in reversed(list_checkpoints(out_dir)):
        problem = validate_checkpoint(path)
        if problem is None:
            return path
        log.warning("checkpoint: ignoring incomplete checkpoint %s: %s", path, problem)
    return None


# ---------------------------------------------------------------------- loading
def load_checkpoint(path: str | Path, model, optimizer, scheduler, *, rank: int = 0, world_size: int = 1,
                    sharded_optimizer: bool = False) -> dict:
    """Restore model weights, optimizer (this rank's shard if sharded), scheduler and this
    rank's RNG in place; returns trainer_state.json."""
    from safetensors.torch import load_file

    path = Path(path)
    problem = validate_checkpoint(path, verify_hashes=False)
    if problem is not None:
        raise UserError(f"--resume: {path} is not a complete checkpoint: {problem}")
    state = json.loads((path / "trainer_state.json").read_text())
    saved_world, saved_sharded = state.get("world_size", 1), state.get("sharded_optimizer", False)
    if saved_sharded != sharded_optimizer or (sharded_optimizer and saved_world != world_size):
        raise UserError(f"--resume: {path} was written by {saved_world} process(es) "
                        f"{'with' if saved_sharded else 'without'} the distributed optimizer; this run has "
                        f"{world_size} {'with' if sharded_optimizer else 'without'} it (optimizer shards differ)")
    refuse_pickled_weights(path)
    adapters = weights_file(os.listdir(path)) == ADAPTER_WEIGHTS
    if adapters != hasattr(model, "peft_config"):
        raise UserError(f"--resume: {path} holds {'LoRA adapters' if adapters else 'full weights'}; set model.lora "
                        f"as the run that wrote it did")
    if adapters:  # a LoRA run: the base weights are the model's own
        from peft import set_peft_model_state_dict

        unexpected = set_peft_model_state_dict(model, load_file(str(path / ADAPTER_WEIGHTS))).unexpected_keys
        if unexpected:
            raise RuntimeError(f"checkpoint {path} does not match the model's adapters: unexpected {unexpected}")
    else:
        _load_model_weights(path, model)
    if sharded_optimizer:
        shard = path / optimizer_shard_file(rank)
        if not shard.is_file():
            raise UserError(f"--resume: {path} has no optimizer shard for rank {rank} ({shard.name})")
        optimizer.load_state_dict(safe_torch_load(shard)["state"])
    else:
        optimizer.load_state_dict(safe_torch_load(path / "optimizer.pt"))
    scheduler.load_state_dict(safe_torch_load(path / "scheduler.pt"))
    rng = path / rng_file(rank)
    if not rng.is_file():
        raise UserError(f"--resume: {path} has no RNG state for rank {rank} ({rng.name}); it was written by "
                        f"{saved_world} process(es)")
    set_rng_state(safe_torch_load(rng))
    return state


def weights_file(names) -> str:
    """The weights a checkpoint holds: peft's adapter file for a LoRA run, else the full model."""
    return ADAPTER_WEIGHTS if ADAPTER_WEIGHTS in names else "model.safetensors"


def _load_model_weights(path: Path, model) -> None:
    from safetensors.torch import load_file

    weights = as_model_placement(model, load_file(str(path / "model.safetensors")))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or any(k not in tied and "lm_head" not in k for k in missing):
        raise RuntimeError(f"checkpoint {path} does not match the model: missing {missing}, unexpected {unexpected}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def safe_torch_load(path: str | Path):
    """torch.load(weights_only=True); a file that needs arbitrary pickle is refused with a UserError."""
    import pickle

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"refusing to load {path}: it holds pickled Python objects, not only tensors and plain "
                        f"data (torch.load weights_only=True failed: {first})") from None


PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.bin", "adapter_model.bin")


def refuse_pickled_weights(model_dir: str | Path) -> None:
    """A model directory must hold its weights in safetensors; pickle-based weights are refused."""
    d = Path(model_dir)
    found = [n for n in PICKLE_WEIGHTS if (d / n).exists()]
    has_safe = any((d / n).exists() for n in ("model.safetensors", "model.safetensors.index.json", ADAPTER_WEIGHTS))
    if found or not has_safe:
        what = f"pickle-based weights ({', '.join(found)})" if found else "no model.safetensors"
        raise UserError(f"model.name_or_path: {d} has {what}; only safetensors weights are loaded "
                        f"(convert with model.save_pretrained(dir, safe_serialization=True))")


# ---------------------------------------------------------------------- file helpers
def _save_torch(obj, path: Path) -> None:
    torch.save(obj, path)
    _fsync_file(path)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    _write_bytes(tmp, text.encode())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(path: Path) -> None:
    """Rename out of the step-* namespace first, so a kill mid-delete leaves no half checkpoint."""
    trash = path.parent / f".trash-{path.name}"
    if trash.exists():
        shutil.rmtree(trash)
    os.replace(path, trash)
    shutil.rmtree(trash)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
