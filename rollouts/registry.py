"""Env name -> how to load its scenarios and how to run one rollout. Adding an env adds one entry here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from envs.scenario import Scenario

if TYPE_CHECKING:  # the registry is read while flags are checked, before the heavy imports
    import art

    from rollouts.context import RolloutContext

RolloutFn = Callable[["RolloutContext", Scenario], Awaitable["art.Trajectory"]]


class UnknownEnvError(ValueError):
    pass


@dataclass(frozen=True)
class EnvSpec:
    name: str
    load_scenarios: Callable[[Any], list[Scenario]]  # receives the experiment config
    rollout: RolloutFn


def _toy() -> EnvSpec:
    from envs import toy
    from rollouts.toy import rollout

    return EnvSpec(
        name="toy",
        load_scenarios=lambda cfg: toy.load_scenarios(cfg.dataset_size or 32, cfg.seed, cfg.toy_target),
        rollout=rollout,
    )


ENVS: dict[str, Callable[[], EnvSpec]] = {"toy": _toy}


def get_env(name: str) -> EnvSpec:
    if name not in ENVS:
        raise UnknownEnvError(f"--env: unknown env {name!r}; choose from {', '.join(sorted(ENVS))}")
    return ENVS[name]()
