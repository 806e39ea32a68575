"""Held-out intervals as a reader relies on them: a bootstrap over tasks that covers the truth about as often as it
says, gives the same answer each time, pairs two evaluations task by task, and stays sane with one task or none."""

import math

import numpy as np
import pytest

from rollouts.intervals import bootstrap_interval, paired_difference


def test_the_interval_holds_the_mean_and_narrows_with_more_tasks():
    rng = np.random.default_rng(1)
    few = rng.normal(0.5, 0.2, 10)
    many = rng.normal(0.5, 0.2, 400)
    for values in (few, many):
        mean, low, high = bootstrap_interval(values)
        assert mean == pytest.approx(float(np.mean(values)))
        assert low < mean < high
    assert bootstrap_interval(many).high - bootstrap_interval(many).low < (
        bootstrap_interval(few).high - bootstrap_interval(few).low)


def test_known_data_gives_the_textbook_width():
    """0/1 rewards, half passed, 100 tasks: the mean's standard error is 0.05, so a 90% interval is about ±0.082."""
    mean, low, high = bootstrap_interval([0.0, 1.0] * 50, resamples=4000)
    assert mean == 0.5
    assert low == pytest.approx(0.5 - 1.645 * 0.05, abs=0.015) and high == pytest.approx(0.5 + 1.645 * 0.05, abs=0.015)


def test_a_90_percent_interval_covers_the_true_mean_about_90_percent_of_the_time():
    rng = np.random.default_rng(7)
    trials = 300
    covered = sum(low <= 0.3 <= high
                  for low, high in (bootstrap_interval(rng.normal(0.3, 1.0, 40), resamples=500, seed=t)[1:]
                                    for t in range(trials)))
    assert 0.82 <= covered / trials <= 0.96  # the percentile bootstrap runs a little narrow at 40 tasks


def test_the_same_values_and_seed_give_the_same_interval():
    values = [0.1, 0.9, 0.4, 0.4, 0.7, 0.0]
    assert bootstrap_interval(values) == bootstrap_interval(list(values))
    assert bootstrap_interval(values, seed=3) == bootstrap_interval(values, seed=3)
    assert bootstrap_interval(values, seed=3) != bootstrap_interval(values, seed=4)


def test_a_wider_level_gives_a_wider_interval():
    values = np.random.default_rng(2).uniform(0, 1, 30)
    _, low90, high90 = bootstrap_interval(values, level=0.9)
    _, low99, high99 = bootstrap_interval(values, level=0.99)
    assert low99 <= low90 and high99 >= high90


def test_no_task_is_nan_and_one_task_or_no_spread_is_the_mean_itself():
    assert all(math.isnan(v) for v in bootstrap_interval([]))
    assert bootstrap_interval([0.25]) == (0.25, 0.25, 0.25)
    assert bootstrap_interval([1.0] * 5) == (1.0, 1.0, 1.0)


def test_a_level_outside_0_1_or_no_resample_is_refused():
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval([1.0, 2.0], level=90)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_interval([1.0, 2.0], resamples=0)


def test_pairing_cancels_each_tasks_difficulty():
    """Tasks differ a lot in difficulty, training adds 0.1 to each, give or take a little: the paired interval is
    narrow and clear of zero, while the two evaluations' own intervals overlap."""
    rng = np.random.default_rng(3)
    difficulty = rng.uniform(-1, 1, 30)
    before = {f"t{i}": float(d) for i, d in enumerate(difficulty)}
    after = {t: v + 0.1 + float(rng.normal(0, 0.02)) for t, v in before.items()}
    mean, low, high, n = paired_difference(before, after)
    assert n == 30 and mean == pytest.approx(0.1, abs=0.02)
    assert 0 < low < mean < high < 0.2
    assert bootstrap_interval(after.values()).low < bootstrap_interval(before.values()).high


def test_only_tasks_both_evaluations_scored_are_paired():
    before = {"a": 0.0, "b": 0.5, "c": 1.0}
    after = {"b": 1.0, "c": 1.0, "d": 0.0}
    mean, low, high, n = paired_difference(before, after)
    assert n == 2 and mean == 0.25 and 0.0 <= low <= high <= 0.5


def test_paired_with_no_task_in_common_is_nan_and_with_one_is_that_difference():
    mean, low, high, n = paired_difference({"a": 1.0}, {"b": 0.0})
    assert n == 0 and all(math.isnan(v) for v in (mean, low, high))
    assert paired_difference({"a": 0.25, "b": 1.0}, {"a": 0.75}) == (0.5, 0.5, 0.5, 1)
    assert paired_difference({}, {}).n == 0
