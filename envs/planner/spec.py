"""Word problems split into subproblems that a frozen executor solves; the answer is checked.

The env's `SPEC` (envs/spec.py), read by the registry; light to import: art and the executor's client load when a
function runs.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from envs.planner.options import PlannerOptions
from envs.planner.probes import reward_probes
from envs.spec import EnvSpec
from rollouts.scenario import Scenario


def _load(cfg: Any) -> list[Scenario]:
    from envs.planner.problems import scenarios_for

    return scenarios_for(cfg)


def _load_val(cfg: Any) -> list[Scenario]:
    from envs.planner.problems import scenarios_for

    return scenarios_for(cfg, "val")


async def _rollout(ctx: Any, scenario: Scenario) -> Any:
    from envs.planner.rollout import rollout

    return await rollout(ctx, scenario)


def _services(cfg: Any) -> contextlib.AbstractAsyncContextManager[dict[str, Any]]:
    from envs.planner.rollout import services

    return services(cfg)


def _metrics(groups: list[Any]) -> dict[str, float]:
    from envs.planner.rollout import planner_metrics

    return planner_metrics(groups)


def _write_demos(cfg: Any, out: Path) -> None:
    from envs.planner.rollout import write_demos

    write_demos(cfg, out)


# pass_threshold: a correct final answer (correctness weight 1.0); token thrift and independence together add
# at most 0.5 at the default weights, so no plan reaches it without the right number.
SPEC = EnvSpec(
    name="planner", load_scenarios=_load, rollout=_rollout, services=_services, step_metrics=_metrics,
    load_val=_load_val, runs_model_code=False, write_demos=_write_demos, reward_probes=reward_probes,
    pass_threshold=1.0, options=PlannerOptions,
    # One JSON plan per rollout; the token term's budget is the env's own --token-budget (planner + executor).
    # SmolLM2 answers in prose, not plans, so SFT on the generator's own plans comes first.
    defaults={"groups_per_step": 2, "rollouts_per_group": 4, "max_tokens": 256, "temperature": 0.7,
              "lora_rank": 16, "sft_epochs": 2, "sft_learning_rate": 1e-3, "max_training_steps": 4},
)
