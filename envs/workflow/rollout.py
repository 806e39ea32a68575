"""One `workflow` rollout: the policy writes `solve(problem, domain)` over the operators of envs/workflow; the
workflow runs in the sandbox, its executor calls answered here by the frozen executor; its answer gets the
5-tier score (envs/workflow/reward.py; code answers are tested in the sandbox first).

The policy's only turn is the workflow. A reply without one, code that fails, raises, runs past its time limit or
makes too many executor calls scores 0 with the reason in the log, never a crash. An executor fault (timeout, HTTP
error, garbage) is not the policy's doing, so, as in the planner env, it is not scored: the rollout raises
`ExecutorError`, its group keeps the exception, and the step goes on under `--max-failed-share`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import art

from agent.executor import Executor, ExecutorError
from agent.openai_executor import ExecutorOwner
from envs.options import options_for
from envs.workflow.code_check import check_code
from envs.workflow.data import load_tasks
from envs.workflow.options import WorkflowOptions
from envs.workflow.prompts import DEMO_WORKFLOWS, WORKFLOW_SYSTEM_PROMPT, workflow_code, workflow_task
from envs.workflow.reward import NONE, TIER_NAMES, Score, score_code, score_math, score_qa
from envs.workflow.runner import WorkflowLimits, WorkflowRun, run_workflow
from rollouts.context import RolloutContext
from rollouts.logs import attach_turns, code_block
from rollouts.scenario import DatasetError, Scenario


def options_of(cfg: Any) -> WorkflowOptions:
    return options_for(cfg, WorkflowOptions)


@dataclass
class WorkflowRuntime(ExecutorOwner):
    """What every workflow rollout of a run shares: options, limits, the executor and where work dirs go."""

    options: WorkflowOptions
    root: Path

    @property
    def limits(self) -> WorkflowLimits:
        return WorkflowLimits(time_limit_s=self.options.workflow_time_limit,
                              max_calls=self.options.max_executor_calls,
                              call_max_tokens=self.options.executor_max_tokens)

    def executor_for(self, ctx: RolloutContext) -> Executor:
        """The default executor is the policy's own endpoint asked for the base model by name (the CPU backend
        serves it with the adapter off)."""
        return self.executor_for_model(ctx.model, self.options.executor_timeout)


@contextlib.asynccontextmanager
async def services(cfg: Any) -> AsyncIterator[dict[str, Any]]:
    options = options_of(cfg)
    runtime = WorkflowRuntime(options, Path(cfg.rollout_root) / "workflow", max_concurrent=cfg.max_concurrent)
    if options.executor_url:
        runtime.use_given(options.executor_url, str(options.executor_model), options.executor_timeout)
    try:
        yield {"workflow": runtime}
    finally:
        await runtime.aclose()


async def score_answer(scenario: Scenario, answer: str | None, workdir: Path) -> Score:
    domain = scenario.data["domain"]
    if domain == "math":
        return score_math(answer, scenario.data["answers"][0])
    if domain == "qa":
        return score_qa(answer, scenario.data["answers"])
    outcome = await check_code(answer, scenario.data["entry_point"], scenario.data["tests"], workdir / "check")
    return score_code(outcome)


def _observation(run: WorkflowRun | None, score: Score) -> str:
    if run is None:
        return f"no workflow: the reply has no ```python block defining solve; score {score.reward}"
    head = f"answer: {run.answer!r}" if run.error is None else f"error: {run.error}"
    return f"{head}\nscore {score.reward} ({score.tier}): {score.reason}"


def prompt_messages(scenario: Scenario, limits: WorkflowLimits) -> list[dict[str, Any]]:
    return [{"role": "system", "content": WORKFLOW_SYSTEM_PROMPT},
            {"role": "user", "content": workflow_task(scenario.prompt, scenario.data["domain"], limits.max_calls,
                                                      limits.time_limit_s)}]


async def rollout(ctx: RolloutContext, scenario: Scenario) -> art.Trajectory:
    runtime: WorkflowRuntime = ctx.services["workflow"]
    limits, domain = runtime.limits, scenario.data["domain"]
    messages = prompt_messages(scenario, limits)
    choice = await ctx.complete(messages, ctx.settings.max_tokens_per_turn)
    reply = choice.message.content or ""
    code = workflow_code(reply)
    run: WorkflowRun | None = None
    model = ""  # the executor's, named on the log's sub-calls
    workdir = runtime.root / f"{scenario.id}-{uuid.uuid4().hex[:8]}"
    try:
        if code is None:
            score = Score(NONE, TIER_NAMES[NONE], "no workflow code")
        else:
            executor = runtime.executor_for(ctx)
            model = str(getattr(executor, "model", "executor"))
            run = await run_workflow(code, scenario.prompt, domain, workdir / "run", executor, limits)
            if run.executor_errors:
                failed = next(c["response"] for c in run.calls if c["response"].startswith("[executor"))
                raise ExecutorError(f"workflow {scenario.id}: {run.executor_errors} executor call(s) failed: {failed}")
            if run.error is not None:
                score = Score(NONE, TIER_NAMES[NONE], run.error.splitlines()[0][:200])
            else:
                score = await score_answer(scenario, run.answer, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    observation = _observation(run, score)
    trajectory = art.Trajectory(
        messages_and_choices=[*messages, choice],
        reward=score.reward,
        metrics={**score.breakdown(), "has_workflow": float(code is not None),
                 "workflow_ok": float(run is not None and run.error is None),
                 "workflow_timed_out": float(bool(run and run.timed_out)),
                 "over_call_limit": float(bool(run and run.over_call_limit)),
                 "executor_calls": float(len(run.calls) if run else 0),
                 "executor_prompt_tokens": float(run.prompt_tokens if run else 0),
                 "executor_completion_tokens": float(run.completion_tokens if run else 0),
                 "workflow_seconds": float(run.elapsed if run else 0.0), "agent_steps": 1.0},
        metadata={"scenario_id": scenario.id, "env": "workflow", "domain": domain},
    )
    block = code_block(code or "", run.stdout if run else "", run.stderr[-2000:] if run else "",
                       {"answer": repr(run.answer) if run else "None", "tier": score.tier},
                       run.elapsed if run else 0.0, run.calls if run else [], model)
    attach_turns(trajectory, [{"prompt": messages, "response": reply, "observation": observation,
                               "final_answer": run.answer if run else None,
                               "iteration_time": run.elapsed if run else 0.0,
                               "code_blocks": [block] if code is not None else []}])
    return trajectory


def workflow_metrics(groups: list[art.TrajectoryGroup]) -> dict[str, float]:
    """Per-domain mean score and the share of rollouts whose workflow ran to an answer."""
    figures: dict[str, float] = {}
    trajectories = [t for g in groups for t in g.trajectories]
    for domain in ("math", "qa", "code"):
        rewards = [t.reward for t in trajectories if t.metadata.get("domain") == domain]
        if rewards:
            figures[f"{domain}_score"] = sum(rewards) / len(rewards)
    if trajectories:
        figures["workflow_ok_rate"] = sum(t.metrics.get("workflow_ok", 0.0) for t in trajectories) / len(trajectories)
    return figures


def load_scenarios(cfg: Any, split: str = "train") -> list[Scenario]:
    options = options_of(cfg)
    count = cfg.dataset_size or 64
    return load_tasks(options.ratios(), count if split == "train" else max(4, count // 4), cfg.seed, split,
                      cfg.dataset)


def write_demos(cfg: Any, out: Path) -> None:
    """One demonstration per train task (`--sft-demos`): the task's prompt and its domain's demo workflow, as
    OpenAI-messages JSONL (the format `--sft-data` and art.utils.sft read)."""
    if out.suffix != ".jsonl":
        raise DatasetError(f"--out {out}: must end with .jsonl (the format art.utils.sft reads)")
    limits = WorkflowRuntime(options_of(cfg), Path(cfg.rollout_root)).limits
    demos = [{"messages": [*prompt_messages(s, limits),
                           {"role": "assistant", "content": DEMO_WORKFLOWS[s.data["domain"]]}],
              "metadata": {"env": "workflow", "scenario_id": s.id}} for s in load_scenarios(cfg, "train")]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")  # no half-written file if this fails
    tmp.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in demos))
    tmp.replace(out)
