"""The one percentile rule every benchmark reports with: nearest rank (the smallest value with at
least ``q`` of the values at or below it), so a p99 is always a latency that was measured, and
the same samples give the same figure in every table."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float:
    """``q`` in [0, 1]. Nearest rank: ``ceil(q * n)``-th smallest (the smallest for q = 0)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
