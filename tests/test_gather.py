"""The gather loop: one semaphore bounds concurrency across all groups; failing rollouts are counted."""

import asyncio

import art
import pytest

from envs.toy.rollout import rollout as toy_rollout
from rollouts.context import RolloutContext, RolloutSettings
from rollouts.gather import GatherLimits, StepFailed, gather_step
from rollouts.metrics import has_signal, step_metrics
from rollouts.scenario import Scenario
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


async def test_a_failed_step_stops_the_rollouts_still_running_or_queued():
    """Past --max-failed-share the step fails at once, and its other rollouts end with it: none keeps a slot, a
    sandbox or the model server busy for a step that will not train."""
    started, cancelled = [], []

    async def slow_or_broken(ctx, scenario):
        started.append(scenario.id)
        if scenario.id == "s0":
            raise RuntimeError("service down")
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(scenario.id)
            raise

    limits = GatherLimits.create(3, 1000)
    with pytest.raises(StepFailed, match="service down"):
        await asyncio.wait_for(gather_step(SCENARIOS, slow_or_broken, None, 4, limits, max_failed_share=0.01), 10)
    running = [i for i in started if i != "s0"]
    assert len(running) == 3 and sorted(cancelled) == sorted(running)  # one per slot, each stopped with the step
    await asyncio.sleep(0.05)
    assert started.count("s0") + 3 == len(started)  # nothing started after the step failed
    assert not limits.semaphore.locked()  # every slot came back


async def test_an_earlier_gather_keeps_its_priority_over_a_later_one():
    """Pipelined steps share the limits: the step gathered first (the one that trains next) gets every slot it can
    fill before a step gathered ahead starts any rollout."""
    order = []

    async def record(ctx, scenario):
        order.append(scenario.id)
        await asyncio.sleep(0.01)
        return art.Trajectory(reward=0.0)

    limits = GatherLimits.create(2, 1000)
    first = [Scenario(id=f"a{i}", prompt="", data={}) for i in range(3)]
    later = [Scenario(id=f"b{i}", prompt="", data={}) for i in range(3)]
    a = asyncio.create_task(gather_step(first, record, None, 2, limits, 0.0))
    await asyncio.sleep(0)
    b = asyncio.create_task(gather_step(later, record, None, 2, limits, 0.0))
    await asyncio.gather(a, b)
    assert [i[0] for i in order] == ["a"] * 6 + ["b"] * 6


def test_equal_reward_groups_carry_no_signal():
    same = art.TrajectoryGroup([art.Trajectory(reward=0.5), art.Trajectory(reward=0.5)])
    mixed = art.TrajectoryGroup([art.Trajectory(reward=0.5), art.Trajectory(reward=1.0)])
    lonely = art.TrajectoryGroup([art.Trajectory(reward=1.0)])
    assert not has_signal(same) and has_signal(mixed) and not has_signal(lonely)
    assert step_metrics([same, mixed], 4)["zero_variance_group_share"] == 0.5
