"""Run one step's groups: every rollout of every group concurrently, under one semaphore and one rate limit.

ART's own gather helpers do the bookkeeping (progress bar, per-rollout exceptions recorded on their group,
the exception bound); this module only adds the shared limits and the timing each rollout reports.
"""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass

import art
from asyncio_throttle import Throttler

from envs.scenario import Scenario
from rollouts.context import RolloutContext
from rollouts.registry import RolloutFn


class StepFailed(RuntimeError):
    """More rollouts raised than the step may lose; nothing of the step is trained or committed."""


@dataclass
class GatherLimits:
    """Shared by all rollouts of a run: `max_concurrent` in flight, at most `rate` starts per second."""

    semaphore: asyncio.Semaphore
    throttler: Throttler

    @classmethod
    def create(cls, max_concurrent: int, rate_per_second: float) -> GatherLimits:
        # asyncio-throttle counts whole starts per period: express fractional rates as N per N/rate seconds.
        rate_limit = max(int(rate_per_second), 1)
        throttler = Throttler(rate_limit=rate_limit, period=rate_limit / rate_per_second)
        return cls(asyncio.Semaphore(max_concurrent), throttler)


def freeze_startup_heap() -> None:
    """Move everything alive after start-up (torch, transformers, ART, the model) out of the garbage collector's
    reach. Those millions of objects live for the whole run, yet each full collection walked them all, stalling the
    event loop, and with it every rollout in flight, for ~0.3 s (bench/gather.py: 32 concurrent went from 0.82 to
    0.96 of ideal). Objects created later are collected as usual."""
    gc.collect()
    gc.freeze()


async def _limited(rollout: RolloutFn, ctx: RolloutContext, scenario: Scenario, limits: GatherLimits) -> art.Trajectory:
    async with limits.semaphore:
        async with limits.throttler:
            pass
        started = time.monotonic()
        trajectory = await rollout(ctx, scenario)
        trajectory.metrics["rollout_seconds"] = time.monotonic() - started
        return trajectory


async def gather_step(
    scenarios: list[Scenario],
    rollout: RolloutFn,
    ctx: RolloutContext,
    rollouts_per_group: int,
    limits: GatherLimits,
    max_failed_share: float,
    desc: str = "gather",
) -> list[art.TrajectoryGroup]:
    """A rollout that raises is kept as an exception on its group; the step fails only past `max_failed_share`."""
    groups = [
        art.TrajectoryGroup(
            (_limited(rollout, ctx, scenario, limits) for _ in range(rollouts_per_group)),
            metadata={"scenario_id": scenario.id},
        )
        for scenario in scenarios
    ]
    total = len(scenarios) * rollouts_per_group
    # ART reads a bound below 1 as a share of all rollouts; max_failed_share == 1 means "never fail the step".
    bound: float = max_failed_share if max_failed_share < 1 else float(total)
    try:
        return await art.gather_trajectory_groups(groups, pbar_desc=desc, max_exceptions=bound, max_metrics=1)
    except Exception as exc:
        raise StepFailed(
            f"{desc}: more than {max_failed_share:.0%} of {total} rollouts failed "
            f"(--max-failed-share); last error: {exc.__class__.__name__}: {exc}"
        ) from exc
