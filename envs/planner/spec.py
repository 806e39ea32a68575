"""Word problems split into subproblems that a frozen executor solves; the answer is checked.

The env's `SPEC` (envs/spec.py), read by the registry; light to import: art and the executor's client load when a
function runs.
"""

from __future__ import annotations

from envs.planner.options import PlannerOptions
from envs.planner.probes import reward_probes
from envs.spec import EnvSpec, lazy

# pass_threshold: a correct final answer (correctness weight 1.0); token thrift and independence together add
# at most 0.5 at the default weights, so no plan reaches it without the right number.
_LOAD = lazy("envs.planner.problems:scenarios_for")

SPEC = EnvSpec(
    name="planner", load_scenarios=_LOAD, load_val=lambda cfg: _LOAD(cfg, "val"),
    rollout=lazy("envs.planner.rollout:rollout"), services=lazy("envs.planner.rollout:services"),
    step_metrics=lazy("envs.planner.rollout:planner_metrics"), write_demos=lazy("envs.planner.rollout:write_demos"),
    runs_model_code=False, reward_probes=reward_probes,
    pass_threshold=1.0, options=PlannerOptions,
    # One JSON plan per rollout; the token term's budget is the env's own --token-budget (planner + executor).
    # SmolLM2 answers in prose, not plans, so SFT on the generator's own plans comes first.
    defaults={"groups_per_step": 2, "rollouts_per_group": 4, "max_tokens": 256, "temperature": 0.7,
              "lora_rank": 16, "sft_epochs": 2, "sft_learning_rate": 1e-3, "max_training_steps": 4},
)
