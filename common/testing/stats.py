"""Percentiles for the benchmarks' latency reports: one definition, so that reports compare."""

from __future__ import annotations

from collections.abc import Sequence


def percentile(values: Sequence[float], q: float, *, nearest: bool = False) -> float | None:
    """The q-th percentile (0..100) of the samples (sorted here; sorted input costs little), or None
    for none. Linearly interpolated between the closest ranks (numpy's default method), or with
    `nearest` the sample at the nearest rank (a value that was actually measured)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    if nearest:
        return ordered[min(len(ordered) - 1, max(0, round(pos)))]
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)
