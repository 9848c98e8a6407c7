"""The shipped validation against published runs (benchmarks/published.py): one compute
efficiency per GPU generation, calibrated on one row each; the others are predictions."""
import pytest

from experiments import published


@pytest.mark.slow
def test_published_runs_median_10_worst_20_percent():
    results = published.run()
    assert len(results) >= 12 and len({r["source"].split(",")[0] for r in results}) >= 3
    assert sum(r["calibration"] for r in results) == 2  # one per GPU generation
    median, worst = published.summary(results)
    assert median <= 0.10 and worst <= 0.20, (median, worst)


def test_rows_cite_a_source_and_state_assumptions():
    for row in published.ROWS:
        assert row.source and row.assumptions, row.name
    assert published.megatron_flops_per_step(3072, 2048, 128, 25600, 51200) == pytest.approx(5.14e19, rel=0.01)
