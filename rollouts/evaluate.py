"""Evaluation on the held-out scenarios: the current policy, no training, logged under split "val"."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import art

from rollouts.context import RolloutContext
from rollouts.gather import GatherLimits, gather_step
from rollouts.metrics import step_metrics
from rollouts.scenario import RolloutFn, Scenario

PASS_REWARD = 1.0  # full marks: every expected test for r2e, the whole target for toy, a perfect mesh for gmsh


async def evaluate(scenarios: list[Scenario], rollout: RolloutFn, ctx: RolloutContext, rollouts_each: int,
                   limits: GatherLimits, env_metrics: Callable[[list[Any]], dict[str, float]] | None,
                   ) -> tuple[list[art.TrajectoryGroup], dict[str, float]]:
    """Every val scenario `rollouts_each` times; failures are counted, never fatal."""
    groups = await gather_step(scenarios, rollout, ctx, rollouts_each, limits, max_failed_share=1.0, desc="eval")
    metrics = step_metrics(groups, len(scenarios) * rollouts_each)
    rewards = [t.reward for g in groups for t in g.trajectories]
    metrics["pass_rate"] = sum(r >= PASS_REWARD - 1e-9 for r in rewards) / len(rewards) if rewards else 0.0
    if env_metrics is not None:
        metrics |= env_metrics(groups)
    return groups, metrics
