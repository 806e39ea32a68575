"""Per-step figures beyond the averages `model.log` already computes from trajectory metrics."""

from __future__ import annotations

import statistics

import art


def has_signal(group: art.TrajectoryGroup) -> bool:
    """GRPO learns from reward differences inside a group: one survivor or all-equal rewards teach nothing."""
    rewards = [t.reward for t in group.trajectories]
    return len(rewards) >= 2 and max(rewards) > min(rewards)


def step_metrics(groups: list[art.TrajectoryGroup], expected_rollouts: int) -> dict[str, float]:
    rewards = [t.reward for g in groups for t in g.trajectories]
    failed = sum(len(g.exceptions) for g in groups)
    lost_groups = expected_rollouts - failed - len(rewards)  # groups ART dropped whole
    metrics: dict[str, float] = {
        "rollouts": float(len(rewards)),
        "failed_rollouts": float(failed + max(lost_groups, 0)),
        "zero_variance_group_share": (
            sum(not has_signal(g) for g in groups) / len(groups) if groups else 1.0
        ),
    }
    if rewards:
        metrics |= {
            "reward_mean": statistics.fmean(rewards),
            "reward_std": statistics.pstdev(rewards),
            "reward_min": min(rewards),
            "reward_max": max(rewards),
        }
    for key in ("finished", "agent_steps", "rollout_seconds", "completion_tokens"):
        values = [float(t.metrics[key]) for g in groups for t in g.trajectories if key in t.metrics]
        if values:
            metrics[f"{key}_mean"] = statistics.fmean(values)
    return metrics
