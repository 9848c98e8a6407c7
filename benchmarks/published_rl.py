"""Published GRPO step times beside `simulate_rl`'s prediction (rows, sources and assumptions:
simulator/rl_published.py).

    python benchmarks/published_rl.py
"""
from __future__ import annotations

import statistics

from simulator.rl_published import predictions


def main() -> None:
    rows = predictions()
    print(f"{'configuration':<72} {'published s':>11} {'predicted s':>11} {'error':>7}")
    errs = []
    for name, pub, pred in rows:
        errs.append((pred - pub) / pub)
        print(f"{name:<72} {pub:>11.1f} {pred:>11.1f} {errs[-1]:>+7.1%}")
    print(f"median |error| {statistics.median(abs(e) for e in errs):.1%}, worst {max(abs(e) for e in errs):.1%}; "
          f"published async/colocated {rows[1][1] / rows[0][1]:.2f}, predicted {rows[1][2] / rows[0][2]:.2f}")


if __name__ == "__main__":
    main()
