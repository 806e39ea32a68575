"""Pipelined steps (`--max-steps-off-policy K`): the rollouts of later steps are gathered while a step trains.

The rules are ART's `PipelineTrainer` (art/pipeline_trainer/trainer.py) kept inside our resume contract:
- Every rollout records the policy it was sampled from in ART's own fields: `Trajectory.initial_policy_version` (the
  policy step when the rollout started) and `final_policy_version` (when it ended), plus `metadata["policy_step"]`
  (= initial) for the parquet and RLM logs. The policy step advances when `train()` returns.
- Gate (ART's `_wait_for_policy`): step t trains from policy t-1, so its gather starts only once step t-1-K is
  committed. K = 0 is the synchronous loop: gather t starts after step t-1's commit, as it always did.
- Staleness (ART's `_is_group_stale`): a group whose oldest rollout started under a policy older than t-1-K is not
  trained, and is counted in `stale_groups_dropped`. `off_policy_steps_mean/max` are (t-1) - policy_step over the
  step's trajectories: 0 when synchronous. (ART's `steps_off_policy` counts to the step produced, one more.)
  Since a step's batch is fixed by the data cursor and its gather waits for the gate, and a rollout reads the policy
  step only when it starts (after the concurrency limit lets it in), the gate already keeps every group within K:
  the drop is ART's safety net, and a non-zero count means a rollout reported an older policy than its gate allowed.

On the CPU backend one torch model serves and trains: `LoraPolicy.sample` and `train_step` both hold `policy.lock`,
so a decode batch waits for a whole train step (and the reverse), never reading half-updated weights. New weights
are live from the moment `train_step` releases the lock, a little before `train()` returns and the policy step
advances, and a multi-turn rollout may sample later turns from a newer policy: `policy_step` is the oldest policy a
trajectory saw, so the recorded distance is never less than the real one.

Why not `PipelineTrainer` itself: it forms batches from whichever groups finish first (variable size, completion
order) and persists `scenario_offset` counting scenarios handed to workers, in flight included, so a kill loses the
in-flight scenarios and a resumed step trains other data; it neither rolls back history rows past the commit nor
writes our logs. Here a step's batch is the cursor's next `--groups-per-step` scenarios, so resume is the
synchronous contract unchanged (trainer/resume.py): nothing gathered ahead is saved; after a kill the steps past the
committed one are gathered again from the committed cursor by the committed policy (the first step after a resume
is on-policy), and a trajectory gathered before the kill is never trained. Each step is committed once, in order.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import art

POLICY_STEP = "policy_step"
SHARED_MODE_KINDS = ("local", "megatron")  # ART's LocalBackend and its subclass MegatronBackend


def backend_problem(backend: str, max_steps_off_policy: int) -> str | None:
    """One line when the backend cannot serve rollouts while it trains (`auto` is resolved as a run resolves it)."""
    if not max_steps_off_policy:
        return None
    kind = backend
    if backend == "auto":
        from backends import choose_backend

        kind = choose_backend("auto").kind
    if kind not in SHARED_MODE_KINDS:
        return None
    return (f"--max-steps-off-policy {max_steps_off_policy}: --backend {kind} (ART's LocalBackend in shared mode) "
            "pauses inference while it trains, so rollouts cannot overlap training (ART's PipelineTrainer refuses "
            "it too); use 0, or --backend cpu, serverless or tinker")


@dataclass
class PolicyClock:
    """The newest policy rollouts sample from: the step whose `train()` returned last."""

    step: int


def versioned(rollout: Callable[[Any, Any], Awaitable[art.Trajectory]],
              clock: PolicyClock) -> Callable[[Any, Any], Awaitable[art.Trajectory]]:
    """`rollout`, recording on each trajectory the policy step it started and ended under."""

    async def run(ctx: Any, scenario: Any) -> art.Trajectory:
        started = clock.step
        trajectory = await rollout(ctx, scenario)
        if trajectory.initial_policy_version is None:
            trajectory.initial_policy_version = started
        trajectory.final_policy_version = clock.step
        trajectory.metadata[POLICY_STEP] = trajectory.initial_policy_version
        return trajectory

    return run


@dataclass
class Staleness:
    """What a step may train: groups within K of the policy it trains from, and the distances of its data."""

    kept: list[art.TrajectoryGroup]
    dropped: int
    distances: list[int]

    def metrics(self) -> dict[str, float]:
        return {"stale_groups_dropped": float(self.dropped),
                "off_policy_steps_mean": statistics.fmean(self.distances) if self.distances else 0.0,
                "off_policy_steps_max": float(max(self.distances, default=0))}


def check_staleness(groups: list[art.TrajectoryGroup], trains_from: int, max_off_policy: int) -> Staleness:
    """ART's rule: a group is as old as its oldest rollout; older than `trains_from - max_off_policy` is dropped.
    Trajectories that recorded no policy (an env's own) count as current."""
    oldest_allowed = trains_from - max_off_policy
    kept, dropped, distances = [], 0, []
    for group in groups:
        versions = [t.initial_policy_version for t in group.trajectories if t.initial_policy_version is not None]
        distances += [trains_from - v for v in versions]
        if versions and min(versions) < oldest_allowed:
            dropped += 1
        else:
            kept.append(group)
    return Staleness(kept, dropped, distances)


@dataclass
class PlannedStep:
    """One step's data: its batch from the cursor, the cursor after it, and its gather (started at the gate)."""

    step: int
    batch: list[Any]
    next_cursor: Any
    task: asyncio.Task[Any] | None = None  # the gather's result (rl.py: the step's groups and refills)
    started: float = 0.0
    finished: float | None = None

    @property
    def gather_seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started


@dataclass
class StepPipeline:
    """Plans steps from the committed cursor in order and starts each one's gather once its gate is open.

    `take(cursor) -> (batch, next_cursor)` is the data cursor's own step; `gather(step, batch)` gathers a batch
    (and whatever refills it draws: rollouts/refill.py, independent of the cursor).
    Planning stops at `last_step` or where the next batch would start epoch `num_epochs` (`epochs_done`).
    """

    cursor: Any
    take: Callable[[Any], tuple[list[Any], Any]]
    gather: Callable[[int, list[Any]], Awaitable[Any]]
    committed: int
    last_step: int
    num_epochs: int
    max_off_policy: int
    epochs_done: bool = False
    ahead: deque[PlannedStep] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self._planned = self.committed  # the last step planned

    def open_gates(self, committed: int) -> None:
        """Step `committed` is committed: start the gathers of the steps up to committed+1+K."""
        self.committed = committed
        while not self.epochs_done and self._planned < min(committed + 1 + self.max_off_policy, self.last_step):
            batch, next_cursor = self.take(self.cursor)
            if next_cursor.epoch >= self.num_epochs:
                self.epochs_done = True
                break
            self._planned += 1
            self.cursor = next_cursor
            planned = PlannedStep(self._planned, batch, next_cursor, started=time.monotonic())
            planned.task = asyncio.create_task(self._timed(planned), name=f"gather step {planned.step}")
            self.ahead.append(planned)

    async def _timed(self, planned: PlannedStep) -> Any:
        try:
            return await self.gather(planned.step, planned.batch)
        finally:
            planned.finished = time.monotonic()

    def next(self) -> PlannedStep | None:
        """The next step to train, in order; None when nothing more is planned."""
        return self.ahead.popleft() if self.ahead else None

    async def close(self) -> None:
        """Cancel the gathers of steps that will not train (the run stops or failed); their data is discarded."""
        pending = [p.task for p in self.ahead if p.task is not None]
        self.ahead.clear()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)  # each one's error or cancellation, not raised
