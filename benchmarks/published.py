"""The simulator against published training runs (rows, sources and assumptions in
experiments/published.py): predicted vs published step time, median and worst |error| with the
calibration rows (one per GPU generation) excluded.

    python benchmarks/published.py [--out DIR]   # DIR: published.csv and published.png
"""
from experiments.published import main

if __name__ == "__main__":
    main()
