"""Python workflows over executor operators, run in the sandbox, their answers scored in 5 tiers.

The env's `SPEC` (envs/spec.py), read by the registry; light to import: art and the executor's client load when a
function runs.
"""

from __future__ import annotations

from envs.spec import EnvSpec, lazy
from envs.workflow.options import WorkflowOptions
from envs.workflow.probes import reward_probes

# pass_threshold: the top tier (a perfect answer); the lower tiers (0.7 near, 0.4 partial, 0.2 answered) are
# a gradient for GRPO, not a pass.
_LOAD = lazy("envs.workflow.data:scenarios_for")

SPEC = EnvSpec(
    name="workflow", load_scenarios=_LOAD, load_val=lambda cfg: _LOAD(cfg, "val"),
    rollout=lazy("envs.workflow.rollout:rollout"), services=lazy("envs.workflow.rollout:services"),
    step_metrics=lazy("envs.workflow.rollout:workflow_metrics"), write_demos=lazy("envs.workflow.rollout:write_demos"),
    runs_model_code=True, reward_probes=reward_probes,
    pass_threshold=1.0, options=WorkflowOptions, dataset_suffixes=(".jsonl", ".parquet"),
    # One workflow per rollout; a short solve() fits in 384 tokens. SFT on the demo workflows first (steps 1-2),
    # then GRPO.
    defaults={"groups_per_step": 2, "rollouts_per_group": 4, "max_tokens": 384, "temperature": 0.7,
              "lora_rank": 16, "sft_epochs": 2, "sft_learning_rate": 1e-3, "max_training_steps": 4},
)
