"""Dynamic sampling: refill a step's groups that carry no signal (verl DAPO's filter_groups, SkyRL's
zero_variance_filter).

A GRPO group whose rewards are all equal has zero advantages and teaches nothing, so a step whose batch is mostly
such groups trains on little. After the step's batch (the data cursor's `--groups-per-step` scenarios) is gathered,
the step draws more in rounds, inside the same gather (the run's semaphore and rate limit), while fewer than
groups_per_step groups carry a signal and the step's refill budget (`--max-refill` rollouts) is left:
- `--refill scenarios`: one new group of `--rollouts-per-group` per missing informative group, from the step's
  refill stream (below), never more than the budget pays for;
- `--refill rollouts`: `--rollouts-per-group` more rollouts of each zero-variance group's own scenario, added to
  that group, which grows until it has a signal or the budget ends;
- `--refill off` (or `--max-refill 0`): one round, the batch alone, as before refills existed.
`--refill-ahead N` (scenarios mode) widens every round by N groups from the refill stream: the first round gathers
them beside the batch, each later one N more than are missing. As DAPO's gen batch above its train batch, this pays
where a round's wall time hardly grows with its rows (the CPU backend decodes 8 and 32 rows at about the same speed
per row; docs/PERFORMANCE.md "serving"): a step finds its informative groups in fewer rounds, at the price of
rollouts it may not train.
Each round is one `gather_step` (ART's `gather_trajectory_groups`), so its failures count against
`--max-failed-share` as the batch's do. Evaluation calls `gather_step` directly and never refills.

Exactness: the refill stream is the train scenarios shuffled by `random.Random(f"{seed}:{step}:refill")`, without
the step's batch, and independent of the data cursor. The cursor still moves by exactly groups_per_step a step, so
pipelined planning (`--max-steps-off-policy K`) stays exact, and a killed and resumed step gathers the same batch
and draws its refills from the same stream in the same order: nothing of the cursor's pass is repeated or skipped.
How far into its stream a step draws depends on the rewards the policy earns, not on the stream.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice

import art

from rollouts.context import RolloutContext
from rollouts.gather import GatherLimits, gather_step
from rollouts.metrics import has_signal
from rollouts.scenario import RolloutFn, Scenario

REFILL_MODES = ("scenarios", "rollouts", "off")


@dataclass(frozen=True)
class Refill:
    """How a step refills: the mode and the extra rollouts it may spend (0: it never does)."""

    mode: str = "off"
    budget: int = 0
    ahead: int = 0  # groups each round draws beyond the missing ones (scenarios mode; the others ignore it)

    @classmethod
    def of(cls, mode: str, max_refill: int | None, groups_per_step: int, rollouts_per_group: int,
           ahead: int = 0) -> Refill:
        """`--refill`, `--max-refill` and `--refill-ahead` as a step reads them: the default budget is two batches'
        worth, as DAPO's max_num_gen_batches bounds its redraws; an off mode spends nothing."""
        if mode not in REFILL_MODES:
            raise ValueError(f"--refill must be one of {', '.join(REFILL_MODES)}")
        budget = 2 * groups_per_step * rollouts_per_group if max_refill is None else max_refill
        return cls(mode, budget if mode != "off" else 0, ahead if mode == "scenarios" else 0)


def refill_stream(scenarios: list[Scenario], seed: int, step: int, batch: list[Scenario]) -> Iterator[Scenario]:
    """The scenarios a step may draw refills from, in order: a shuffle of its own, seeded by (seed, step) alone
    so a resumed step draws the same ones, skipping the step's batch so no scenario is in a step twice."""
    order = list(range(len(scenarios)))
    random.Random(f"{seed}:{step}:refill").shuffle(order)
    taken = {s.id for s in batch}
    return (scenarios[i] for i in order if scenarios[i].id not in taken)


@dataclass
class StepGroups:
    """A step's groups, the batch's first and then the refills in draw order, with what the refills spent."""

    groups: list[art.TrajectoryGroup]
    groups_per_step: int
    rollouts_per_group: int
    groups_drawn: int = 0  # scenarios gathered as groups: the batch and every scenario refill
    refill_rollouts: int = 0
    grown: set[str] = field(default_factory=set)  # groups a refill added or grew, by scenario id

    @property
    def rollouts_spent(self) -> int:
        return self.groups_per_step * self.rollouts_per_group + self.refill_rollouts

    def informative(self, groups: list[art.TrajectoryGroup] | None = None) -> list[art.TrajectoryGroup]:
        """What the step trains: groups with a signal, at most groups_per_step, first drawn first. `groups` is a
        subset kept in order (the staleness check's); by default all of them."""
        return [g for g in (self.groups if groups is None else groups) if has_signal(g)][: self.groups_per_step]

    def metrics(self, trained: int) -> dict[str, float]:
        """The refill figures of a step that trains `trained` informative groups."""
        return {"groups_drawn": float(self.groups_drawn), "groups_refilled": float(len(self.grown)),
                "refill_rollouts": float(self.refill_rollouts), "rollouts_spent": float(self.rollouts_spent),
                "informative_group_share": trained / self.groups_per_step}


async def gather_refilled(
    batch: list[Scenario],
    pool: list[Scenario],
    rollout: RolloutFn,
    ctx: RolloutContext,
    rollouts_per_group: int,
    limits: GatherLimits,
    max_failed_share: float,
    refill: Refill,
    *,
    seed: int,
    step: int,
    desc: str = "gather",
) -> StepGroups:
    """The step's batch (with `refill.ahead` refills beside it), then refill rounds (see the module's docstring)
    until groups_per_step = len(batch) groups carry a signal, the budget cannot pay for one more group's
    rollouts, or nothing is left to draw."""
    stream = refill_stream(pool, seed, step, batch)
    extra = refill.ahead if refill.mode == "scenarios" else 0
    ahead = list(islice(stream, min(extra, refill.budget // rollouts_per_group)))
    drawn = StepGroups(await gather_step([*batch, *ahead], rollout, ctx, rollouts_per_group, limits,
                                         max_failed_share, desc),
                       len(batch), rollouts_per_group, groups_drawn=len(batch) + len(ahead),
                       refill_rollouts=len(ahead) * rollouts_per_group, grown={s.id for s in ahead})
    by_id = {s.id: s for s in batch}
    left, rounds = refill.budget - drawn.refill_rollouts, 0
    while (missing := drawn.groups_per_step - sum(map(has_signal, drawn.groups))) > 0:
        affordable = min(missing + extra, left // rollouts_per_group)
        if refill.mode == "scenarios":
            scenarios = list(islice(stream, affordable))
        else:  # "rollouts": the zero-variance groups, first drawn first (none when off: its budget is 0)
            silent = [g for g in drawn.groups if not has_signal(g)][:affordable]
            scenarios = [by_id[str(g.metadata["scenario_id"])] for g in silent]
        if not scenarios:
            break
        rounds += 1
        more = await gather_step(scenarios, rollout, ctx, rollouts_per_group, limits, max_failed_share,
                                 f"{desc} refill {rounds}")
        spent = len(scenarios) * rollouts_per_group
        left, drawn.refill_rollouts = left - spent, drawn.refill_rollouts + spent
        drawn.grown |= {s.id for s in scenarios}
        if refill.mode == "scenarios":
            drawn.groups += more
            drawn.groups_drawn += len(scenarios)
        else:
            _grow(drawn.groups, more)
    return drawn


def _grow(groups: list[art.TrajectoryGroup], more: list[art.TrajectoryGroup]) -> None:
    """Add each new group's rollouts (and failures) to the step's group of the same scenario, in place."""
    by_id = {g.metadata["scenario_id"]: g for g in groups}
    for extra in more:
        group = by_id[extra.metadata["scenario_id"]]
        group.trajectories = [*group.trajectories, *extra.trajectories]
        group.exceptions = [*group.exceptions, *extra.exceptions]
