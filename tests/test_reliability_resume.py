"""Checkpoints survive `kill -9`: atomic writes, resume from the newest complete one, exact
results, and nothing is loaded through pickle.

The end-to-end tests run `python -m hdc.cli train` as a real process, SIGKILL it after
step 5's checkpoint is sealed, resume with --resume and compare with 10 uninterrupted steps.
"""
import json
import logging
from pathlib import Path

import pytest
import torch

from hdc.errors import UserError
from trainer import checkpoint as ckpt

from trainer.selfcheck.runs import kill_after_step_5_and_resume, tiny_run_assets as assets


def test_kill9_after_step_5_then_resume_is_exact(tmp_path):
    out = kill_after_step_5_and_resume(tmp_path)
    names = {p.name for p in (out / "checkpoints" / "step-00000010").iterdir()}
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json",
            "manifest.json"} <= names
    assert (out / "latest_checkpoint").read_text().strip() == "checkpoints/step-00000010"


# ---------------------------------------------------------------------- in-process checks of the format
class _Tiny(torch.nn.Module):
    """Enough of a model for save_checkpoint/load_checkpoint."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def save_pretrained(self, path, state_dict=None, safe_serialization=True):  # transformers' signature
        from safetensors.torch import save_file

        save_file(state_dict if state_dict is not None else self.state_dict(), str(Path(path) / "model.safetensors"))


def _parts():
    model = _Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.lin(torch.ones(2, 4)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return model, opt, sched


def test_partial_and_corrupt_checkpoints_are_skipped_with_a_warning(tmp_path, caplog):
    model, opt, sched = _parts()
    good = ckpt.save_checkpoint(tmp_path, 1, model, None, opt, sched, {"index": 0})
    torn = ckpt.save_checkpoint(tmp_path, 2, model, None, opt, sched, {"index": 4})
    (torn / "optimizer.pt").write_bytes(b"torn")              # a different size than the manifest says
    no_manifest = ckpt.checkpoint_dir(tmp_path, 3)
    no_manifest.mkdir()                                       # written without a manifest
    (tmp_path / "checkpoints" / ".tmp-step-00000004").mkdir()  # a write that was killed before the rename
    with caplog.at_level(logging.WARNING, logger="trainer.checkpoint"):
        assert ckpt.latest_checkpoint(tmp_path) == good
    text = caplog.text
    assert str(no_manifest) in text and "no manifest.json" in text
    assert str(torn) in text and "optimizer.pt has 4 bytes" in text
    assert ".tmp-step-00000004" in text
    # the same size but other bytes: the sha256 catches it
    data = bytearray((good / "scheduler.pt").read_bytes())
    data[-1] ^= 0xFF
    (good / "scheduler.pt").write_bytes(bytes(data))
    assert "sha256" in ckpt.validate_checkpoint(good)
    assert ckpt.latest_checkpoint(tmp_path) is None


def test_manifest_is_written_last_and_lists_every_file(tmp_path):
    model, opt, sched = _parts()
    path = ckpt.save_checkpoint(tmp_path, 7, model, None, opt, sched, {"index": 0}, keep=1)
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {p.name for p in path.iterdir()} - {"manifest.json"}
    assert all(meta["size_bytes"] == (path / n).stat().st_size for n, meta in manifest["files"].items())
    assert not list((tmp_path / "checkpoints").glob(".*")), "no temporary directory left behind"


def test_rng_state_round_trips(tmp_path):
    import random

    import numpy as np

    model, opt, sched = _parts()
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    path = ckpt.save_checkpoint(tmp_path, 1, model, None, opt, sched, {})
    expect = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(2), random.seed(2), np.random.seed(2)
    ckpt.load_checkpoint(path, *_parts())
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], expect[0]) and got[1:] == expect[1:]


# ---------------------------------------------------------------------- safe loading
class Payload:
    """Arbitrary objects need pickle to load; weights_only refuses them."""

    def __reduce__(self):
        return (print, ("pickle ran code",))


def test_a_pickle_bearing_optimizer_file_is_refused(tmp_path, capsys):
    model, opt, sched = _parts()
    path = ckpt.save_checkpoint(tmp_path, 1, model, None, opt, sched, {})
    torch.save({"state": {}, "param_groups": [], "evil": Payload()}, path / "optimizer.pt")
    with pytest.raises(UserError, match="is not a complete checkpoint: optimizer.pt has"):
        ckpt.load_checkpoint(path, *_parts())  # the manifest no longer matches
    manifest = json.loads((path / "manifest.json").read_text())  # a crafted, self-consistent checkpoint
    manifest["files"]["optimizer.pt"] = {"size_bytes": (path / "optimizer.pt").stat().st_size,
                                         "sha256": ckpt._sha256(path / "optimizer.pt")}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"refusing to load .*optimizer\.pt: it holds pickled Python objects"):
        ckpt.load_checkpoint(path, *_parts())
    assert "pickle ran code" not in capsys.readouterr().out


def test_a_model_dir_with_pytorch_model_bin_is_refused(tmp_path):
    from trainer.config import GRPOConfig
    from trainer.data import load_jsonl
    from trainer.grpo import GRPOTrainer

    (tmp_path / "config.json").write_text("{}")
    torch.save({"w": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match=r"model.name_or_path: .* pickle-based weights \(pytorch_model.bin\)"):
        ckpt.refuse_pickled_weights(tmp_path)
    with pytest.raises(UserError, match="only safetensors weights are loaded"):
        GRPOTrainer(str(tmp_path), ["accuracy"], GRPOConfig(output_dir=str(tmp_path / "out")),
                    load_jsonl(str(assets().data / "train.jsonl")))
