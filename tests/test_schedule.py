"""--temperature-schedule: the rule, its one-line errors, and that RL rollouts sample at the scheduled value
across a stop and resume (greedy sampling makes every rollout of a group alike, which the step's metrics show)."""

from __future__ import annotations

import pytest

from tests.helpers import history_rows, run_train
from trainer.cli import config_from_args
from trainer.config import ConfigError
from trainer.schedule import TemperatureSchedule


def test_linear_then_constant():
    schedule = TemperatureSchedule.parse("0.5:0.15:150")
    assert schedule.at(1) == pytest.approx(0.5)
    assert schedule.at(76) == pytest.approx(0.5 + (0.15 - 0.5) * 75 / 150)
    assert schedule.at(151) == pytest.approx(0.15)
    assert schedule.at(10_000) == pytest.approx(0.15)
    assert TemperatureSchedule.parse("0.2:1:4").at(3) == pytest.approx(0.6)  # rising works too


@pytest.mark.parametrize(("value", "why"), [
    ("0.5:0.15", "expected INITIAL:FINAL:WARMUP_STEPS"),
    ("a:0.15:10", "must be numbers"),
    ("0.5:0.15:1.5", "must be numbers"),
    ("0.5:11:10", "between 0 and 10"),
    ("0.5:0.1:0", "at least 1"),
])
def test_bad_schedule_is_one_line_naming_the_flag(value, why):
    with pytest.raises(ConfigError, match=f"^--temperature-schedule '{value}': .*{why}"):
        config_from_args(["--experiment-name", "x", "--env", "toy", "--temperature-schedule", value])


def test_schedule_is_hashed_only_when_given():
    plain = config_from_args(["--experiment-name", "x", "--env", "toy"])
    assert "temperature_schedule" not in plain.hashed_fields()
    scheduled = config_from_args(["--experiment-name", "x", "--env", "toy", "--temperature-schedule", "1:0:5"])
    assert scheduled.config_hash() != plain.config_hash()


@pytest.mark.slow
def test_rollouts_sample_at_the_scheduled_temperature_across_a_resume(tmp_path):
    flags = ("--env", "toy", "--temperature-schedule", "1.0:0.0:1", "--groups-per-step", "1",
             "--rollouts-per-group", "4")
    first = run_train(tmp_path, "sched", *flags, "--max-training-steps", "1")
    assert first.returncode == 0, first.stderr[-2000:]
    resumed = run_train(tmp_path, "sched", *flags, "--max-training-steps", "2")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resume: starting after step 1" in resumed.stdout
    rows = {row["step"]: row for row in history_rows(tmp_path, "sched") if "train/temperature" in row}
    assert rows[1]["train/temperature"] == pytest.approx(1.0)
    assert rows[2]["train/temperature"] == pytest.approx(0.0)
    # At temperature 0 the four rollouts of the one group are the same greedy reply: one reward, no variance.
    assert rows[2]["train/zero_variance_group_share"] == pytest.approx(1.0)
    assert rows[2]["train/reward_std_dev"] == pytest.approx(0.0)
