"""`Run`: the parts one run holds while its stages train, built by trainer/run.py and handed to the SFT stage and
the GRPO loop (trainer/rl.py). A module of its own so that the loop can name the type without importing the wiring
that imports the loop.
"""

from __future__ import annotations

import asyncio
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
    from rollouts.eval_record import EvalRecord
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
        """Evaluate on the held-out tasks, log the figures under "val", keep the per-task rewards in
        `<log_dir>/<experiment>/eval/step_NNNN.json`, and print the reward with its 90% interval and, when this run
        evaluated before, the paired change since the previous evaluation."""
        from rollouts.eval_record import EvalRecord, previous_record, write_record
        from rollouts.evaluate import evaluate
        from trainer.resume import RUN_ID

        ctx, limits = self.ready()
        if self.config.eval_temperature is not None:  # every evaluation samples alike, whatever RL samples at
            ctx.client()  # made first, so the copy shares the run's connection pool (the run closes that one)
            ctx = dataclasses.replace(ctx, settings=dataclasses.replace(ctx.settings,
                                                                        temperature=self.config.eval_temperature))
        result = await evaluate(self.val, self.env.rollout, ctx, self.config.eval_rollouts, limits,
                                self.env.step_metrics)
        figures = result.metrics
        await self.model.log([g for g in result.groups if g.trajectories], split="val", step=at_step,
                             metrics=figures)
        log_root = Path(self.config.log_dir) / self.config.experiment_name
        run_id = (self.model.read_state() or {}).get(RUN_ID)
        previous = await asyncio.to_thread(previous_record, log_root, at_step, run_id)
        record = EvalRecord(at_step, label, result.task_rewards, *result.interval, result.rollouts, run_id)
        await asyncio.to_thread(write_record, log_root, record)
        for line in eval_lines(record, figures, len(self.val), previous):
            print(line, flush=True)
        return figures

    def commit(self, step: int, **extra: Any) -> dict[str, Any]:
        """The one commit point of a step (SFT epoch or RL step): state.json, with the config that made it."""
        return self.model.merge_state({"step": step, "config_hash": self.config.config_hash(),
                                       "config": self.config.hashed_fields(), **extra})


def eval_lines(record: EvalRecord, figures: dict[str, float], tasks: int,
               previous: EvalRecord | None) -> list[str]:
    """The console's account of one evaluation: its reward with the 90% interval over tasks, then the change since
    the run's previous evaluation, paired task by task (rollouts/intervals.py)."""
    from rollouts.intervals import paired_difference

    ci = "" if record.ci_low is None or record.ci_high is None else \
        f" [90% CI {record.ci_low:.2f}, {record.ci_high:.2f}]"
    lines = [f"eval {record.label} (step {record.step}): reward {figures.get('reward_mean', float('nan')):.3f}{ci} "
             f"on {tasks} held-out task(s), pass rate {figures.get('pass_rate', float('nan')):.0%}"]
    if previous is not None:
        diff = paired_difference(previous.rewards, record.rewards)
        name = _eval_name(previous)
        lines.append(f"  vs {name}: no task scored in both" if diff.n == 0 else
                     f"  vs {name}: {diff.mean:+.2f} [90% CI {diff.low:+.2f}, {diff.high:+.2f}], "
                     f"paired over {diff.n} task{'s' if diff.n != 1 else ''}")
    return lines


def _eval_name(record: EvalRecord) -> str:
    """An evaluation as the comparison line names it: "before training", "after SFT", "step 4"."""
    if record.label == "only" or record.label.startswith("at step"):
        return f"step {record.step}"
    return record.label
