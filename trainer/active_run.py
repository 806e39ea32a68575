"""`Run`: the parts one run holds while its stages train, built by trainer/run.py and handed to the SFT stage and
the GRPO loop (trainer/rl.py). A module of its own so that the loop can name the type without importing the wiring
that imports the loop.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.config import ExperimentConfig

if TYPE_CHECKING:  # heavy (ART, torch): only the wiring imports them, once the config is checked
    import art

    from backends.trainer_model import TrainerModel
    from envs.spec import EnvSpec
    from rollouts.context import RolloutContext
    from rollouts.gather import GatherLimits
    from rollouts.scenario import Scenario


@dataclass
class Run:
    """What one run holds while it trains. `ctx` and `limits` are set once the model is registered (`ready()`)."""

    config: ExperimentConfig
    env: EnvSpec
    model: TrainerModel
    backend: art.Backend  # ART's protocol: our CPUBackend, ART's LocalBackend, its remote engines
    model_dir: Path
    ctx: RolloutContext | None = None
    limits: GatherLimits | None = None
    val: list[Scenario] = dataclasses.field(default_factory=list)
    max_steps: int = 1
    reward_check: dict[str, float] = dataclasses.field(default_factory=dict)  # for the first RL step's history row

    def ready(self) -> tuple[RolloutContext, GatherLimits]:
        """The rollout context and limits, which every stage that samples needs."""
        if self.ctx is None or self.limits is None:
            raise RuntimeError("the run's rollout context is not built yet (trainer/run.py builds it at start)")
        return self.ctx, self.limits

    async def evaluate(self, at_step: int, label: str) -> dict[str, float]:
        from rollouts.evaluate import evaluate

        ctx, limits = self.ready()
        groups, figures = await evaluate(self.val, self.env.rollout, ctx, self.config.eval_rollouts, limits,
                                         self.env.step_metrics)
        await self.model.log([g for g in groups if g.trajectories], split="val", step=at_step, metrics=figures)
        print(f"eval {label} (step {at_step}): reward {figures.get('reward_mean', float('nan')):.3f} on "
              f"{len(self.val)} held-out task(s), pass rate {figures.get('pass_rate', float('nan')):.0%}", flush=True)
        return figures

    def commit(self, step: int, **extra: Any) -> dict[str, Any]:
        """The one commit point of a step (SFT epoch or RL step): state.json, with the config that made it."""
        return self.model.merge_state({"step": step, "config_hash": self.config.config_hash(),
                                       "config": self.config.hashed_fields(), **extra})
