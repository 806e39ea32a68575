"""Run one step's groups: every rollout of every group concurrently, under one semaphore and one rate limit.

ART's own gather helpers do the bookkeeping (progress bar, per-rollout exceptions recorded on their group,
the exception bound); this module adds the shared limits, the timing each rollout reports, and who runs the
rollouts: a gather's slot workers, one per slot it may fill (at most `max_concurrent`). A worker takes a slot of the
run-wide semaphore and runs the gather's rollouts one after another until none is left, so a rollout that ends hands
its slot to the next one within the same task: no second task has to be woken and scheduled (an event-loop pass
later, behind everything else that is ready) before the next request goes out, and no task per rollout is made up
front (thousands of them delay the first request; bench/gather.py). A gather that starts while another
holds the slots waits for them, as a gather's queued rollouts did before: the earlier gather (the step that trains
next) keeps its priority. Each rollout's outcome reaches ART as a future of its group.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from dataclasses import dataclass

import art
from asyncio_throttle import Throttler

from rollouts.context import RolloutContext
from rollouts.scenario import RolloutFn, Scenario


class StepFailed(RuntimeError):
    """More rollouts raised than the step may lose; nothing of the step is trained or committed."""


@dataclass
class GatherLimits:
    """Shared by all rollouts of a run: `max_concurrent` in flight, at most `rate` starts per second."""

    semaphore: asyncio.Semaphore
    throttler: Throttler
    max_concurrent: int

    @classmethod
    def create(cls, max_concurrent: int, rate_per_second: float) -> GatherLimits:
        # asyncio-throttle counts whole starts per period: express fractional rates as N per N/rate seconds.
        rate_limit = max(int(rate_per_second), 1)
        throttler = Throttler(rate_limit=rate_limit, period=rate_limit / rate_per_second)
        return cls(asyncio.Semaphore(max_concurrent), throttler, max_concurrent)


def freeze_startup_heap() -> None:
    """Move everything alive after start-up (torch, transformers, ART, the model) out of the garbage collector's
    reach. Those millions of objects live for the whole run, yet each full collection walked them all, stalling the
    event loop, and with it every rollout in flight, for ~0.3 s (bench/gather.py: 32 concurrent went from 0.82 to
    0.96 of ideal). Objects created later are collected as usual."""
    gc.collect()
    gc.freeze()


@dataclass
class _Job:
    scenario: Scenario
    outcome: asyncio.Future[art.Trajectory]


async def _slot_worker(jobs: deque[_Job], rollout: RolloutFn, ctx: RolloutContext, limits: GatherLimits) -> None:
    """Hold one slot while the gather has rollouts left, running them one at a time (see the module's docstring)."""
    async with limits.semaphore:
        while jobs:
            job = jobs.popleft()
            try:
                async with limits.throttler:
                    pass
                started = time.monotonic()
                trajectory = await rollout(ctx, job.scenario)
                trajectory.metrics["rollout_seconds"] = time.monotonic() - started
            except Exception as exc:  # recorded on its group by ART, as a rollout task's exception was
                job.outcome.set_exception(exc)
            except BaseException:  # cancelled with its gather: nothing may wait on this rollout any more
                job.outcome.cancel()
                raise
            else:
                job.outcome.set_result(trajectory)


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
    loop = asyncio.get_running_loop()
    per_group = [[_Job(scenario, loop.create_future()) for _ in range(rollouts_per_group)] for scenario in scenarios]
    every_job = [job for group in per_group for job in group]
    jobs, total = deque(every_job), len(every_job)
    workers = [asyncio.create_task(_slot_worker(jobs, rollout, ctx, limits))
               for _ in range(min(total, limits.max_concurrent))]
    groups = [
        art.TrajectoryGroup((job.outcome for job in group), metadata={"scenario_id": scenario.id})
        for scenario, group in zip(scenarios, per_group, strict=True)
    ]
    # ART reads a bound below 1 as a share of all rollouts; max_failed_share == 1 means "never fail the step".
    bound: float = max_failed_share if max_failed_share < 1 else float(total)
    try:
        return await art.gather_trajectory_groups(groups, pbar_desc=desc, max_exceptions=bound, max_metrics=1)
    except Exception as exc:
        raise StepFailed(
            f"{desc}: more than {max_failed_share:.0%} of {total} rollouts failed "
            f"(--max-failed-share); last error: {exc.__class__.__name__}: {exc}"
        ) from exc
    finally:  # a failed or cancelled gather: the rollouts still running or queued stop with it
        jobs.clear()
        if running := [worker for worker in workers if not worker.done()]:
            for worker in running:
                worker.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        for job in every_job:
            if not job.outcome.cancel() and not job.outcome.cancelled():  # done: its error is ART's record or the
                job.outcome.exception()  # step's failure, not a loose end to log at exit
