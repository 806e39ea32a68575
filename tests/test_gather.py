"""The gather loop: one semaphore bounds concurrency across all groups; failing rollouts are counted."""

import art
import pytest

from envs.scenario import Scenario
from rollouts.context import RolloutContext, RolloutSettings
from rollouts.gather import GatherLimits, StepFailed, gather_step
from rollouts.metrics import has_signal, step_metrics
from rollouts.toy import rollout as toy_rollout
from tests.fake_openai_server import start_fake_server

SCENARIOS = [Scenario(id=f"s{i}", prompt="Say a.", data={"target": "a"}) for i in range(4)]


@pytest.fixture
def fake_endpoint():
    server, counter = start_fake_server(latency_s=0.05, reply="aab")
    model = art.Model(name="fake", project="p", inference_base_url=server.base_url, inference_api_key="k")
    yield model, counter
    server.stop()


@pytest.mark.parametrize("bound", [1, 3, 7])
async def test_semaphore_bounds_in_flight_requests_across_groups(fake_endpoint, bound):
    model, counter = fake_endpoint
    async with RolloutContext(model=model, settings=RolloutSettings()) as ctx:
        groups = await gather_step(SCENARIOS, toy_rollout, ctx, 5, GatherLimits.create(bound, 1000), 0.0)
    assert counter.total == 20
    assert counter.peak == bound  # reached, never exceeded
    assert sum(len(g.trajectories) for g in groups) == 20
    assert all(abs(t.reward - 2 / 3) < 1e-9 for g in groups for t in g.trajectories)


async def test_failing_rollouts_are_recorded_not_fatal(fake_endpoint):
    model, _ = fake_endpoint
    calls = {"n": 0}

    async def flaky(ctx, scenario):
        calls["n"] += 1
        if calls["n"] % 4 == 0:
            raise RuntimeError("sandbox died")
        return await toy_rollout(ctx, scenario)

    async with RolloutContext(model=model, settings=RolloutSettings()) as ctx:
        groups = await gather_step(SCENARIOS, flaky, ctx, 4, GatherLimits.create(4, 1000), max_failed_share=0.5)
    metrics = step_metrics(groups, expected_rollouts=16)
    assert metrics["failed_rollouts"] == 4 and metrics["rollouts"] == 12
    assert sum(len(g.exceptions) for g in groups) == 4


async def test_too_many_failures_fail_the_step(fake_endpoint):
    model, _ = fake_endpoint

    async def broken(ctx, scenario):
        raise RuntimeError("service down")

    async with RolloutContext(model=model, settings=RolloutSettings()) as ctx:
        with pytest.raises(StepFailed, match="service down"):
            await gather_step(SCENARIOS, broken, ctx, 4, GatherLimits.create(4, 1000), max_failed_share=0.25)


def test_equal_reward_groups_carry_no_signal():
    same = art.TrajectoryGroup([art.Trajectory(reward=0.5), art.Trajectory(reward=0.5)])
    mixed = art.TrajectoryGroup([art.Trajectory(reward=0.5), art.Trajectory(reward=1.0)])
    lonely = art.TrajectoryGroup([art.Trajectory(reward=1.0)])
    assert not has_signal(same) and has_signal(mixed) and not has_signal(lonely)
    assert step_metrics([same, mixed], 4)["zero_variance_group_share"] == 0.5
