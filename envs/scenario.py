"""The unit of work every env hands the trainer: one task, which a group of rollouts attempts together."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Scenario:
    id: str
    prompt: str
    data: dict[str, Any] = field(default_factory=dict)


class DatasetError(ValueError):
    """A dataset row is unusable; raised before training starts, naming the row and the field."""
