"""`train.py` end to end on the CPU backend: steps, resume after a stop, and real learning (kill -9 at random
points is in tests/reliability/test_crash_resume.py)."""

import json

import pytest

from tests.helpers import history_rows, history_steps, model_dir, read_state, run_train


def validate_logs(folder) -> int:
    from rollouts.logs import main as logs_main

    return logs_main(["validate", str(folder)])


def assert_clean_exit(result) -> None:
    """Exit 0 with nothing of the run left behind: a native thread still in torch at interpreter exit aborts the
    process ("terminate called without an active exception", exit 134), an aiohttp session left open warns."""
    assert result.returncode == 0, result.stderr[-3000:]
    for leak in ("terminate called", "Unclosed client session", "Unclosed connector"):
        assert leak not in result.stderr, result.stderr[-3000:]


SMALL = ["--env", "toy", "--groups-per-step", "2", "--rollouts-per-group", "4", "--dataset-size", "8"]


@pytest.mark.slow
def test_two_steps_then_a_rerun_trains_only_the_third(tmp_path):
    first = run_train(tmp_path, "e2e", "--max-training-steps", "2", "--log-sample-rate", "1", *SMALL)
    assert_clean_exit(first)
    logged = sorted((tmp_path / "logs" / "e2e").glob("step_*/*.jsonl"))
    assert len(logged) == 2 * 8  # every rollout of both steps, one RLM file each
    lines = [json.loads(line) for line in logged[0].read_text().splitlines()]
    assert lines[0]["type"] == "metadata" and lines[0]["environment_kwargs"]["step"] in (1, 2)
    assert [line["type"] for line in lines[1:]] == ["iteration"] and "reward" in lines[0]["environment_kwargs"]
    state = read_state(tmp_path, "e2e")
    assert state["step"] == 2 and state["config_hash"]
    assert history_steps(tmp_path, "e2e") == [1, 2]
    trajectories = model_dir(tmp_path, "e2e") / "trajectories" / "train"
    assert sorted(p.name for p in trajectories.glob("*.parquet")) == ["0001.parquet", "0002.parquet"]
    row = history_rows(tmp_path, "e2e")[0]
    for key in ("train/reward", "train/reward_std", "train/zero_variance_group_share", "train/finished_mean",
                "train/rollout_seconds_mean", "train/completion_tokens_mean", "train/health/child_processes"):
        assert key in row, key

    second = run_train(tmp_path, "e2e", "--max-training-steps", "3", *SMALL)
    assert_clean_exit(second)
    assert "resume: starting after step 2" in second.stdout
    assert [line.split(":")[0] for line in second.stdout.splitlines() if line.startswith("step ")] == ["step 3"]
    assert history_steps(tmp_path, "e2e") == [1, 2, 3]
    assert read_state(tmp_path, "e2e")["cursor"] == {"epoch": 0, "position": 6}  # 2 of 8 scenarios per step


@pytest.mark.slow
def test_toy_reward_rises_far_above_its_start(tmp_path):
    result = run_train(tmp_path, "learn", "--env", "toy", "--max-training-steps", "14", "--num-epochs", "10")
    assert result.returncode == 0, result.stderr[-3000:]
    rewards = [row["train/reward"] for row in history_rows(tmp_path, "learn")]
    first, last = sum(rewards[:2]) / 2, sum(rewards[-3:]) / 3
    assert first < 0.1, rewards
    assert last > first + 0.5, rewards


@pytest.mark.slow
def test_gmsh_env_trains_two_steps_with_its_own_service(tmp_path):
    result = run_train(tmp_path, "mesh", "--env", "gmsh", "--max-training-steps", "2", "--groups-per-step", "2",
                       "--rollouts-per-group", "2", "--max-tokens", "64", "--log-sample-rate", "1")
    assert_clean_exit(result)
    assert history_steps(tmp_path, "mesh") == [1, 2]
    row = history_rows(tmp_path, "mesh")[0]
    assert row["train/reward"] == -1.0  # the untrained tiny model writes no usable script: the low end
    assert "train/no_code" in row
    logged = sorted((tmp_path / "logs" / "mesh").glob("step_*/gmsh_*.jsonl"))
    assert len(logged) == 2 * 4
    assert validate_logs(tmp_path / "logs" / "mesh") == 0 and (tmp_path / "logs" / "mesh" / "report.html").exists()


@pytest.mark.slow
def test_r2e_env_runs_on_the_bundled_samples_and_cleans_up(tmp_path):
    result = run_train(tmp_path, "repl", "--env", "r2e", "--max-training-steps", "2", "--groups-per-step", "2",
                       "--rollouts-per-group", "2", "--max-steps", "2", "--max-tokens", "64", "--log-sample-rate", "1")
    assert_clean_exit(result)
    assert history_steps(tmp_path, "repl") == [1, 2]
    row = history_rows(tmp_path, "repl")[0]
    assert "train/changed_files" in row and "train/repl_restarts" in row
    assert list((tmp_path / "rollouts").iterdir()) == []
    assert len(list((tmp_path / "logs" / "repl").glob("step_*/r2e_*.jsonl"))) == 2 * 4
    assert validate_logs(tmp_path / "logs" / "repl") == 0 and (tmp_path / "logs" / "repl" / "report.html").exists()


# Runs whose threads and pools are the ones a clean exit depends on: the workflow env wired to its default executor
# (the policy server's base model, as in the run that once ended "terminate called without an active exception"; the
# tiny model seldom writes a workflow that calls it, so tests/test_entry_points.py closes that server mid-decode),
# and OpenSpiel's play-out process pool.
ONE_STEP = ["--max-training-steps", "1", "--groups-per-step", "2", "--rollouts-per-group", "2",
            "--log-sample-rate", "1"]


@pytest.mark.slow
def test_workflow_with_its_default_executor_exits_0(tmp_path):
    result = run_train(tmp_path, "wf-exec", "--env", "workflow", *ONE_STEP, "--dataset-size", "4", "--max-tokens",
                       "48", "--executor-max-tokens", "16", "--domain-ratios", "math=0.5,qa=0.5")
    assert_clean_exit(result)
    assert history_steps(tmp_path, "wf-exec") == [1]


@pytest.mark.slow
def test_openspiel_with_its_playout_pool_exits_0(tmp_path):
    result = run_train(tmp_path, "ttt-pool", "--env", "openspiel", *ONE_STEP, "--game-types", "tic_tac_toe",
                       "--reward-mode", "outcome", "--playouts", "2", "--playout-workers", "1",
                       "--num-tasks-per-case", "4", "--max-tokens", "8")
    assert_clean_exit(result)
    assert history_steps(tmp_path, "ttt-pool") == [1]


async def test_every_close_of_a_run_runs_even_when_one_before_it_fails():
    """A service that will not stop must not leave the policy server (and its sampler thread) running at exit."""
    from trainer.run import close_all

    closed = []

    async def backend_close() -> None:
        closed.append("backend")

    def service_close() -> None:
        raise RuntimeError("a service would not stop")

    with pytest.raises(RuntimeError, match="would not stop"):
        await close_all([service_close, lambda: None, backend_close, lambda: closed.append("run dir")])
    assert closed == ["backend", "run dir"]
