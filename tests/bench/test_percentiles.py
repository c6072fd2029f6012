"""The benchmarks' one percentile rule (bench/percentiles.py): nearest rank, a measured value."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("bench_percentiles", Path(__file__).resolve().parents[2] / "bench" / "percentiles.py")
assert _spec is not None and _spec.loader is not None
bench_percentiles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_percentiles)
percentile = bench_percentiles.percentile


def test_nearest_rank_gives_a_measured_value_with_q_of_the_values_at_or_below_it() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 1..100, unsorted
    assert [percentile(values, q) for q in (0, 0.5, 0.95, 0.99, 0.999, 1)] == [1, 50, 95, 99, 100, 100]
    assert percentile([0.3, 9.0], 0.5) == 0.3  # never an interpolated 4.65
    assert percentile([0.3, 9.0], 0.51) == 9.0
    assert percentile([7.0], 0.99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 0.5)
