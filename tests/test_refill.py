"""`--refill` / `--max-refill`: a step whose groups carry no reward spread draws more (new scenarios, or more rollouts
of the same one) within a budget, trains at most groups_per_step informative groups, and stays exact on resume:
the data cursor moves by groups_per_step a step and the refill draws are a function of (seed, step) alone."""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from pathlib import Path

import art
import pytest

from rollouts.evaluate import evaluate
from rollouts.gather import GatherLimits, StepFailed, gather_step
from rollouts.metrics import has_signal
from rollouts.refill import Refill, StepGroups, gather_refilled, refill_stream
from rollouts.scenario import Scenario
from tests.helpers import (
    history_rows,
    history_steps,
    kill_when,
    model_dir,
    read_state,
    run_train,
)
from train import main
from trainer.cli import config_from_args
from trainer.config import ConfigError
from trainer.pipeline import StepPipeline
from trainer.resume import Cursor
from trainer.rl import summary_line

# A scenario's kind says what its rollouts score: "flat" all 0 (no signal), "varied" 0 and 1 in turn, "late" 0 for
# its first four rollouts (a first group) and then 0 and 1 in turn.
POOL = [Scenario(id=f"s{i:02d}", prompt="", data={"kind": "varied" if i % 3 == 0 else "flat"}) for i in range(30)]


class Scored:
    """A fake rollout: no model, a reward by the scenario's kind, and a count of what it ran."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def __call__(self, ctx: object, scenario: Scenario) -> art.Trajectory:
        n = self.calls[scenario.id]
        self.calls[scenario.id] += 1
        await asyncio.sleep(0)
        kind = scenario.data["kind"]
        reward = 0.0 if kind == "flat" or (kind == "late" and n < 4) else float(n % 2)
        return art.Trajectory(messages_and_choices=[], reward=reward, metadata={"scenario_id": scenario.id})


def _flat(n: int) -> list[Scenario]:
    return [Scenario(id=f"b{i}", prompt="", data={"kind": "flat"}) for i in range(n)]


async def _gather(batch: list[Scenario], refill: Refill, rollout: Scored | None = None, *, pool: list[Scenario] = POOL,
                  seed: int = 0, step: int = 1, failed_share: float = 0.0) -> StepGroups:
    return await gather_refilled(batch, pool, rollout or Scored(), None, 4, GatherLimits.create(8, 1000),
                                 failed_share, refill, seed=seed, step=step)


def _ids(groups: list[art.TrajectoryGroup]) -> list[str]:
    return [str(g.metadata["scenario_id"]) for g in groups]


# ---- what a step draws -------------------------------------------------------------------------------------------


async def test_scenarios_mode_draws_new_groups_until_groups_per_step_carry_a_signal():
    rollout = Scored()
    drawn = await _gather(_flat(4), Refill("scenarios", 1000), rollout)
    stream = [s for s in refill_stream(POOL, 0, 1, _flat(4))]
    informative_in_stream = [s.id for s in stream if s.data["kind"] == "varied"]
    last = stream.index(next(s for s in stream if s.id == informative_in_stream[3]))
    assert _ids(drawn.groups)[:4] == ["b0", "b1", "b2", "b3"]  # the batch first, then refills in draw order
    assert [s.id for s in stream[: len(drawn.groups) - 4]] == _ids(drawn.groups)[4:]
    assert sum(map(has_signal, drawn.groups)) == 4 and len(drawn.groups) - 4 >= last + 1
    assert len(drawn.informative()) == 4 and all(map(has_signal, drawn.informative()))
    assert drawn.rollouts_spent == sum(rollout.calls.values()) == 4 * len(drawn.groups)
    m = drawn.metrics(trained=4)
    assert m["groups_drawn"] == len(drawn.groups) and m["groups_refilled"] == len(drawn.groups) - 4
    assert m["refill_rollouts"] == 4 * (len(drawn.groups) - 4) and m["informative_group_share"] == 1.0


async def test_each_round_draws_one_group_per_missing_informative_group():
    """Two of four batch groups carry a signal: the first round draws exactly two new groups."""
    batch = [*_flat(2), *(Scenario(id=f"v{i}", prompt="", data={"kind": "varied"}) for i in range(2))]
    pool = [Scenario(id=f"p{i}", prompt="", data={"kind": "varied"}) for i in range(10)]
    drawn = await _gather(batch, Refill("scenarios", 1000), pool=pool)
    assert len(drawn.groups) == 6 and drawn.refill_rollouts == 8
    assert [g.metadata["scenario_id"] for g in drawn.groups[4:]] == [s.id for s in refill_stream(pool, 0, 1, batch)][:2]


@pytest.mark.parametrize("budget, groups", [(0, 0), (3, 0), (4, 1), (10, 2), (12, 3), (15, 3)])
async def test_the_budget_is_never_exceeded_and_spent_a_whole_group_at_a_time(budget, groups):
    rollout = Scored()
    drawn = await _gather(_flat(2), Refill("scenarios", budget), rollout, pool=_flat(2) + POOL[1:3] + POOL[4:6])
    assert drawn.refill_rollouts == 4 * groups <= budget
    assert sum(rollout.calls.values()) == 8 + 4 * groups == drawn.rollouts_spent


def test_the_default_budget_is_two_batches_and_off_or_zero_spend_nothing():
    assert Refill.of("scenarios", None, 4, 8) == Refill("scenarios", 64)
    assert Refill.of("rollouts", 5, 4, 8) == Refill("rollouts", 5)
    assert Refill.of("off", None, 4, 8).budget == 0 == Refill.of("scenarios", 0, 4, 8).budget


class RoundSpy:
    """Records the scenario ids of each gather round, then gathers them as usual."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import rollouts.refill

        self.rounds: list[list[str]] = []
        self.real = gather_step
        monkeypatch.setattr(rollouts.refill, "gather_step", self)

    async def __call__(self, scenarios: list[Scenario], *args: object) -> list[art.TrajectoryGroup]:
        self.rounds.append([s.id for s in scenarios])
        return await self.real(scenarios, *args)


async def test_refill_ahead_gathers_refills_beside_the_batch_and_widens_each_round(monkeypatch):
    spy = RoundSpy(monkeypatch)
    batch = _flat(2)
    stream = [s.id for s in refill_stream(FLAT_POOL, 0, 1, batch)]
    drawn = await _gather(batch, Refill.of("scenarios", 24, 2, 4, ahead=2), pool=FLAT_POOL)
    # Round 1: the batch and 2 refills at once; round 2: the 2 missing + 2 ahead; then the budget (24) is spent.
    assert spy.rounds == [["b0", "b1", *stream[:2]], stream[2:6]]
    assert drawn.refill_rollouts == 24 and drawn.groups_drawn == 8 and drawn.rollouts_spent == 32
    assert drawn.metrics(trained=0)["groups_refilled"] == 6.0


async def test_with_refill_ahead_a_step_whose_batch_has_a_signal_trains_the_batch_in_one_round(monkeypatch):
    spy = RoundSpy(monkeypatch)
    batch = [POOL[0], POOL[3]]  # varied: both carry a signal
    drawn = await _gather(batch, Refill.of("scenarios", None, 2, 4, ahead=2))
    assert len(spy.rounds) == 1 and len(spy.rounds[0]) == 4 and drawn.refill_rollouts == 8
    assert _ids(drawn.informative()) == ["s00", "s03"]  # the batch first, whatever the refills scored


def test_refill_ahead_is_for_scenario_refills_and_within_the_budget():
    assert Refill.of("scenarios", None, 2, 4, ahead=3) == Refill("scenarios", 16, 3)
    assert Refill.of("rollouts", None, 2, 4, ahead=3).ahead == 0 == Refill.of("off", None, 2, 4, ahead=3).ahead


async def test_refill_ahead_never_spends_past_the_budget(monkeypatch):
    spy = RoundSpy(monkeypatch)
    drawn = await _gather(_flat(2), Refill.of("scenarios", 6, 2, 4, ahead=3), pool=FLAT_POOL)
    assert [len(r) for r in spy.rounds] == [3] and drawn.refill_rollouts == 4  # one group fits in 6 rollouts


async def test_refills_stop_when_the_stream_runs_out():
    pool = _flat(6)  # four of them are the batch: two left to draw
    drawn = await _gather(pool[:4], Refill("scenarios", 1000), pool=pool)
    assert _ids(drawn.groups)[:4] == ["b0", "b1", "b2", "b3"] and sorted(_ids(drawn.groups)[4:]) == ["b4", "b5"]
    assert drawn.refill_rollouts == 8


async def test_rollouts_mode_grows_the_same_group_until_it_has_a_signal():
    late = Scenario(id="late", prompt="", data={"kind": "late"})
    batch = [late, Scenario(id="v", prompt="", data={"kind": "varied"}), *_flat(1)]
    rollout = Scored()
    drawn = await _gather(batch, Refill("rollouts", 40), rollout)
    assert _ids(drawn.groups) == ["late", "v", "b0"]  # no new scenario: the groups grew
    by_id = dict(zip(_ids(drawn.groups), drawn.groups, strict=True))
    assert len(by_id["late"].trajectories) == 8 and has_signal(by_id["late"])  # one refill made it informative
    assert len(by_id["v"].trajectories) == 4  # a group with a signal is left alone
    flat_refills = (40 - 4) // 4  # the flat one grows round after round until the budget is spent
    assert len(by_id["b0"].trajectories) == 4 + 4 * flat_refills
    assert drawn.refill_rollouts == 4 + 4 * flat_refills == 40 and drawn.groups_drawn == 3
    assert drawn.metrics(trained=2)["groups_refilled"] == 2.0  # late and b0, each counted once
    assert sum(rollout.calls.values()) == drawn.rollouts_spent


async def test_off_is_the_gather_of_before():
    batch = [*_flat(2), POOL[0], POOL[3]]
    before, now = Scored(), Scored()
    plain = await gather_step(batch, before, None, 4, GatherLimits.create(8, 1000), 0.0)
    for refill in (Refill("off", 0), Refill.of("off", 100, 4, 4), Refill("scenarios", 0)):
        drawn = await _gather(batch, refill, now)
        assert _ids(drawn.groups) == _ids(plain)
        assert [[t.reward for t in g.trajectories] for g in drawn.groups] == [
            [t.reward for t in g.trajectories] for g in plain]
        assert drawn.metrics(trained=2) == {"groups_drawn": 4.0, "groups_refilled": 0.0, "refill_rollouts": 0.0,
                                            "rollouts_spent": 16.0, "informative_group_share": 0.5}
        now.calls.clear()
    assert sum(before.calls.values()) == 16


# ---- what a step trains ------------------------------------------------------------------------------------------


def _group(sid: str, *rewards: float) -> art.TrajectoryGroup:
    return art.TrajectoryGroup([art.Trajectory(messages_and_choices=[], reward=r) for r in rewards],
                               metadata={"scenario_id": sid})


def test_a_step_trains_at_most_groups_per_step_informative_groups_first_drawn_first():
    groups = [_group("a", 0, 1), _group("b", 0, 0), _group("c", 1, 0), _group("d", 0, 1), _group("e", 1, 0)]
    drawn = StepGroups(groups, groups_per_step=2, rollouts_per_group=2, groups_drawn=5, refill_rollouts=6)
    assert _ids(drawn.informative()) == ["a", "c"]
    assert _ids(drawn.informative([groups[1], groups[3], groups[4]])) == ["d", "e"]  # e.g. after the staleness drop
    assert drawn.metrics(trained=1)["informative_group_share"] == 0.5


def test_the_step_line_shows_the_informative_share_and_the_refills():
    m = {"reward_mean": 0.5, "reward_min": 0.0, "reward_max": 1.0, "zero_variance_group_share": 0.5,
         "failed_rollouts": 0.0, "trained_groups": 3.0, "informative_group_share": 0.75, "refill_rollouts": 16.0,
         "step_seconds": 1.0}
    assert "trained 3 groups (75% informative, 16 refill rollouts)" in summary_line(4, m)
    assert "(75% informative)," in summary_line(4, m | {"refill_rollouts": 0.0})


async def test_a_refill_rounds_failures_count_against_max_failed_share():
    class Breaks(Scored):  # the batch's rollouts work; every refill rollout raises
        async def __call__(self, ctx: object, scenario: Scenario) -> art.Trajectory:
            if not scenario.id.startswith("b"):
                raise RuntimeError("sandbox died")
            return await super().__call__(ctx, scenario)

    with pytest.raises(StepFailed, match="refill 1.*sandbox died"):
        await _gather(_flat(2), Refill("scenarios", 8), Breaks(), failed_share=0.25)
    drawn = await _gather(_flat(2), Refill("scenarios", 8), Breaks(), failed_share=1.0)
    assert drawn.refill_rollouts == 8 and sum(len(g.exceptions) for g in drawn.groups) == 8


async def test_evaluation_never_refills():
    rollout = Scored()
    evaluation = await evaluate(_flat(3), rollout, None, 2, GatherLimits.create(4, 1000), None)
    assert sum(rollout.calls.values()) == 6 and len(evaluation.groups) == 3  # every group flat, none redrawn
    assert evaluation.metrics["zero_variance_group_share"] == 1.0


# ---- exactness: the cursor and resume ----------------------------------------------------------------------------


def test_the_refill_stream_is_a_function_of_seed_and_step_and_skips_the_batch():
    batch = POOL[:4]
    first = [s.id for s in refill_stream(POOL, 7, 3, batch)]
    assert first == [s.id for s in refill_stream(list(POOL), 7, 3, list(batch))]  # rebuilt after a resume: same
    assert first != [s.id for s in refill_stream(POOL, 7, 4, batch)] != [s.id for s in refill_stream(POOL, 8, 3, batch)]
    assert sorted(first) == sorted(s.id for s in POOL[4:])


FLAT_POOL = [Scenario(id=s.id, prompt="", data={"kind": "flat"}) for s in POOL]


async def _run_steps(cursor: Cursor, committed: int, last: int, k: int,
                     ahead: int = 0) -> dict[int, tuple[list[str], Cursor]]:
    """Steps committed+1..last through the real pipeline, every group flat (each step spends its whole budget):
    each step's drawn scenario ids and the cursor it commits."""
    async def gather(step: int, batch: list[Scenario]) -> StepGroups:
        return await _gather(batch, Refill("scenarios", 8, ahead), pool=FLAT_POOL, seed=5, step=step)

    pipeline = StepPipeline(cursor, lambda c: c.take(FLAT_POOL, 3, 5), gather, committed=committed, last_step=last,
                            num_epochs=5, max_off_policy=k)
    out = {}
    pipeline.open_gates(committed)
    while (planned := pipeline.next()) is not None:
        drawn = await planned.task
        out[planned.step] = (_ids(drawn.groups), planned.next_cursor)
        pipeline.open_gates(planned.step)
    await pipeline.close()
    return out


@pytest.mark.parametrize("k, ahead", [(0, 0), (2, 0), (0, 1)])
async def test_the_cursor_moves_by_groups_per_step_and_a_resumed_step_draws_the_same_refills(k, ahead):
    whole = await _run_steps(Cursor(), 0, 6, k, ahead)
    assert [c for _, c in whole.values()] == [Cursor(0, 3 * s) for s in range(1, 7)]  # refills never move it
    order = [i for ids, _ in whole.values() for i in ids[:3]]
    assert len(order) == len(set(order)) == 18  # the cursor's pass: nothing repeated or skipped
    assert all(len(ids) == 5 and len(set(ids)) == 5 for ids, _ in whole.values())  # 3 + 8 // 4 refills each
    resumed = await _run_steps(whole[2][1], 2, 6, k, ahead)  # killed after step 2's commit, resumed
    assert resumed == {s: whole[s] for s in range(3, 7)}  # the same batches and the same refill draws


# ---- the flags ---------------------------------------------------------------------------------------------------


def test_a_negative_max_refill_is_one_line_exit_2(capsys):
    assert main(["--experiment-name", "x", "--env", "toy", "--max-refill", "-1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: --max-refill must be 0 (no refills) or more"]
    with pytest.raises(ConfigError, match="^--max-refill"):
        config_from_args(["--experiment-name", "x", "--env", "toy", "--max-refill", "-3"])


def test_a_negative_refill_ahead_is_one_line_exit_2(capsys):
    assert main(["--experiment-name", "x", "--env", "toy", "--refill-ahead", "-1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --refill-ahead must be 0 (draw only what is missing) or more"]


def test_refill_flags_leave_the_config_hash_alone():
    plain = config_from_args(["--experiment-name", "x", "--env", "toy"])
    assert (plain.refill, plain.max_refill, plain.refill_ahead) == ("scenarios", None, 0)
    other = config_from_args(["--experiment-name", "x", "--env", "toy", "--refill", "rollouts", "--max-refill", "9",
                              "--refill-ahead", "2"])
    assert other.config_hash() == plain.config_hash()  # a run resumes under its hash with refills changed


# ---- kill -9 during refilled steps -------------------------------------------------------------------------------

# "☃" is a target the tiny random model never writes: every group is flat, so every step spends its refill budget
# (two more groups), which makes the step's draws known in advance.
KILL_FLAGS = ["--env", "toy", "--toy-target", "☃", "--groups-per-step", "2", "--rollouts-per-group", "4",
              "--dataset-size", "10", "--log-sample-rate", "1", "--max-training-steps", "3", "--refill", "scenarios",
              "--max-refill", "8", "--skip-reward-check"]


def _kill_when(art_path: Path, ready, jitter_s: float) -> dict:
    """Start the trainer; once it started its steps and `ready()` holds, wait `jitter_s`, then kill -9."""
    return kill_when(art_path, "crash", KILL_FLAGS, ready, jitter_s, start_wait=120, ready_wait=60)


@pytest.mark.slow
def test_kill_9_during_refilled_steps_commits_each_step_once_with_the_same_draws(tmp_path, record_property):
    root = model_dir(tmp_path, "crash")
    logs = tmp_path / "logs" / "crash"
    # Step 1 is being logged: the kill lands around its commit or inside step 2's gather and refill round.
    kill = _kill_when(tmp_path, (logs / "step_0001").is_dir, 0.2)
    record_property("kill", json.dumps([x for x in kill["output"] if x.startswith(("start:", "resume:", "step "))]))
    assert kill["killed_alive"], kill["output"][-5:]
    done = run_train(tmp_path, "crash", *KILL_FLAGS, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    assert history_steps(tmp_path, "crash") == [1, 2, 3]  # each step committed once, in order
    state = read_state(tmp_path, "crash")
    assert state["step"] == 3 and state["cursor"] == {"epoch": 0, "position": 6}  # 2 a step, refills or not
    config = config_from_args(["--experiment-name", "crash", *KILL_FLAGS])
    from envs.registry import get_env  # the run's own scenarios, to know each step's batch and refill stream

    scenarios = get_env(config.env, config.mix).load_scenarios(config)
    cursor, logged = Cursor(), defaultdict(Counter)
    for path in logs.glob("step_*/*.jsonl"):
        meta = json.loads(path.read_text().splitlines()[0])["environment_kwargs"]
        logged[meta["step"]][meta["scenario_id"]] += 1
    for step in (1, 2, 3):
        batch, cursor = cursor.take(scenarios, 2, config.seed)
        refills = [s.id for s in refill_stream(scenarios, config.seed, step, batch)][:2]
        assert logged[step] == Counter({s: 4 for s in [*(b.id for b in batch), *refills]}), step
    assert sorted(p.name for p in (root / "trajectories" / "train").glob("*.parquet")) == [
        f"{s:04d}.parquet" for s in (1, 2, 3)]
    rows = {row["step"]: row for row in history_rows(tmp_path, "crash")}
    assert all(rows[s]["train/refill_rollouts"] == 8.0 and rows[s]["train/groups_drawn"] == 4.0 for s in rows)
