"""simulate-rl against hdc's own trainer: probe, run, store (root for the emulated configs).

    .venv/bin/python benchmarks/rl_trainer_check.py [--only NAME ...] [--steps 8] [--store]

For each configuration below: write its recipe (tiny-arith: the 3.3M-parameter tiny model,
arithmetic prompts, the accuracy + format rewards, float32), run the calibration probe
(experiments/rl_check.py: one worker per rank, all at once; again after the run, as this
machine's speed drifts over minutes), for the emulated ones bring up
2 sites x 2 ranks (network namespaces, delay line, shaped WAN) and run `hdc validate`'s
collective probe in them, then `hdc train` for --steps steps. The measurement (config, probe,
fit, every logged step, the machine's load before and after) goes to
experiments/rl_measured/NAME.json with --store (else to the work dir); the report and
`python -m experiments.rl_check` re-predict every stored one. The vllm configs run in
.venv-vllm (built by .ci/run) and are skipped when it is missing.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from experiments import rl_check  # noqa: E402

BASE = {"num_generations": 8, "per_device_train_batch_size": 64, "gradient_accumulation_steps": 2,
        "max_completion_length": 32, "max_prompt_length": 64, "beta": 0.0, "num_iterations": 1,
        "torch_num_threads": 2}
# name -> (procs, backend, strategy, one-way delay ms, WAN Mbit/s, grpo overrides); local_sgd syncs
# parameters across sites every 4 steps (distributed.every)
KNOBS = {"local_sgd": {"every": 4}}
CONFIGS = {
    "1proc-hf": (1, "hf", None, None, None, {}),
    "1proc-hf-beta-g4": (1, "hf", None, None, None, {"beta": 0.04, "num_generations": 4,
                                                       "per_device_train_batch_size": 32,
                                                       "max_completion_length": 48}),
    "1proc-hf-iter2": (1, "hf", None, None, None, {"num_iterations": 2}),
    "2x2-hierarchical-10ms-1g": (4, "hf", "hierarchical", 10, 1000, {}),
    "2x2-local_sgd-10ms-1g": (4, "hf", "local_sgd", 10, 1000, {}),
    "2x2-hierarchical-25ms-200m": (4, "hf", "hierarchical", 25, 200, {}),
    "1proc-vllm": (1, "vllm", None, None, None, {}),
    "1proc-vllm-beta": (1, "vllm", None, None, None, {"beta": 0.04}),
}
PREFIX = "hdcrl"


def grpo_section(procs: int, over: dict, steps: int) -> dict:
    g = {**BASE, **over}
    g["per_device_train_batch_size"] //= procs  # the same 128 completions per step on any process count
    if procs > 1:
        g["torch_num_threads"] = 1  # 4 ranks on 2 cores
    g.update({"learning_rate": 1e-4, "max_steps": steps, "save_steps": 10 ** 6, "logging_steps": 1,
              "loss_type": "dr_grpo", "log_completions": False, "seed": 0, "eval_steps": None})
    return g


def write_recipe(path: Path, assets, procs: int, backend: str, strategy, over: dict, steps: int) -> dict:
    import yaml

    recipe = {
        "model": {"name_or_path": str(assets.model), "dtype": "float32"},
        "data": {"train_file": str(assets.data / "train.jsonl"), "eval_file": None, "use_chat_template": True},
        "rewards": [{"func": "accuracy", "weight": 1.0}, {"func": "format", "weight": 0.5}],
        "grpo": grpo_section(procs, over, steps),
        "generation": {"backend": backend},
        "distributed": {"timeout_s": 120.0, **({"strategy": strategy} if strategy else {}),
                        **KNOBS.get(strategy, {})},
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return recipe


def prompt_tokens(assets) -> dict:
    """Tokens of the formatted prompts (chat template): the mean, and the longest of the data."""
    from transformers import AutoTokenizer

    from trainer.data import format_prompt, load_jsonl

    tok = AutoTokenizer.from_pretrained(str(assets.model))
    rows = load_jsonl(str(assets.data / "train.jsonl"))
    n = [len(tok(format_prompt(tok, r["prompt"], None, True))["input_ids"]) for r in rows]
    return {"mean": sum(n) / len(n), "max": max(n)}


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def wait_for_quiet(limit: float = 1.0, timeout_s: float = 240.0) -> None:
    """Until the 1-minute load is below `limit` (the previous config's ranks have faded from it), at most
    `timeout_s`; a machine that stays busy is reported, not hidden."""
    deadline = time.monotonic() + timeout_s
    while loadavg()[0] >= limit and time.monotonic() < deadline:
        time.sleep(5)
    if loadavg()[0] >= limit:
        print(f"warning: load {loadavg()[0]:.2f} after {timeout_s:g} s: the machine is busy; times will be noisy")


def run_one(name: str, assets, work: Path, steps: int) -> dict:
    """Probe, run (emulated when the config has sites), and the measurement."""
    procs, backend, strategy, delay_ms, mbps, over = CONFIGS[name]
    python = str(ROOT / ".venv-vllm/bin/python") if backend == "vllm" else sys.executable
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    write_recipe(d / "recipe.yaml", assets, procs, backend, strategy, over, steps)
    wait_for_quiet()
    load_before = loadavg()
    rl_check.run_probe(str(d / "recipe.yaml"), procs, d / "probe", python=python)
    argv = [python, "-m", "hdc.cli", "train", str(d / "recipe.yaml"), "--out", str(d / "run"), "--no-progress"]
    if procs == 1:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"{name}: hdc train failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    else:
        run_emulated(name, d, argv, delay_ms, mbps, strategy, steps)
    # again after the run: this machine's speed drifts over minutes (a shared host); the model's
    # constants come from both sessions
    rl_check.run_probe(str(d / "recipe.yaml"), procs, d / "probe-after", python=python)
    return measurement(name, d, assets, load_before)


def emulated_topology(delay_ms: float, mbps: float):
    from hdc.topology import load_topology
    from experiments.emulate.spec import with_ranks_per_site, with_wan

    return with_ranks_per_site(with_wan(load_topology("tiny-2site"), one_way_s=delay_ms / 1e3,
                                        bandwidth_Bps=mbps * 1e6 / 8), 2)


def measurement(name: str, d: Path, assets, load_before: list[float]) -> dict:
    """The stored record of one run from its work dir: config, probes (raw and fitted), every
    logged step, and for emulated runs the topology and `hdc validate`'s collective calibration."""
    import yaml
    from transformers import AutoConfig

    from experiments.emulate.spec import topology_to_data
    from trainer.logs import read_metrics

    procs, backend, strategy, delay_ms, mbps, _ = CONFIGS[name]
    grpo = yaml.safe_load((d / "recipe.yaml").read_text())["grpo"]
    grpo["prompts_per_step"] = (grpo["per_device_train_batch_size"] * procs * grpo["gradient_accumulation_steps"]
                                // grpo["num_generations"])
    config = {"procs": procs, "backend": backend, "strategy": strategy, "knobs": KNOBS.get(strategy, {}),
              "one_way_ms": delay_ms, "bandwidth_Mbps": mbps, "grpo": grpo, "topology": None}
    m = {"name": name}
    if procs > 1:
        from transformers import AutoModelForCausalLM

        from experiments.emulate.grpo_sync import model_buckets

        config["topology"] = topology_to_data(emulated_topology(delay_ms, mbps))
        m["collective_calibration"] = json.loads((d / "worker" / "result.json").read_text())["calibration"]
        model = AutoModelForCausalLM.from_pretrained(str(assets.model), dtype="float32")
        m["buckets"], _ = model_buckets(model, int(25e6))  # distributed.bucket_size_mb's default
    raw = rl_check.merge_probes([[json.loads(p.read_text()) for p in sorted((d / folder).glob("probe.*.json"))]
                                 for folder in ("probe", "probe-after") if (d / folder).is_dir()])
    model_config = AutoConfig.from_pretrained(str(assets.model)).to_dict()
    rows = [r for r in read_metrics(d / "run" / "metrics.jsonl") if "time/step_s" in r]
    m.update({"describe": describe(config), "config": config, "model_config": model_config,
              "prompt_tokens": prompt_tokens(assets), "probe": raw,
              "fit": rl_check.fit(raw, rl_check.model_spec(model_config)),
              "steps": [{k: v for k, v in r.items() if k.startswith(("time/", "completions/")) or k == "step"}
                        for r in rows],
              "machine": {"loadavg_before": load_before, "loadavg_after": loadavg(), "cpus": os.cpu_count()},
              "when": time.strftime("%Y-%m-%d")})
    return m


def describe(config: dict) -> str:
    g = config["grpo"]
    where = ("1 process" if config["procs"] == 1 else
             f"2 sites x 2 ranks, {config['strategy']}, {config['one_way_ms']} ms one way, "
             f"{config['bandwidth_Mbps']} Mbit/s")
    return (f"{where}; {config['backend']}; {g['prompts_per_step']} prompts x {g['num_generations']}, "
            f"completions <= {g['max_completion_length']}, beta {g['beta']}, num_iterations {g['num_iterations']}")


def run_emulated(name: str, d: Path, argv: list[str], delay_ms: float, mbps: float, strategy: str, steps: int) -> None:
    """The run on emulated sites, after `hdc validate`'s collective probe in them (d/worker)."""
    import emulated_grpo

    from experiments.emulate import launch, netns
    from experiments.emulate.spec import build_spec, write_topology

    netns.require_root()
    topo = emulated_topology(delay_ms, mbps)
    netns.down(PREFIX, quiet=True)
    try:
        spec = build_spec(topo, prefix=PREFIX, mode="delayline")
        spec.extra = {"shaped": True, "sysctl": {}}
        netns.up(spec, shape_bandwidth=True)
        topo_file = write_topology(topo, os.path.join(spec.state_dir, "topology.yaml"))
        port = launch.free_port(spec)
        emulated_grpo.run_worker(spec, topo_file, d, port, {"strategy": strategy, "size_bytes": 1 << 20},
                                 timeout_s=300.0)
        with open(d / "ranks.log", "wb") as fh:
            procs = launch.start_ranks(spec, argv, topo_file, master_port=port + 1, stdout=fh, stderr=fh,
                                       extra_env={"PYTHONUNBUFFERED": "1"})
            rc = launch.wait_ranks(procs, timeout_s=120 + 60 * steps)
    finally:
        netns.down(PREFIX, quiet=True)
    if rc != 0:
        raise RuntimeError(f"{name}: the run failed (rc {rc}):\n" + (d / "ranks.log").read_text()[-3000:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", default=None, choices=sorted(CONFIGS))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--store", action="store_true", help="write into experiments/rl_measured/")
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--reassemble", action="store_true",
                    help="rebuild the measurements from the work dir's finished runs (no probe, no run)")
    args = ap.parse_args(argv)
    from trainer.selfcheck.assets import tiny_assets

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="hdc-rl-check-"))
    work.mkdir(parents=True, exist_ok=True)
    assets = tiny_assets(sft_steps=1, small=False, num_train=400)
    names = args.only or list(CONFIGS)
    results = []
    for name in names:
        if CONFIGS[name][1] == "vllm" and not (ROOT / ".venv-vllm/bin/python").exists():
            print(f"{name}: skipped (no .venv-vllm)")
            continue
        print(f"{name}: running", flush=True)
        folder = rl_check.MEASURED_DIR if args.store else work
        if args.reassemble:  # the machine's load as the stored record has it
            old = json.loads((folder / f"{name}.json").read_text())
            m = measurement(name, work / name, assets, old["machine"]["loadavg_before"])
            m["machine"], m["when"] = old["machine"], old["when"]
        else:
            m = run_one(name, assets, work, args.steps)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps(m, indent=1))
        results.append(m)
        print(rl_check.format_table(rl_check.compare([m])), flush=True)
    if results:
        print("\nall:\n" + rl_check.format_table(rl_check.compare(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
