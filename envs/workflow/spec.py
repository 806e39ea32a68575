"""Python workflows over executor operators, run in the sandbox, their answers scored in 5 tiers.

The env's `SPEC` (envs/spec.py), read by the registry; light to import: art and the executor's client load when a
function runs.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from envs.spec import EnvSpec
from envs.workflow.options import WorkflowOptions
from envs.workflow.probes import reward_probes
from rollouts.scenario import Scenario


def _load(cfg: Any) -> list[Scenario]:
    from envs.workflow.data import scenarios_for

    return scenarios_for(cfg)


def _load_val(cfg: Any) -> list[Scenario]:
    from envs.workflow.data import scenarios_for

    return scenarios_for(cfg, "val")


async def _rollout(ctx: Any, scenario: Scenario) -> Any:
    from envs.workflow.rollout import rollout

    return await rollout(ctx, scenario)


def _services(cfg: Any) -> contextlib.AbstractAsyncContextManager[dict[str, Any]]:
    from envs.workflow.rollout import services

    return services(cfg)


def _metrics(groups: list[Any]) -> dict[str, float]:
    from envs.workflow.rollout import workflow_metrics

    return workflow_metrics(groups)


def _write_demos(cfg: Any, out: Path) -> None:
    from envs.workflow.rollout import write_demos

    write_demos(cfg, out)


# pass_threshold: the top tier (a perfect answer); the lower tiers (0.7 near, 0.4 partial, 0.2 answered) are
# a gradient for GRPO, not a pass.
SPEC = EnvSpec(
    name="workflow", load_scenarios=_load, rollout=_rollout, services=_services, step_metrics=_metrics,
    load_val=_load_val, runs_model_code=True, write_demos=_write_demos, reward_probes=reward_probes,
    pass_threshold=1.0, options=WorkflowOptions, dataset_suffixes=(".jsonl", ".parquet"),
    # One workflow per rollout; a short solve() fits in 384 tokens. SFT on the demo workflows first (steps 1-2),
    # then GRPO.
    defaults={"groups_per_step": 2, "rollouts_per_group": 4, "max_tokens": 384, "temperature": 0.7,
              "lora_rank": 16, "sft_epochs": 2, "sft_learning_rate": 1e-3, "max_training_steps": 4},
)
