"""`hdc eval` and `hdc generate` on a trained model, a recipe, and a LoRA checkpoint."""
import json

import pytest

from trainer.cli import main
from trainer.data import evaluate_exact_match
from trainer.evaluate import load_for_inference
from trainer.selfcheck.assets import tiny_assets


def run_json(capsys, argv) -> list:
    assert main(argv) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_hdc_eval_scores_a_model_as_the_trainer_evaluates_it(capsys):
    assets = tiny_assets()
    heldout = str(assets.data / "heldout.jsonl")
    [m] = run_json(capsys, ["eval", str(assets.sft_model), "--data", heldout, "--max-samples", "12",
                            "--max-new-tokens", "48", "--json"])
    assert m["eval/samples"] == 12 and {"rewards/accuracy/mean", "rewards/format/mean"} <= set(m)
    model, tok = load_for_inference(str(assets.sft_model))
    rows = [json.loads(line) for line in open(heldout)][:12]
    same = evaluate_exact_match(model, tok, rows, max_new_tokens=48)
    assert m["eval/exact_match"] == same["eval/exact_match"] and m["eval/format"] == same["eval/format"]
    assert m["rewards/format/mean"] == m["eval/format"]
    # a recipe brings its rewards and weights (tiny-arith: accuracy 1.0 + format 0.5)
    [r] = run_json(capsys, ["eval", "recipes/tiny-arith.yaml", "--model", str(assets.sft_model), "--data", heldout,
                            "--max-samples", "12", "--max-new-tokens", "48", "--json"])
    assert r["rewards/total/mean"] == pytest.approx(r["rewards/accuracy/mean"] + 0.5 * r["rewards/format/mean"])


def test_hdc_generate_from_a_lora_checkpoint_matches_the_merged_model(tmp_path, capsys):
    pytest.importorskip("peft")
    from trainer.config import GRPOConfig
    from trainer.data import load_jsonl
    from trainer.grpo import GRPOTrainer
    from trainer.lora import LoraSpec

    assets = tiny_assets()
    args = GRPOConfig(output_dir=str(tmp_path), learning_rate=5e-3, num_generations=4, per_device_train_batch_size=8,
                      max_completion_length=32, max_steps=1, seed=0)
    GRPOTrainer(str(assets.sft_model), ["accuracy", "format", "length"], args,
                load_jsonl(str(assets.data / "train.jsonl")), lora=LoraSpec(r=4)).train(progress=False)
    prompts = ["What is 12 + 30?", "What is 7 + 5?"]
    argv = [x for p in prompts for x in ("--prompt", p)] + ["-n", "2", "--max-new-tokens", "24", "--json"]
    sampled = run_json(capsys, ["generate", str(tmp_path / "checkpoints" / "step-00000001"), *argv])
    assert [s["prompt"] for s in sampled] == prompts and all(len(s["completions"]) == 2 for s in sampled)
    greedy = ["--temperature", "0", "-n", "1"]
    from_adapter = run_json(capsys, ["generate", str(tmp_path / "checkpoints" / "step-00000001"), *argv, *greedy])
    from_final = run_json(capsys, ["generate", str(tmp_path / "final"), *argv, *greedy])
    assert from_adapter == from_final


@pytest.mark.parametrize("argv, message", [
    (["generate", "Qwen/Qwen2-0.5B-Instruct", "--prompt", "hi"], "if it is a Hugging Face Hub id, download it"),
    (["generate", "{model}", "--prompt", "hi", "--temperature", "-1"], "--temperature: must be >= 0"),
    (["generate", "{model}", "--prompt", "hi", "--temperature", "0", "-n", "2"], "--num: greedy decoding"),
    (["eval", "{model}"], "--data: required with a model"),
    (["eval", "{model}", "--data", "nope.jsonl"], "--data: no such file 'nope.jsonl'"),
])
def test_eval_and_generate_mistakes_are_one_line(capsys, argv, message):
    argv = [a.replace("{model}", str(tiny_assets().sft_model)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
