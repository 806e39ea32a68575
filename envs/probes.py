"""Reward probes: fixed outputs an env scores through its real rollout, to prove its reward cannot be gamed.

A probe is what a scripted policy would say, turn by turn: the oracle (the reference or demonstration answer),
a do-nothing answer, and each cheat a hostile policy might try (read the answer from disk, rewrite the tests,
forge a verdict). Each env lists its probes for a scenario (`EnvSpec.reward_probes`); the reward preflight
(`--check-rewards`, and before a run's first RL step) and the cheat tests replay them through the real services.
The reward separates them when the oracle reaches the env's pass threshold and neither the do-nothing answer nor
any cheat does, and no cheat scores above doing nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ProbeKind = Literal["oracle", "nothing", "cheat"]


@dataclass(frozen=True)
class RewardProbe:
    """One scripted output. `replies` are the assistant turns, in order; when the env asks for more turns than
    there are replies, the last one repeats (so a one-reply probe works for multi-turn envs too)."""

    name: str  # "oracle", "do-nothing", or "cheat:<what it tries>" (shown in the preflight table)
    kind: ProbeKind
    replies: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.replies:
            raise ValueError(f"probe {self.name}: at least one reply")
