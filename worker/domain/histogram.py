"""A log-bucket histogram of durations: small, mergeable, and good to a few percent.

Durations (seconds) fall in buckets whose bounds grow by ``GROWTH`` (2 ** (1/8), about
9 %), so a quantile is known to within half a bucket whatever the scale: ten minutes and
ten days are both measured well, and a histogram of a whole lane's history holds at most
a couple of hundred counts. Histograms of several days merge by adding counts, which is
what makes day buckets into a sliding window.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
from collections.abc import Mapping

GROWTH = 2 ** (1 / 8)
FLOOR = 60.0  # durations under a minute count as a minute


def bucket(seconds: float) -> int:
    return int(math.log(max(seconds, FLOOR) / FLOOR, GROWTH))


def bucket_middle(index: int) -> float:
    """The geometric middle of a bucket: the value a quantile in it stands for."""
    # float(): a float to a float's power is typed Any (a negative base gives a complex).
    return float(FLOOR * GROWTH ** (index + 0.5))


Histogram = dict[str, int]  # str(bucket) -> count: JSON-ready as it is


def add(histogram: Histogram, seconds: float, count: int = 1) -> None:
    key = str(bucket(seconds))
    histogram[key] = histogram.get(key, 0) + count


def total(histogram: Mapping[str, int]) -> int:
    return sum(histogram.values())


def quantile(histogram: Mapping[str, int], q: float) -> float | None:
    """The duration (seconds) below which a share ``q`` of the samples fall."""
    indices, running = _ranked(tuple(histogram), tuple(histogram.values()))
    return _quantile(indices, running, 0, q)


def quantiles(histogram: Mapping[str, int], qs: tuple[float, ...]) -> list[float | None]:
    """:func:`quantile` at each of ``qs``, the histogram ranked once."""
    indices, running = _ranked(tuple(histogram), tuple(histogram.values()))
    return [_quantile(indices, running, 0, q) for q in qs]


def count_above(histogram: Mapping[str, int], seconds: float) -> int:
    """The samples longer than ``seconds``."""
    indices, running = _ranked(tuple(histogram), tuple(histogram.values()))
    return _count(running, bisect.bisect_right(indices, bucket(seconds)))


def quantile_above(histogram: Mapping[str, int], seconds: float, q: float) -> float | None:
    """The quantile ``q`` of the samples longer than ``seconds``: what a silence that has
    already lasted that long will come to, going by the past."""
    indices, running = _ranked(tuple(histogram), tuple(histogram.values()))
    return _quantile(indices, running, bisect.bisect_right(indices, bucket(seconds)), q)


def _count(running: tuple[int, ...], first: int) -> int:
    """The samples in the buckets from the ``first`` on."""
    return running[-1] - (running[first - 1] if first else 0) if running else 0


def _quantile(indices: tuple[int, ...], running: tuple[int, ...], first: int, q: float) -> float | None:
    """The quantile ``q`` of the samples in the buckets from the ``first`` on."""
    n = _count(running, first)
    if n == 0:
        return None
    before = running[-1] - n
    at = bisect.bisect_left(running, q * n, lo=first, key=lambda seen: seen - before)
    return bucket_middle(indices[min(at, len(indices) - 1)])


@functools.lru_cache(maxsize=1024)
def _ranked(keys: tuple[str, ...], counts: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The buckets in order and the samples counted up to each. Cached by content (two
    flat tuples are the cheapest key to build): a lane's figures change when it learns,
    and are asked the same in between by every parcel on it, at every decision."""
    ranked = sorted(zip(map(int, keys), counts))
    return tuple(i for i, _ in ranked), tuple(itertools.accumulate(c for _, c in ranked))
