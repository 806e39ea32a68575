"""The unit of work every env hands the trainer: one task, which a group of rollouts attempts together."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import art

    from rollouts.context import RolloutContext


@dataclass(frozen=True)
class Scenario:
    id: str
    prompt: str
    data: dict[str, Any] = field(default_factory=dict)


class DatasetError(ValueError):
    """A dataset row is unusable; raised before training starts, naming the row and the field."""


# How an env runs one rollout of a scenario: the agent loop, ending in a scored trajectory.
RolloutFn = Callable[["RolloutContext", Scenario], Awaitable["art.Trajectory"]]
