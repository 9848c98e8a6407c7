"""LoRA through peft: only the adapters train, the reference is the base with adapters
disabled, checkpoints hold the adapters, merged weights leave the trainer, DP syncs adapters."""
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from hdc.errors import UserError
from trainer.config import GRPOConfig, load_recipe
from trainer.data import load_jsonl
from trainer.grpo import GRPOTrainer
from trainer.kernels import use_onednn_linear
from trainer.lora import LoraSpec, export_state_dict
from trainer.selfcheck.assets import tiny_assets

pytest.importorskip("peft")


def lora_trainer(out, lora=LoraSpec(r=4, alpha=8), **kw) -> GRPOTrainer:
    assets = tiny_assets()
    args = GRPOConfig(**{**dict(output_dir=str(out), learning_rate=2e-3, num_generations=4,
                                per_device_train_batch_size=8, max_completion_length=32, max_steps=2, save_steps=1,
                                seed=0, beta=0.04), **kw})
    return GRPOTrainer(model=str(assets.sft_model), reward_funcs=["accuracy", "format", "length"], args=args,
                       train_dataset=load_jsonl(str(assets.data / "train.jsonl")), lora=lora)


def adapter_numel(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


def test_lora_trains_the_adapters_only_against_the_base_weights(tmp_path):
    trainer = lora_trainer(tmp_path)
    base = AutoModelForCausalLM.from_pretrained(tiny_assets().sft_model).eval()
    use_onednn_linear(base)  # the trainer's kernels (grpo.onednn_linear), so "equal" can mean bit for bit
    trainer.train(progress=False)
    n_adapter = adapter_numel(trainer.model)
    assert 0 < n_adapter == sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    ids = torch.tensor([[5, 17, 33, 2, 9, 41]])
    with torch.no_grad():
        policy, reference, plain = (trainer.model(input_ids=ids).logits, trainer.ref_model(input_ids=ids).logits,
                                    base(input_ids=ids).logits)
    assert torch.equal(reference, plain), "the reference is the untouched base, no second copy"
    assert (policy - plain).abs().max() > 1e-4, "the adapters trained"
    # AdamW's state is the adapters': exp_avg and exp_avg_sq, fp32, per adapter element
    state_bytes = sum(v.numel() * v.element_size() for st in trainer.optimizer.state.values()
                      for k, v in st.items() if k != "step")
    assert state_bytes == 2 * 4 * n_adapter
    # a checkpoint holds the adapters alone; OUT/final the merged plain model
    ckpt = tmp_path / "checkpoints" / "step-00000002"
    assert "adapter_model.safetensors" in os.listdir(ckpt) and "model.safetensors" not in os.listdir(ckpt)
    assert sum(t.numel() for t in load_file(ckpt / "adapter_model.safetensors").values()) == n_adapter
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, policy, atol=1e-5)
    assert set(export_state_dict(trainer.model)) == set(base.state_dict())  # what vLLM is pushed: plain names


def test_lora_resume_equals_an_uninterrupted_run(tmp_path):
    lora_trainer(tmp_path / "straight", max_steps=3).train(progress=False)
    lora_trainer(tmp_path / "resumed", max_steps=2).train(progress=False)
    lora_trainer(tmp_path / "resumed", max_steps=3).train(resume_from_checkpoint=True, progress=False)
    a = load_file(tmp_path / "straight" / "final" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "final" / "adapter" / "adapter_model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_in_a_recipe_and_the_options_it_rules_out(tmp_path):
    recipe = load_recipe("recipes/tiny-arith.yaml", ["model.lora={r: 8, target_modules: [q_proj, v_proj]}"])
    assert recipe.model.lora == LoraSpec(r=8, alpha=32.0, dropout=0.0, target_modules=["q_proj", "v_proj"])
    with pytest.raises(UserError, match="grpo.ref_offload: not with model.lora"):
        load_recipe("recipes/tiny-arith.yaml", ["model.lora={}", "grpo.beta=0.1", "grpo.ref_offload=true"])
    with pytest.raises(UserError, match="model.lora.r: must be an integer >= 1"):
        load_recipe("recipes/tiny-arith.yaml", ["model.lora={r: 0}"])
    with pytest.raises(UserError, match="model.lora.target_modules: "):
        lora_trainer(tmp_path, lora=LoraSpec(target_modules=["no_such_proj"]))


@pytest.mark.multiproc
def test_lora_dp_two_sites_by_two_ranks_matches_one_process(tmp_path):
    """2 sites x 2 ranks, hierarchical: the losses and merged weights of the single-process run,
    and the strategy's plan is sized to the adapters (what the ranks sync)."""
    from trainer.distributed.local import spawn_world
    from trainer.selfcheck.grpo import differences, run, single

    assets, extra = tiny_assets(), {"lora": {"r": 4, "alpha": 8}}
    reference = single(str(assets.root), str(tmp_path / "single"), extra)
    assert reference["moved"] > 1e-5 and all(loss != 0 for loss in reference["losses"])
    results = spawn_world(run, 4, args=(str(assets.root), str(tmp_path / "dp"), "hierarchical", 2, extra),
                          timeout_s=600)
    assert differences(reference, results) == []
    for r in results:  # each rank syncs, and holds AdamW state (exp_avg, exp_avg_sq in fp32) for, the adapters
        assert r["plan_numel"] == r["trainable_numel"] == reference["trainable_numel"] < 60_000
        assert r["optimizer_state_bytes"] == 2 * 4 * r["trainable_numel"]
