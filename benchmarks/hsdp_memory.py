"""Bytes each rank holds for parameters, gradients and optimizer state, with and without
`distributed.shard_within_site` (FSDP2 inside each site), measured on the real tensors after one
GRPO update on 2 sites x 2 ranks (CPU, gloo):

    .venv/bin/python benchmarks/hsdp_memory.py [--full-size]

Parameters and gradients are counted as this rank's storage (a DTensor's local shard), the
optimizer state as every tensor in AdamW's state; the sync's own buffers (gradient buckets of
the unsharded sync, the flat shard buffer of the sharded one) are a separate column. The
reference model (beta > 0) is not counted: it is a full copy on every rank either way.
"""
from __future__ import annotations

import argparse

from trainer.selfcheck.memory import compare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full-size", action="store_true", help="the 3.3M-parameter tiny model (default: the small test model)")
    args = ap.parse_args()
    from trainer.selfcheck.assets import tiny_assets

    assets = tiny_assets(sft_steps=1, small=not args.full_size, num_train=200)
    rows = compare(str(assets.root))
    print(f"{'per rank (largest), bytes':28s} {'params':>11s} {'grads':>11s} {'optimizer':>11s} {'p+g+opt':>11s} "
          f"{'sync buffers':>13s}")
    for name, r in rows.items():
        total = r["params"] + r["grads"] + r["optimizer"]
        print(f"{name:28s} {r['params']:11,d} {r['grads']:11,d} {r['optimizer']:11,d} {total:11,d} {r['sync_buffers']:13,d}")
    base, hsdp = (sum(r[k] for k in ("params", "grads", "optimizer")) for r in rows.values())
    print(f"sharded / unsharded (params + grads + optimizer): {hsdp / base:.3f}  (2 ranks per site: 0.5 is ideal)")


if __name__ == "__main__":
    main()
