"""The reward preflight through train.py: `--check-rewards` alone (a table, exit 0 when the reward separates the
oracle from doing nothing and from every cheat, 1 naming the scenario and probe otherwise), and the automatic check
before a run's first RL step (recorded in state and history, shown in the report, skipped by its flag and on a
resume once passed, stopping the run with one line when it fails)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest

import train
from envs.probes import RewardProbe
from envs.toy import spec as toy_spec
from tests.helpers import ROOT, history_rows, model_dir, read_state, run_train, subprocess_env, train_cmd

SMALL = ["--groups-per-step", "2", "--rollouts-per-group", "2", "--dataset-size", "8"]


def flags(tmp_path, name: str, *more: str) -> list[str]:
    return ["--experiment-name", name, "--art-path", str(tmp_path / "art"), "--rollout-root",
            str(tmp_path / "rollouts"), "--log-dir", str(tmp_path / "logs"), "--base-model", "tiny-random",
            "--no-eval-before-after", *more]


def table_rows(out: str, env: str) -> list[list[str]]:
    """The rows under an env's table header (scenario, oracle, nothing, best cheat...)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"reward check: {env} "))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("  ") or line.strip() in ("separated",) or line.strip().startswith(("note:", "NOT")):
            break
        rows.append(line.split())
    return rows


@pytest.fixture
def broken_toy(monkeypatch):
    """The toy env with a reward hole: a 'cheat' that is the oracle's own reply, so it scores 1.0."""
    def probes(cfg, scenario):
        target = scenario.data["target"]
        return [RewardProbe("oracle", "oracle", (target * 8,)), RewardProbe("do-nothing", "nothing", ("",)),
                RewardProbe("cheat:copies-the-oracle", "cheat", (target * 4,))]

    monkeypatch.setattr(toy_spec, "SPEC", dataclasses.replace(toy_spec.SPEC, reward_probes=probes))


def test_check_rewards_prints_a_table_and_exits_0_without_a_model(tmp_path, capsys):
    assert train.main(flags(tmp_path, "check", "--env", "toy", "--check-rewards")) == 0
    out = capsys.readouterr().out
    rows = table_rows(out, "toy")
    assert len(rows) == 3 and all(r[0].startswith("toy-train-") and r[1] == "1.000" and r[2] == "0.000"
                                  for r in rows)
    assert all(float(r[3]) == 0.0 and r[4].startswith("cheat:") for r in rows) and "  separated" in out
    assert not (tmp_path / "art").exists()  # no model built or loaded, nothing written for the experiment


def test_check_rewards_runs_an_env_through_its_sandboxed_services(tmp_path, capsys):
    assert train.main(flags(tmp_path, "check", "--env", "workflow", "--check-rewards")) == 0
    rows = table_rows(capsys.readouterr().out, "workflow")
    assert len(rows) == 3 and all(r[2] == "0.000" and float(r[3]) <= 0.0 for r in rows)
    assert all(r[1] == ("none" if r[0].startswith("code-") else "1.000") for r in rows)


def test_a_mixed_run_is_checked_env_by_env(tmp_path, capsys):
    assert train.main(flags(tmp_path, "check", "--mix", "toy=0.5,planner=0.5", "--check-rewards")) == 0
    out = capsys.readouterr().out
    assert len(table_rows(out, "toy")) == 3 and len(table_rows(out, "planner")) == 3


def test_a_cheat_that_pays_exits_1_naming_the_scenario_and_the_probe(tmp_path, capsys, broken_toy):
    assert train.main(flags(tmp_path, "check", "--env", "toy", "--check-rewards")) == 1
    captured = capsys.readouterr()
    error = captured.err.strip().splitlines()
    assert len(error) == 1 and re.search(r"scenario toy-train-\d+: probe cheat:copies-the-oracle scores 1\.000",
                                         error[0]), error
    assert "NOT separated" in captured.out


def test_an_oracle_below_the_threshold_fails_the_check(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(toy_spec, "SPEC", dataclasses.replace(toy_spec.SPEC, pass_threshold=1.5))
    assert train.main(flags(tmp_path, "check", "--env", "toy", "--check-rewards")) == 1
    assert "probe oracle scores 1.000, below the pass threshold 1.5" in capsys.readouterr().err


@pytest.mark.parametrize("more", [["--skip-reward-check"], ["--eval-only"]])
def test_check_rewards_with_a_contradicting_flag_is_one_line_exit_2(tmp_path, capsys, more):
    assert train.main(flags(tmp_path, "check", "--env", "toy", "--check-rewards", *more)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--check-rewards" in err[0]


BROKEN_TOY = """
import dataclasses, sys
from envs.probes import RewardProbe
from envs.toy import spec
def probes(cfg, scenario):
    t = scenario.data["target"]
    return [RewardProbe("oracle", "oracle", (t * 8,)), RewardProbe("do-nothing", "nothing", ("",)),
            RewardProbe("cheat:copies-the-oracle", "cheat", (t * 4,))]
spec.SPEC = dataclasses.replace(spec.SPEC, reward_probes=probes)
import train
sys.exit(train.main(sys.argv[1:]))
"""


# Training runs go through a process of their own, as a user's do (and as the other end-to-end tests do).
def test_a_failing_automatic_check_stops_the_run_before_any_training(tmp_path):
    cmd = [sys.executable, "-c", BROKEN_TOY, *train_cmd(tmp_path, "auto", "--env", "toy", "--max-training-steps",
                                                        "1", *SMALL)[2:]]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=subprocess_env(), cwd=ROOT)
    assert result.returncode == 1, result.stderr[-2000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "probe cheat:copies-the-oracle" in error[0] and "step 1:" not in result.stdout
    state = read_state(tmp_path, "auto")
    assert state["reward_check"]["passed"] is False and "step" not in state
    assert not (model_dir(tmp_path, "auto") / "history.jsonl").exists()


def test_the_automatic_check_runs_before_rl_is_recorded_and_is_not_repeated_on_resume(tmp_path):
    first = run_train(tmp_path, "auto", "--env", "toy", "--max-training-steps", "1", *SMALL)
    assert first.returncode == 0, first.stderr[-2000:]
    assert 0 <= first.stdout.index("reward check: toy") < first.stdout.index("step 1:")
    check = read_state(tmp_path, "auto")["reward_check"]
    assert check["passed"] is True and check["envs"]["toy"]["oracle_min"] == 1.0
    assert check["envs"]["toy"]["nothing_max"] == 0.0 and len(check["envs"]["toy"]["scenarios"]) == 3
    row = history_rows(tmp_path, "auto")[0]
    assert row["step"] == 1 and row["train/reward_check/passed"] == 1.0 and row["train/reward_check/best_cheat"] == 0
    report = (tmp_path / "logs" / "auto" / "report.html").read_text()
    assert re.search(r'id="h-reward-check"><span class="figure">separated</span>; toy: oracle 1\.000', report)

    second = run_train(tmp_path, "auto", "--env", "toy", "--max-training-steps", "2", *SMALL)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "reward check: toy" not in second.stdout and "not repeated" in second.stdout
    assert [r["step"] for r in history_rows(tmp_path, "auto")] == [1, 2]
    assert not any(k.startswith("train/reward_check/") for k in history_rows(tmp_path, "auto")[1])


def test_the_flag_skips_the_automatic_check(tmp_path):
    result = run_train(tmp_path, "skip", "--env", "toy", "--max-training-steps", "1", "--skip-reward-check", *SMALL)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "reward check: skipped (--skip-reward-check)" in result.stdout and "reward check: toy" not in result.stdout
    assert read_state(tmp_path, "skip")["reward_check"] == {"skipped": True}
    assert not any(k.startswith("train/reward_check/") for k in history_rows(tmp_path, "skip")[0])
    assert "skipped (--skip-reward-check)" in (tmp_path / "logs" / "skip" / "report.html").read_text()
