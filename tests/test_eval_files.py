"""What an evaluation keeps and says: each task's mean reward, a few of its rollouts, one file per evaluated step
that a resumed run keeps, and a console line with the interval and the paired change since the previous one."""

import asyncio
import json
import math
from types import SimpleNamespace

import art
import pytest

import rollouts.evaluate as evaluate_module
from rollouts.eval_record import EvalRecord, EvalRollout, previous_record, read_records, record_path, write_record
from rollouts.evaluate import MESSAGE_CHARS, Evaluation, kept_rollouts, task_rewards
from rollouts.intervals import bootstrap_interval
from trainer.active_run import Run, eval_lines
from trainer.config import ExperimentConfig


def group(task: str, *rewards: float, answer: str = "42") -> art.TrajectoryGroup:
    return art.TrajectoryGroup([art.Trajectory(messages_and_choices=[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": f"solve {task}"},
        {"role": "assistant", "content": answer}], reward=r) for r in rewards], metadata={"scenario_id": task})


def test_each_task_is_the_mean_of_its_scored_rollouts():
    groups = [group("b", 1.0, 0.0), group("a", 0.5), group("c"), group("b", 0.5)]
    assert task_rewards(groups) == {"a": 0.5, "b": 0.5}  # "c" failed every rollout: no reward to average


def test_kept_rollouts_are_the_same_tasks_each_time_with_their_last_messages():
    groups = [group("t3", 0.0), group("t1", 1.0, answer="x" * (3 * MESSAGE_CHARS)), group("t2", 0.5),
              group("t0")]
    kept = kept_rollouts(groups, count=2)
    assert [(r.scenario, r.reward) for r in kept] == [("t1", 1.0), ("t2", 0.5)]
    assert kept[1].text.startswith("[system] be brief") and kept[1].text.endswith("[assistant] 42")
    assert "characters left out" in kept[0].text and len(kept[0].text) < 2 * MESSAGE_CHARS


def test_an_eval_file_round_trips_and_stores_no_nan(tmp_path):
    record = EvalRecord(3, "after SFT", {"a": 0.5}, 0.5, math.nan, None, [EvalRollout("a", 0.5, "[user] hi")], "r1")
    path = write_record(tmp_path, record)
    assert path == tmp_path / "eval" / "step_0003.json" == record_path(tmp_path, 3)
    data = json.loads(path.read_text())
    assert data["ci_low"] is None and data["rewards"] == {"a": 0.5} and data["rollouts"][0]["text"] == "[user] hi"
    assert read_records(tmp_path) == {3: record}


def test_unreadable_and_other_runs_files_are_left_out(tmp_path):
    write_record(tmp_path, EvalRecord(0, "before training", {"a": 0.0}, run_id="old"))
    write_record(tmp_path, EvalRecord(2, "at step 2", {"a": 1.0}, run_id="new"))
    write_record(tmp_path, EvalRecord(4, "at step 4", {"a": 1.0}))  # a file from before run ids: kept
    (tmp_path / "eval" / "step_0009.json").write_text("{not json")
    assert sorted(read_records(tmp_path)) == [0, 2, 4]
    assert sorted(read_records(tmp_path, "new")) == [2, 4]
    assert previous_record(tmp_path, 4, "new").step == 2
    assert previous_record(tmp_path, 2, "new") is None and previous_record(tmp_path, 2).step == 0


def test_the_eval_line_says_the_interval_and_the_paired_change():
    before = EvalRecord(0, "before training", {"a": 0.0, "b": 0.0, "c": 0.5}, 1 / 6, 0.0, 0.5)
    after = EvalRecord(3, "after SFT", {"a": 1.0, "b": 0.5, "c": 0.5, "d": 1.0}, 0.75, 0.5, 1.0)
    first, change = eval_lines(after, {"reward_mean": 0.75, "pass_rate": 0.5}, 4, before)
    assert first == "eval after SFT (step 3): reward 0.750 [90% CI 0.50, 1.00] on 4 held-out task(s), pass rate 50%"
    assert change == "  vs before training: +0.50 [90% CI +0.17, +0.83], paired over 3 tasks"
    assert eval_lines(EvalRecord(0, "before training", {}), {}, 4, None) == [
        "eval before training (step 0): reward nan on 4 held-out task(s), pass rate nan%"]
    assert eval_lines(after, {}, 4, EvalRecord(2, "at step 2", {"z": 1.0}))[1] == "  vs step 2: no task scored in both"


class FakeModel:
    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []

    async def log(self, groups, split, step, metrics) -> None:
        assert split == "val"
        self.logged.append((step, metrics))

    def read_state(self) -> dict:
        return {"run_id": "run1"}


def fake_run(tmp_path, monkeypatch, results: list[dict[str, float]]) -> Run:
    """A Run whose evaluation scores the given per-task rewards, one dict per call."""
    async def fake_evaluate(*_args, **_kwargs) -> Evaluation:
        rewards = results.pop(0)
        groups = [group(task, value) for task, value in rewards.items()]
        mean = sum(rewards.values()) / len(rewards)
        return Evaluation(groups, {"reward_mean": mean, "pass_rate": 0.0}, task_rewards(groups),
                          bootstrap_interval(rewards.values()), kept_rollouts(groups))

    monkeypatch.setattr(evaluate_module, "evaluate", fake_evaluate)
    config = ExperimentConfig(experiment_name="e", log_dir=str(tmp_path / "logs"))
    env = SimpleNamespace(rollout=None, step_metrics=None)
    return Run(config, env, FakeModel(), None, tmp_path, ctx=object(), limits=object(), val=[None] * 3)


def test_each_evaluation_is_kept_and_compared_with_the_previous(tmp_path, monkeypatch, capsys):
    before, sft, rl = {"a": 0.0, "b": 0.0, "c": 0.5}, {"a": 1.0, "b": 0.5, "c": 0.5}, {"a": 1.0, "b": 1.0, "c": 1.0}
    run = fake_run(tmp_path, monkeypatch, [before, sft, dict(rl), rl])
    asyncio.run(run.evaluate(0, "before training"))
    asyncio.run(run.evaluate(2, "after SFT"))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("eval before training (step 0): reward 0.167 [90% CI ") and len(out) == 3
    assert out[2].startswith("  vs before training: +0.50 [90% CI +") and out[2].endswith("paired over 3 tasks")
    resumed = fake_run(tmp_path, monkeypatch, [dict(rl), rl])  # a resumed run: the earlier files are still there
    figures = asyncio.run(resumed.evaluate(5, "after training"))
    assert capsys.readouterr().out.splitlines()[1].startswith("  vs after SFT: +0.33")
    asyncio.run(resumed.evaluate(5, "after training"))  # the same step again replaces its own file
    records = read_records(tmp_path / "logs" / "e")
    assert sorted(records) == [0, 2, 5] and records[5].rewards == rl and records[2].label == "after SFT"
    assert records[0].run_id == "run1" and [r.scenario for r in records[0].rollouts] == ["a", "b", "c"]
    assert not list((tmp_path / "logs" / "e" / "eval").glob(".tmp-*"))
    assert resumed.model.logged == [(5, figures), (5, figures)]


def test_evaluate_adds_the_interval_over_tasks_to_the_figures(monkeypatch):
    groups = [group("a", 0.0, 1.0), group("b", 1.0, 1.0), group("c", 0.0, 0.0)]

    async def fake_gather(*_args, **_kwargs):
        return groups

    monkeypatch.setattr(evaluate_module, "gather_step", fake_gather)
    result = asyncio.run(evaluate_module.evaluate([None] * 3, None, None, 2, None, None))
    assert result.task_rewards == {"a": 0.5, "b": 1.0, "c": 0.0}
    low, high = result.metrics["reward_ci_low"], result.metrics["reward_ci_high"]
    assert result.metrics["reward_mean"] == pytest.approx(0.5) and 0.0 <= low < 0.5 < high <= 1.0
    assert result.interval == bootstrap_interval([0.5, 1.0, 0.0])


@pytest.mark.parametrize(("eval_temperature", "sampled_at"), [(None, 0.7), (0.0, 0.0)])
def test_every_evaluation_samples_at_the_eval_temperature(tmp_path, monkeypatch, eval_temperature, sampled_at):
    """--eval-temperature holds every evaluation at one setting (default: --temperature); the run's own context,
    which RL steps sample from, keeps its temperature."""
    from rollouts.context import RolloutContext, RolloutSettings

    seen: list[float] = []
    seen_clients: list[object] = []

    async def fake_evaluate(_val, _rollout, ctx, *_args, **_kwargs) -> Evaluation:
        seen.append(ctx.settings.temperature)
        seen_clients.append(ctx._client)
        groups = [group("a", 1.0)]
        return Evaluation(groups, {"reward_mean": 1.0}, task_rewards(groups), bootstrap_interval([1.0]), [])

    monkeypatch.setattr(evaluate_module, "evaluate", fake_evaluate)
    config = ExperimentConfig(experiment_name="e", log_dir=str(tmp_path / "logs"), temperature=0.7,
                              eval_temperature=eval_temperature)
    model = SimpleNamespace(inference_base_url="http://127.0.0.1:9/v1", inference_api_key=None)
    ctx = RolloutContext(model=model, settings=RolloutSettings(temperature=0.7))
    run = Run(config, SimpleNamespace(rollout=None, step_metrics=None), FakeModel(), None, tmp_path, ctx=ctx,
              limits=object(), val=[None])
    asyncio.run(run.evaluate(0, "before training"))
    asyncio.run(run.evaluate(3, "after SFT"))
    assert seen == [sampled_at, sampled_at] and run.ctx.settings.temperature == 0.7
    if eval_temperature is not None:  # the evaluation's copy shares the run's client: nothing left to close
        assert seen_clients == [ctx.client()] * 2


def test_a_bad_eval_temperature_is_one_line_exit_2(capsys):
    from train import main

    assert main(["--experiment-name", "x", "--env", "toy", "--eval-temperature", "-1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: --eval-temperature must be between 0 and 10"]
