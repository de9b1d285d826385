"""A log-bucket histogram of durations: small, mergeable, and good to a few percent.

Durations (seconds) fall in buckets whose bounds grow by ``GROWTH`` (2 ** (1/8), about
9 %), so a quantile is known to within half a bucket whatever the scale: ten minutes and
ten days are both measured well, and a histogram of a whole lane's history holds at most
a couple of hundred counts. Histograms of several days merge by adding counts, which is
what makes day buckets into a sliding window.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

GROWTH = 2 ** (1 / 8)
FLOOR = 60.0  # durations under a minute count as a minute


def bucket(seconds: float) -> int:
    return int(math.log(max(seconds, FLOOR) / FLOOR, GROWTH))


def bucket_middle(index: int) -> float:
    """The geometric middle of a bucket: the value a quantile in it stands for."""
    return FLOOR * GROWTH ** (index + 0.5)


Histogram = dict[str, int]  # str(bucket) -> count: JSON-ready as it is


def add(histogram: Histogram, seconds: float, count: int = 1) -> None:
    key = str(bucket(seconds))
    histogram[key] = histogram.get(key, 0) + count


def merge(histograms: Iterable[Mapping[str, int]]) -> Histogram:
    merged: Histogram = {}
    for histogram in histograms:
        for key, count in histogram.items():
            merged[key] = merged.get(key, 0) + count
    return merged


def total(histogram: Mapping[str, int]) -> int:
    return sum(histogram.values())


def quantile(histogram: Mapping[str, int], q: float) -> float | None:
    """The duration (seconds) below which a share ``q`` of the samples fall."""
    n = total(histogram)
    if n == 0:
        return None
    rank = q * n
    seen = 0
    for index, count in sorted((int(k), c) for k, c in histogram.items()):
        seen += count
        if seen >= rank:
            return bucket_middle(index)
    return bucket_middle(index)


def share_above(histogram: Mapping[str, int], seconds: float) -> float:
    """The share of samples longer than ``seconds`` (0 when there are none)."""
    n = total(histogram)
    if n == 0:
        return 0.0
    limit = bucket(seconds)
    return sum(c for k, c in histogram.items() if int(k) > limit) / n


def above(histogram: Mapping[str, int], seconds: float) -> Histogram:
    """The samples longer than ``seconds``: what a silence that has already lasted that
    long will come to, going by the past."""
    limit = bucket(seconds)
    return {k: c for k, c in histogram.items() if int(k) > limit}
