"""Answer with one target character: proves the whole loop learns within minutes on a CPU.

The env's `SPEC` (envs/spec.py), read by the registry; light to import: art loads when the rollout runs.
"""

from __future__ import annotations

from typing import Any

from envs.options import options_for
from envs.spec import EnvSpec
from envs.toy.options import ToyOptions
from envs.toy.probes import reward_probes
from envs.toy.scenarios import load_scenarios
from rollouts.scenario import Scenario


def _load(cfg: Any) -> list[Scenario]:
    return load_scenarios(cfg.dataset_size or 32, cfg.seed, options_for(cfg, ToyOptions).toy_target)


def _load_val(cfg: Any) -> list[Scenario]:
    return load_scenarios(8, cfg.seed, options_for(cfg, ToyOptions).toy_target, split="val")


async def _rollout(ctx: Any, scenario: Scenario) -> Any:
    from envs.toy.rollout import rollout

    return await rollout(ctx, scenario)


# pass_threshold: a pass is the whole reply the target (evaluation's pass rate counts the same); the oracle is
# exactly that. No `defaults`: the global ones suit it (the tiny model, many short rollouts).
SPEC = EnvSpec(name="toy", load_scenarios=_load, rollout=_rollout, load_val=_load_val, reward_probes=reward_probes,
               pass_threshold=1.0, options=ToyOptions)
