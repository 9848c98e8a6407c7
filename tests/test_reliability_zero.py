"""The distributed optimizer (ZeRO-1) under kill -9: every rank saves and reloads its own
optimizer shard (moments + fp32 master copy), so the resumed run is bit-identical."""
import pytest

from trainer.selfcheck.runs import kill_after_step_5_and_resume


@pytest.mark.multiproc
def test_kill9_of_a_sharded_optimizer_run_then_resume_is_exact(tmp_path):
    out = kill_after_step_5_and_resume(tmp_path, nproc=2, strategy="distributed_optimizer")
    names = {p.name for p in (out / "checkpoints" / "step-00000005").iterdir()}
    assert {"optimizer.rank0.pt", "optimizer.rank1.pt", "rng.pt", "rng.rank1.pt"} <= names
    assert "optimizer.pt" not in names
