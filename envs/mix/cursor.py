"""The data cursor of a mixed-domain run (`--mix`, envs/mix/mix.py): which env each of a step's groups comes from,
and where each env stands in its own shuffled order.

A step's groups are dealt one at a time to the env furthest behind its ratio (share x groups dealt so far minus the
groups it has had; ties broken by a seeded hash), so after any number of steps every env's count is within one
group of its share. Each env then takes its groups from its own order, reshuffled every epoch with a seed of its own,
as `trainer.resume.Cursor` does for a single env. Everything is a pure function of (seed, committed cursor): the
trainer commits the cursor with each step (`dataclasses.asdict`), so a run killed at any point and resumed repeats
no group and skips none.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from rollouts.scenario import Scenario

ENV_KEY = "env"  # a mixed scenario's data names its env under this key


@dataclass
class EnvPosition:
    """One env's place in a mixed run: (epoch, position) in its shuffled order, and the groups it has given."""

    epoch: int = 0
    position: int = 0
    drawn: int = 0

    def take(self, scenarios: list[Scenario], count: int, seed: int, env: str) -> tuple[list[Scenario], EnvPosition]:
        """`count` scenarios from here on. A short tail starts the next epoch (an uneven epoch would favour
        some scenarios); an env with fewer scenarios than its groups in one step goes round several epochs."""
        if count and not scenarios:
            raise ValueError(f"--mix: {env} has no scenarios to draw from")
        chosen: list[Scenario] = []
        epoch, position = self.epoch, self.position
        while len(chosen) < count:
            want = min(count - len(chosen), len(scenarios))
            if position + want > len(scenarios):
                epoch, position = epoch + 1, 0
            order = list(range(len(scenarios)))
            random.Random(f"{seed}:{env}:epoch:{epoch}").shuffle(order)
            chosen += [scenarios[i] for i in order[position: position + want]]
            position += want
        return chosen, EnvPosition(epoch, position, self.drawn + count)


def _tiebreak(seed: int, dealt: int, env: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{dealt}:{env}".encode()).digest()[:8], "big")


def deal(shares: dict[str, float], drawn: dict[str, int], count: int, seed: int) -> list[str]:
    """The env of each of the next `count` groups, given the groups each env has had (`drawn`)."""
    had = {env: drawn.get(env, 0) for env in shares}
    dealt = sum(had.values())
    envs: list[str] = []
    for _ in range(count):
        dealt += 1
        env = max(shares, key=lambda e: (round(shares[e] * dealt - had[e], 9), _tiebreak(seed, dealt, e)))
        had[env] += 1
        envs.append(env)
    return envs


@dataclass
class MixCursor:
    """`take(scenarios, count, seed) -> (batch, next cursor)` over mixed scenarios (their data names their env).

    `epoch` is the mixed run's epoch, the least of its envs' (the run's `--num-epochs` ends it once every env has
    been through its data that often); `shares` is written for the reader of state.json, and on resume the run's
    own --mix decides (a changed mix is refused unless --allow-config-change; an env new to the mix starts fresh).
    """

    shares: dict[str, float] = field(default_factory=dict)
    positions: dict[str, EnvPosition] = field(default_factory=dict)
    epoch: int = 0

    @classmethod
    def restore(cls, saved: dict[str, Any], shares: dict[str, float]) -> MixCursor:
        """state.json's "cursor" (empty before the first step) -> the cursor for these shares."""
        kept = saved.get("positions") or {}
        positions = {env: EnvPosition(**kept.get(env, {})) for env in shares}
        return cls(dict(shares), positions, min((p.epoch for p in positions.values()), default=0))

    def take(self, scenarios: list[Scenario], count: int, seed: int) -> tuple[list[Scenario], MixCursor]:
        pools: dict[str, list[Scenario]] = {env: [] for env in self.shares}
        for scenario in scenarios:
            pools[scenario.data[ENV_KEY]].append(scenario)
        envs = deal(self.shares, {e: p.drawn for e, p in self.positions.items()}, count, seed)
        positions = dict(self.positions)
        taken: dict[str, list[Scenario]] = {}
        for env in self.shares:
            start = positions.get(env, EnvPosition())
            taken[env], positions[env] = start.take(pools[env], envs.count(env), seed, env)
        batch = [taken[env].pop(0) for env in envs]  # in the order dealt
        return batch, MixCursor(dict(self.shares), positions, min(p.epoch for p in positions.values()))

    def describe(self) -> str:
        parts = [f"{env} epoch {p.epoch}, position {p.position}, {p.drawn} group(s)"
                 for env, p in self.positions.items()]
        return f"mix epoch {self.epoch}: " + "; ".join(parts)
