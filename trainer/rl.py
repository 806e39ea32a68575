"""The GRPO step loop: gather groups, score, train the groups with a reward spread, log, commit.

Each step: `gather_refilled` (one semaphore + start-rate throttle) -> `backend.train()` on the groups that carry a
signal -> `model.log()` (history.jsonl, W&B) -> RLM-format logs -> `state.json` (the commit point, with the data
cursor). Zero-variance groups are counted and left out, as ART's own loop does; with `--refill` the step draws more
(other scenarios or more rollouts) until groups_per_step groups carry a signal or `--max-refill` is spent, and
trains at most groups_per_step of them (rollouts/refill.py: why the data cursor and resume stay exact).
With `--max-steps-off-policy K` the gathers of the next K steps run while a step trains (trainer/pipeline.py: the
gate, staleness, resume); K = 0 is the synchronous loop. Every rollout records the policy step it was sampled
from. `--max-training-steps` counts these steps only; the step numbers are the model's, which the SFT epochs before
them also took (`rl_budget`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import TYPE_CHECKING, Any, Protocol

from trainer.active_run import Run
from trainer.pipeline import PolicyClock, StepPipeline, check_staleness, versioned
from trainer.resume import load_cursor
from trainer.schedule import TemperatureSchedule

if TYPE_CHECKING:  # the loop imports what it needs when it runs
    from rollouts.scenario import Scenario
    from trainer.config import ExperimentConfig


class StepFigures(Protocol):
    """What the loop reads of the health monitor (monitor/health.py's HealthMonitor; a bench passes a stand-in)."""

    def figures(self) -> dict[str, float]: ...


async def rl_loop(the_run: Run, scenarios: list[Scenario], monitor: StepFigures) -> None:
    from backends.checkpoints import best_val_step, steps_to_keep
    from backends.remote import train_keywords
    from monitor.wandb_log import log_rollouts
    from rollouts.gather import freeze_startup_heap
    from rollouts.logs import write_step
    from rollouts.metrics import step_metrics
    from rollouts.refill import Refill, StepGroups, gather_refilled
    from services.client import service_metrics

    config, env, model, backend = the_run.config, the_run.env, the_run.model, the_run.backend
    run_ctx, limits = the_run.ready()
    state = model.read_state() or {}
    step = await model.get_step()
    freeze_startup_heap()  # after everything that lives for the whole run is loaded, before the first step
    first_step, evaluated_at = step, None
    schedule = TemperatureSchedule.parse(config.temperature_schedule) if config.temperature_schedule else None
    sft_steps = int((state.get("sft") or {}).get("epochs_done", 0))  # SFT epochs took the first ART steps
    eval_settings = run_ctx.settings  # evaluations sample at --temperature
    clock = PolicyClock(step)
    rollout = versioned(env.rollout, clock)
    run_ctx.client()  # made once here, so the per-step contexts below share one connection pool
    refill = Refill.of(config.refill, config.max_refill, config.groups_per_step, config.rollouts_per_group,
                       config.refill_ahead)

    def temperature_at(at: int) -> float:
        return schedule.at(at - sft_steps) if schedule else eval_settings.temperature

    async def gather(at: int, batch: list[Scenario]) -> StepGroups:
        """One step's groups and refills, through a context of its own: steps gathered at once may sample at
        different temperatures (the schedule) while evaluations keep --temperature."""
        ctx = dataclasses.replace(run_ctx, step=at,
                                  settings=dataclasses.replace(eval_settings, temperature=temperature_at(at)))
        return await gather_refilled(batch, scenarios, rollout, ctx, config.rollouts_per_group, limits,
                                     config.max_failed_share, refill, seed=config.seed, step=at, desc=f"step {at}")

    last_step = rl_budget(step, sft_steps, config.max_training_steps)
    pipeline = StepPipeline(load_cursor(env, state), lambda c: c.take(scenarios, config.groups_per_step, config.seed),
                            gather, committed=step, last_step=last_step,
                            num_epochs=config.num_epochs, max_off_policy=config.max_steps_off_policy)
    ready_at = time.monotonic()  # when the trainer was free for the next step
    try:
        pipeline.open_gates(step)  # inside the try: a plan that fails part-way still closes the gathers it started
        while (planned := pipeline.next()) is not None:
            step = run_ctx.step = planned.step
            drawn: StepGroups = await planned.task
            groups = drawn.groups  # every group drawn, zero-variance ones too: all are logged
            batch_wait = time.monotonic() - ready_at  # the trainer idle, waiting for this step's data
            metrics = step_metrics(groups, drawn.rollouts_spent)
            if env.step_metrics is not None:
                metrics |= env.step_metrics(groups)
            metrics |= service_metrics(run_ctx.services)  # per service node: requests, errors, latency p50/p95
            fresh = check_staleness(groups, trains_from=step - 1, max_off_policy=config.max_steps_off_policy)
            trainable = drawn.informative(fresh.kept)
            metrics |= drawn.metrics(trained=len(trainable))
            kl = kl_keywords(config, sft_steps)
            train_started = time.monotonic()
            result = await backend.train(model, trainable, **train_keywords(  # each engine's spelling of them
                backend, learning_rate=config.learning_rate, advantage_balance=config.advantage_balance,
                scale_rewards=config.scale_rewards, loss_fn=config.loss_fn, **kl))
            if result.step != step:
                raise RuntimeError(f"backend trained to step {result.step}, expected {step}")
            clock.step = step  # rollouts starting from now on sample the new policy
            metrics |= {"gather_seconds": planned.gather_seconds, "batch_wait_seconds": batch_wait,
                        "train_seconds": time.monotonic() - train_started,
                        "step_seconds": time.monotonic() - ready_at, "trained_groups": float(len(trainable)),
                        "epoch": float(planned.next_cursor.epoch), "temperature": temperature_at(step)}
            metrics |= fresh.metrics() | result.metrics | monitor.figures()
            # the reward preflight's figures ride on this start's first RL step (no row of their own: steps stay 1..N)
            metrics |= the_run.reward_check
            the_run.reward_check = {}
            await model.log([g for g in groups if g.trajectories], split="train", step=step, metrics=metrics)
            if config.eval_every and step % config.eval_every == 0 and the_run.val:
                await the_run.evaluate(step, f"at step {step}")
                evaluated_at = step
            await write_step(config.log_dir, config.experiment_name, step, groups, seed=config.seed,
                             rate=config.log_sample_rate, meta={"env": config.env, "model": config.model_name,
                                                                "experiment": config.experiment_name,
                                                                "config_hash": config.config_hash(),
                                                                "base_model": config.base_model,
                                                                "max_steps": the_run.max_steps})
            # the same sampled rollouts as a W&B table (a no-op with W&B off)
            log_rollouts(model, step, groups, seed=config.seed, rate=config.log_sample_rate, env=config.env)
            the_run.commit(step, epoch=planned.next_cursor.epoch, cursor=dataclasses.asdict(planned.next_cursor))
            ready_at = time.monotonic()
            print(summary_line(step, metrics, pipelined=config.max_steps_off_policy > 0), flush=True)
            if config.keep_checkpoints:
                existing = [int(p.name) for p in (the_run.model_dir / "checkpoints").iterdir() if p.name.isdigit()]
                keep = steps_to_keep(existing, step, config.keep_checkpoints, config.save_every,
                                     best_val_step(the_run.model_dir), pinned=kl_reference_step(config, sft_steps))
                await backend._delete_checkpoint_files(model, keep)
            pipeline.open_gates(step)  # K = 0: the next step's gather starts only now, as in the synchronous loop
    finally:
        await pipeline.close()  # a failed or stopped run: the steps gathered ahead are discarded, never trained
    if pipeline.epochs_done:
        print(f"done: {config.num_epochs} epoch(s) completed at step {step}", flush=True)
    if the_run.val and config.eval_before_after and evaluated_at != step and step > first_step:
        await the_run.evaluate(step, "after training")


def kl_reference_step(config: ExperimentConfig, sft_steps: int) -> int | None:
    """The checkpoint step the KL term compares with, for `--kl-reference sft`: where RL started (the last SFT
    epoch's step, 0 where no SFT ran). None: the base model (adapter off), or no KL term."""
    return sft_steps if config.kl_penalty_coef and config.kl_reference == "sft" else None


def kl_keywords(config: ExperimentConfig, sft_steps: int) -> dict[str, Any]:
    """`train()`'s KL keywords, only where asked (an engine without a KL term is then never asked for one)."""
    if not config.kl_penalty_coef:
        return {}
    reference = kl_reference_step(config, sft_steps)
    return {"kl_penalty_coef": config.kl_penalty_coef} | (
        {} if reference is None else {"kl_penalty_reference_step": reference})


def rl_budget(step: int, sft_steps: int, max_rl_steps: int | None) -> int:
    """The model's step the RL loop stops at: `--max-training-steps` counts RL steps, and the SFT epochs took the
    model's first steps, so the budget ends SFT epochs + N steps in (a resumed run counts the RL steps done). Says
    so in one line, since the step numbers a run prints are the model's."""
    if max_rl_steps is None:
        return sys.maxsize
    last, done = sft_steps + max_rl_steps, max(step - sft_steps, 0)
    after = f" after {sft_steps} SFT epoch(s)" if sft_steps else ""
    if done >= max_rl_steps:
        print(f"rl: the {max_rl_steps} RL step(s) of --max-training-steps are done (step {step}{after})", flush=True)
    else:
        print(f"rl: RL steps {done + 1}-{max_rl_steps} of --max-training-steps {max_rl_steps} are steps "
              f"{step + 1}-{last}{after}", flush=True)
    return last


def summary_line(step: int, m: dict[str, float], pipelined: bool = False) -> str:
    loss = f"{m['train/loss']:.4f}" if "train/loss" in m and m.get("train/num_gradient_steps") else "-"
    behind = (f", off-policy {m['off_policy_steps_mean']:.1f} (max {m['off_policy_steps_max']:.0f}), "
              f"{m['stale_groups_dropped']:.0f} stale dropped, waited {m['batch_wait_seconds']:.1f}s"
              if pipelined else "")
    refilled = f", {m['refill_rollouts']:.0f} refill rollouts" if m.get("refill_rollouts") else ""
    return (
        f"step {step}: reward {m.get('reward_mean', float('nan')):.3f} "
        f"[{m.get('reward_min', float('nan')):.2f}, {m.get('reward_max', float('nan')):.2f}] "
        f"zero-var {m['zero_variance_group_share']:.0%} failed {int(m['failed_rollouts'])} "
        f"trained {int(m['trained_groups'])} groups ({m.get('informative_group_share', 0.0):.0%} informative"
        f"{refilled}), loss {loss}, "
        f"{m['step_seconds']:.1f}s{behind}"
    )
