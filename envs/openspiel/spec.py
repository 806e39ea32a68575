"""OpenSpiel board games: one move per rollout, or a whole game against a bot.

The env's `SPEC` (envs/spec.py), read by the registry; light to import: pyspiel and art load when a function runs.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from envs.openspiel.options import GameOptions
from envs.spec import EnvSpec
from rollouts.scenario import Scenario


def _load(cfg: Any) -> list[Scenario]:
    from envs.openspiel.tasks import scenarios_for

    return scenarios_for(cfg)


def _load_val(cfg: Any) -> list[Scenario]:
    from envs.openspiel.tasks import scenarios_for

    return scenarios_for(cfg, "val")


async def _rollout(ctx: Any, scenario: Scenario) -> Any:
    from envs.openspiel.rollout import rollout

    return await rollout(ctx, scenario)


def _services(cfg: Any) -> contextlib.AbstractAsyncContextManager[dict[str, Any]]:
    from envs.openspiel.rollout import services

    return services(cfg)


def _metrics(groups: list[Any]) -> dict[str, float]:
    from envs.openspiel.rollout import game_metrics

    return game_metrics(groups)


def _write_demos(cfg: Any, out: Path) -> None:
    if cfg.dataset:  # demonstrations of the file's own tasks
        from envs.openspiel.export import write_demos as write
        from envs.options import options_for

        write(out, options_for(cfg, GameOptions), cfg.seed, scenarios=_load(cfg))
        return
    from envs.openspiel.rollout import write_demos

    write_demos(cfg, out)


def _probes(cfg: Any, scenario: Scenario) -> list[Any]:
    from envs.openspiel.probes import reward_probes
    from envs.options import options_for

    return reward_probes(options_for(cfg, GameOptions), scenario)


# default_max_steps: our moves per whole game (--game-mode game); a move-mode rollout is one turn anyway.
# pass_threshold: full marks, a legal move (legal mode) or a won game (outcome, game mode); anything the parser
# refuses scores 0, so do-nothing and every cheat must stay at 0.
SPEC = EnvSpec(
    name="openspiel", load_scenarios=_load, rollout=_rollout, default_max_steps=64, services=_services,
    step_metrics=_metrics, load_val=_load_val, write_demos=_write_demos, reward_probes=_probes, pass_threshold=1.0,
    options=GameOptions, dataset_suffixes=(".parquet",),
    # An answer is a few tokens (`move: 4`). 48 demonstrations (task order mixes the cases) keep the SFT stage to a
    # few minutes whatever --game-types selects; then GRPO at a step size that keeps the legal-move rate it learnt.
    defaults={"groups_per_step": 4, "rollouts_per_group": 4, "max_tokens": 16, "temperature": 0.7,
              "learning_rate": 1e-4, "lora_rank": 16, "sft_epochs": 2, "sft_learning_rate": 1e-3,
              "max_training_steps": 6, "num_demos": 48},
)
