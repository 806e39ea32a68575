"""Evaluation on the held-out scenarios: the current policy, no training, logged under split "val".

Besides the averages, each task's mean reward is kept (scenario id -> mean of its rollouts): the unit a bootstrap
interval resamples and two evaluations of one run are paired on (rollouts/intervals.py), so a reward that moved
can be told from one that wobbled.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import art

from rollouts.context import RolloutContext
from rollouts.eval_record import EvalRollout
from rollouts.gather import GatherLimits, gather_step
from rollouts.intervals import LEVEL, Interval, bootstrap_interval
from rollouts.logs import chat_messages
from rollouts.metrics import step_metrics
from rollouts.scenario import RolloutFn, Scenario

PASS_REWARD = 1.0  # full marks: every expected test for r2e, the whole target for toy, a perfect mesh for gmsh
KEPT_ROLLOUTS = 3  # rollouts kept for the report: the first of the first tasks by id, the same tasks every time
KEPT_MESSAGES = 4  # the conversation's last messages: the final answer and what led to it
MESSAGE_CHARS = 2000  # a longer message keeps its start and its end


@dataclass
class Evaluation:
    """One evaluation: the groups (for `model.log`), the figures, and each task's mean reward.

    `task_rewards` holds only tasks with at least one scored rollout: a task whose rollouts all failed has no reward
    to average (as `reward_mean` leaves failures out)."""

    groups: list[art.TrajectoryGroup]
    metrics: dict[str, float]
    task_rewards: dict[str, float]
    interval: Interval  # the mean over tasks and its 90% bootstrap interval (NaN when no task scored)
    rollouts: list[EvalRollout]


async def evaluate(scenarios: list[Scenario], rollout: RolloutFn, ctx: RolloutContext, rollouts_each: int,
                   limits: GatherLimits, env_metrics: Callable[[list[Any]], dict[str, float]] | None,
                   ) -> Evaluation:
    """Every val scenario `rollouts_each` times; failures are counted, never fatal."""
    groups = await gather_step(scenarios, rollout, ctx, rollouts_each, limits, max_failed_share=1.0, desc="eval")
    metrics = step_metrics(groups, len(scenarios) * rollouts_each)
    rewards = [t.reward for g in groups for t in g.trajectories]
    metrics["pass_rate"] = sum(r >= PASS_REWARD - 1e-9 for r in rewards) / len(rewards) if rewards else 0.0
    per_task = task_rewards(groups)
    interval = bootstrap_interval(per_task.values(), LEVEL)
    if per_task:  # no scored task: no interval (NaN would reach history.jsonl)
        metrics["reward_ci_low"], metrics["reward_ci_high"] = interval.low, interval.high
    if env_metrics is not None:
        metrics |= env_metrics(groups)
    return Evaluation(groups, metrics, per_task, interval, kept_rollouts(groups))


def _task_id(group: art.TrajectoryGroup, index: int) -> str:
    return str((group.metadata or {}).get("scenario_id", f"g{index}"))


def task_rewards(groups: list[art.TrajectoryGroup]) -> dict[str, float]:
    """Scenario id (gather_step's group metadata) -> the mean reward of its scored rollouts, sorted by id."""
    rewards: dict[str, list[float]] = defaultdict(list)
    for index, group in enumerate(groups):
        rewards[_task_id(group, index)] += [float(t.reward) for t in group.trajectories]
    return {task: sum(values) / len(values) for task, values in sorted(rewards.items()) if values}


def _clip(text: str, limit: int = MESSAGE_CHARS) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters left out ...]\n{text[-half:]}"


def kept_rollouts(groups: list[art.TrajectoryGroup], count: int = KEPT_ROLLOUTS) -> list[EvalRollout]:
    """The first rollout of each of the first `count` tasks by id: the same tasks in every evaluation of a run, so
    the report shows one task's answer before and after training."""
    firsts = {}
    for index, group in enumerate(groups):
        if group.trajectories:
            firsts.setdefault(_task_id(group, index), group.trajectories[0])
    kept = []
    for task in sorted(firsts)[:count]:
        trajectory = firsts[task]
        messages = chat_messages(trajectory.messages())[-KEPT_MESSAGES:]
        text = "\n\n".join(f"[{m['role']}] {_clip(m['content'])}" for m in messages)
        kept.append(EvalRollout(task, float(trajectory.reward), text))
    return kept
