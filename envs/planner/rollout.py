"""One `planner` rollout: the policy splits a word problem into subproblems; the frozen executor solves them
concurrently, then combines their answers; the final number is checked against the exact answer.

The policy's only turn is the plan. A malformed plan is scored (envs.planner.reward.MALFORMED_REWARD, the reason as a
metric), never raised. An executor fault (timeout, HTTP error, garbage) is not the planner's doing, so it is not
scored: the rollout raises `ExecutorError`, its group keeps the exception, and the step goes on under
`--max-failed-share` like any other failed rollout.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import art

from agent.executor import Executor, ExecutorReply
from agent.openai_executor import ExecutorOwner
from envs.options import options_for
from envs.planner.options import PlannerOptions
from envs.planner.plan import PLANNER_SYSTEM_PROMPT, MalformedPlan, Plan, combine_messages, parse_plan, solve_messages
from envs.planner.problems import load
from envs.planner.reward import (
    Embed,
    PlannerWeights,
    choose_embedder,
    independence,
    is_correct,
    malformed_reward,
    plan_problem,
    planner_reward,
)
from rollouts.context import RolloutContext
from rollouts.logs import attach_turns, code_block
from rollouts.scenario import Scenario


def options_of(cfg: Any) -> PlannerOptions:
    return options_for(cfg, PlannerOptions)


@dataclass
class PlannerRuntime(ExecutorOwner):
    """What every planner rollout of a run shares: options, weights, the embedder and the executor."""

    options: PlannerOptions
    embed: Embed

    @property
    def weights(self) -> PlannerWeights:
        o = self.options
        return PlannerWeights(o.correctness_weight, o.token_weight, o.independence_weight)

    def executor_for(self, ctx: RolloutContext) -> Executor:
        """The default executor is the policy's own endpoint asked for the base model by name (the CPU backend
        serves it with the adapter off, vLLM as its base model); it is known only once the model is registered."""
        return self.executor_for_model(ctx.model, self.options.executor_timeout)


@contextlib.asynccontextmanager
async def services(cfg: Any) -> AsyncIterator[dict[str, Any]]:
    options = options_of(cfg)
    runtime = PlannerRuntime(options, choose_embedder(options.embedding_model), max_concurrent=cfg.max_concurrent)
    if options.executor_url:
        runtime.use_given(options.executor_url, str(options.executor_model), options.executor_timeout)
    try:
        yield {"planner": runtime}
    finally:
        await runtime.aclose()


async def _execute(executor: Executor, question: str, plan: Plan, max_tokens: int
                   ) -> tuple[str, list[tuple[str, ExecutorReply]]]:
    """The final reply and every executor call as (prompt, reply); subproblems run concurrently."""
    if plan.atomic:
        reply = await executor.complete(solve_messages(question), max_tokens=max_tokens)
        return reply.text, [(question, reply)]
    parts = await asyncio.gather(*(executor.complete(solve_messages(s), max_tokens=max_tokens)
                                   for s in plan.subproblems))
    combined_prompt = combine_messages(question, plan, [p.text for p in parts])
    final = await executor.complete(combined_prompt, max_tokens=max_tokens)
    return final.text, [*zip(plan.subproblems, parts, strict=True), (combined_prompt[-1]["content"], final)]


def _planner_tokens(choice: Any, reply: str) -> int:
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    return len(content) if content else max(1, len(reply) // 4)


async def rollout(ctx: RolloutContext, scenario: Scenario) -> art.Trajectory:
    runtime: PlannerRuntime = ctx.services["planner"]
    options = runtime.options
    messages: list = [{"role": "system", "content": PLANNER_SYSTEM_PROMPT},
                      {"role": "user", "content": scenario.prompt}]
    started = time.monotonic()
    choice = await ctx.complete(messages, ctx.settings.max_tokens_per_turn)
    reply = choice.message.content or ""
    planner_tokens = _planner_tokens(choice, reply)
    trajectory = art.Trajectory(messages_and_choices=[*messages, choice], reward=0.0,
                                metadata={"scenario_id": scenario.id, "env": "planner"})
    blocks: list[dict[str, Any]] = []
    final_text: str | None = None
    try:
        plan = parse_plan(reply, options.max_subproblems)
        if problem := plan_problem(plan.subproblems, plan.combine, scenario.prompt, scenario.data["answer"]):
            raise MalformedPlan(*problem)
    except MalformedPlan as exc:
        trajectory.reward, breakdown = malformed_reward(exc.reason)
        trajectory.metadata["malformed"] = str(exc)
        observation = f"malformed plan: {exc}"
        calls: list[tuple[str, ExecutorReply]] = []
    else:
        executor = runtime.executor_for(ctx)
        final_text, calls = await _execute(executor, scenario.prompt, plan, options.executor_max_tokens)
        correct = is_correct(final_text, scenario.data["answer"])
        spent = planner_tokens + sum(r.completion_tokens for _, r in calls)
        score = await asyncio.to_thread(independence, plan.subproblems, runtime.embed)
        trajectory.reward, breakdown = planner_reward(correct, spent, options.token_budget, score,
                                                      runtime.weights)
        breakdown["subproblems"] = float(len(plan.subproblems))
        breakdown["atomic"] = float(plan.atomic)
        observation = f"final answer {final_text.strip()[-80:]!r}; expected {scenario.data['answer']}"
        # One block per executor call, the call itself as its sub-call (the visualizer's token badges).
        model = str(getattr(executor, "model", "executor"))
        blocks = [code_block(prompt, reply_.text, "", {"completion_tokens": str(reply_.completion_tokens)},
                             calls=[{"prompt": prompt, "response": reply_.text, "prompt_tokens": reply_.prompt_tokens,
                                     "completion_tokens": reply_.completion_tokens}], model=model)
                  for prompt, reply_ in calls]
    trajectory.metrics.update(breakdown | {
        "planner_tokens": float(planner_tokens), "executor_calls": float(len(calls)),
        "executor_prompt_tokens": float(sum(r.prompt_tokens for _, r in calls)),
        "executor_completion_tokens": float(sum(r.completion_tokens for _, r in calls)),
        "finished": float(choice.finish_reason == "stop"), "agent_steps": 1.0})
    trajectory.log(f"{scenario.id}: {observation}, reward {trajectory.reward:.3f}")
    attach_turns(trajectory, [{"prompt": messages, "response": reply, "code_blocks": blocks,
                               "observation": observation, "final_answer": final_text,
                               "iteration_time": time.monotonic() - started}])
    return trajectory


def planner_metrics(groups: list[art.TrajectoryGroup]) -> dict[str, float]:
    """The env's own figures: format-valid, correct and independence means over the step's rollouts."""
    trajectories = [t for g in groups for t in g.trajectories]
    figures: dict[str, float] = {}
    for key, name in (("format_ok", "format_ok_rate"), ("correct", "correct_rate"),
                      ("independence", "independence_mean"), ("token_thrift", "token_thrift_mean"),
                      ("executor_completion_tokens", "executor_tokens")):
        values = [float(t.metrics[key]) for t in trajectories if key in t.metrics]
        if values:
            figures[f"planner/{name}"] = statistics.fmean(values)
    return figures


def load_scenarios(cfg: Any, split: str = "train") -> list[Scenario]:
    scenarios = load(cfg.dataset, options_of(cfg).num_problems, cfg.seed, split)
    return scenarios[: cfg.dataset_size] if cfg.dataset_size and split == "train" else scenarios


def write_demos(cfg: Any, out: Any) -> None:
    from envs.planner.problems import write_demos as write
    from rollouts.scenario import DatasetError

    if cfg.dataset:
        raise DatasetError("--sft-demos: planner demonstrations exist for the generated problems only; with "
                           "--dataset give --sft-data FILE or --sft-demos off")
    write(out, options_of(cfg).num_problems, cfg.seed)
