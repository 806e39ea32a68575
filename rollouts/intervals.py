"""How sure a held-out figure is: percentile-bootstrap intervals over tasks.

Why tasks, not rollouts: the held-out set is a sample of tasks, and rollouts of one task are not independent (the
same task is easy or hard for every rollout of it), so the unit that is resampled is the task, each task standing
for the mean reward of its rollouts. Two evaluations of one run score the same tasks, so their difference is
measured task by task (`paired_difference`): a task's own difficulty cancels, and the interval is far narrower than
two separate intervals would suggest. Every draw comes from a seeded generator, so a report shows the same
interval each time it is drawn.

Degenerate sizes: with no value at all the mean and both ends are NaN (there is nothing to measure); with one
value both ends equal the mean (a single task has no spread to resample).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import numpy as np

LEVEL = 0.9
RESAMPLES = 2000
_MAX_CELLS = 4_000_000  # resample in chunks of at most this many draws, so a large held-out set stays small in memory


class Interval(NamedTuple):
    """A mean and the ends of its bootstrap interval; unpacks as (mean, low, high)."""

    mean: float
    low: float
    high: float


class PairedDifference(NamedTuple):
    """after − before over the `n` tasks both evaluations scored; unpacks as (mean, low, high, n)."""

    mean: float
    low: float
    high: float
    n: int


def bootstrap_interval(values: Iterable[float], level: float = LEVEL, resamples: int = RESAMPLES,
                       seed: int = 0) -> Interval:
    """The mean of `values` (one per task) and its `level` percentile-bootstrap interval.

    n = 0 gives (nan, nan, nan); n = 1 gives (v, v, v). The same values and seed always give the same interval."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    data = np.asarray(list(values), dtype=float)
    if data.size == 0:
        return Interval(math.nan, math.nan, math.nan)
    mean = float(data.mean())
    if data.size == 1 or bool(np.all(data == data[0])):  # no spread: every resample has the same mean
        return Interval(mean, mean, mean)
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_CELLS // data.size)
    means = np.concatenate([data[rng.integers(0, data.size, size=(min(chunk, resamples - done), data.size))]
                            .mean(axis=1) for done in range(0, resamples, chunk)])
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(mean, float(low), float(high))


def paired_difference(before: Mapping[str, float], after: Mapping[str, float], level: float = LEVEL,
                      resamples: int = RESAMPLES, seed: int = 0) -> PairedDifference:
    """The mean of after[t] − before[t] over the tasks t both hold, with its bootstrap interval (tasks resampled).

    Each value is a task's mean reward (over its rollouts when --eval-rollouts > 1). Tasks only one side scored (a
    rollout that failed every time) are left out, and `n` says how many were paired. n = 0 gives NaN for the mean
    and both ends; n = 1 gives the one difference for all three."""
    common = sorted(set(before) & set(after))
    diffs = [float(after[task]) - float(before[task]) for task in common]
    mean, low, high = bootstrap_interval(diffs, level, resamples, seed)
    return PairedDifference(mean, low, high, len(common))
