"""One R2E rollout: copy the cached repo, start a sandboxed REPL in it, let the model work, test the result.

Per turn: completion -> code block -> REPL cell -> observation, until FINAL()/finish(), `--max-steps`, or the
context budget. The conversation is trimmed to `--max-context-tokens` (oldest middle turns first); each reply is
trained after the prompt it was sampled from, trimmed or not (agent/sent_context.py). Changed files
go to the test service, which drops those that could decide the verdict (tests, runner, test config: the
`ignored_files` metric counts them); no change scores 0 without a call. The work dir is removed whatever happens.
"""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import art
import openai

from agent.budget import approx_tokens
from agent.code import extract_code
from agent.prompts import R2E_NO_CODE_NUDGE, R2E_SYSTEM_PROMPTS, r2e_observation, r2e_task
from agent.sent_context import SentConversation
from envs.r2e.client import TestServiceClient, changed_files, tar_b64
from envs.r2e.protected import HIDDEN_FROM_MODEL, split_changes
from envs.r2e.repl import Repl
from envs.r2e.reward import REWARDS
from envs.r2e.wire import TestRequest
from rollouts.context import RolloutContext
from rollouts.logs import attach_turns, choice_tokens, code_block
from rollouts.scenario import Scenario
from sandbox.run import SandboxLimits


@dataclass
class R2ESettings:
    tests: TestServiceClient
    rollout_root: Path
    system_prompt: str = "r2e_system_prompt"
    reward: str = "binary"
    cell_timeout_s: float = 60.0
    test_timeout_s: float = 300.0
    max_llm_queries: int = 5
    llm_query_max_tokens: int = 512
    limits: SandboxLimits = field(default_factory=lambda: SandboxLimits(wall_s=1e9, cpu_s=3600, memory_mb=2048,
                                                                         max_output_chars=8000))


async def rollout(ctx: RolloutContext, scenario: Scenario) -> art.Trajectory:
    settings: R2ESettings = ctx.services["r2e"]
    original = Path(scenario.data["repo_path"])
    workdir = settings.rollout_root / f"{scenario.id}-{uuid.uuid4().hex[:8]}"
    trajectory = art.Trajectory(
        messages_and_choices=[{"role": "system", "content": R2E_SYSTEM_PROMPTS[settings.system_prompt]},
                              {"role": "user", "content": r2e_task(scenario.prompt)}],
        metadata={"scenario_id": scenario.id, "env": "r2e"})
    conversation = SentConversation(trajectory)  # each reply trained in the (trimmed) context it was sampled in
    queries = {"n": 0}
    query_tokens: list[tuple[int, int]] = []  # (prompt, completion) per llm_query, in the order the REPL asked

    async def llm_query(prompt: str) -> str:
        if queries["n"] >= settings.max_llm_queries:
            query_tokens.append((0, 0))
            return f"[llm_query limit of {settings.max_llm_queries} per rollout reached]"
        queries["n"] += 1
        choice = await ctx.complete([{"role": "user", "content": prompt}], settings.llm_query_max_tokens)
        query_tokens.append(choice_tokens(choice, prompt, ctx.count_tokens))
        return choice.message.content or ""

    repl = Repl(workdir, settings.limits, settings.cell_timeout_s, llm_query)
    turn_log: list[dict[str, Any]] = []
    turns, finished, trimmed, context_exhausted = 0, False, 0, False
    try:
        # The hidden tests stay out of the model's copy; the test service runs the task's own (envs/r2e/protected.py).
        shutil.copytree(original, workdir, ignore=lambda _, names: [n for n in names if n in HIDDEN_FROM_MODEL])
        workdir.touch()  # the copy keeps the cache's mtime: the health monitor takes a dir an hour old for a dead one's
        await repl.start()
        for turns in range(1, ctx.settings.max_steps + 1):  # noqa: B007 - turns is reported below
            budget = ctx.settings.max_context_tokens - ctx.settings.max_tokens_per_turn // 4
            messages, dropped = conversation.prompt(budget, ctx.count_tokens or approx_tokens)
            trimmed = max(trimmed, dropped)
            started = time.monotonic()
            try:
                choice = await ctx.complete(messages, ctx.settings.max_tokens_per_turn)
            except openai.BadRequestError as exc:  # the server says the context is full: the episode ends here
                trajectory.log(f"turn {turns}: context exhausted ({exc.message[:200]})")
                context_exhausted = True
                break
            conversation.append(choice)
            code = extract_code(choice.message.content or "")
            # Every turn is logged, a reply without code too: a reader needs to see what the agent was told.
            turn: dict[str, Any] = {"prompt": messages,
                                    "response": choice.message.content or "", "code_blocks": [],
                                    "final_answer": None, "observation": None}
            turn_log.append(turn)
            if code is None:
                turn |= {"observation": R2E_NO_CODE_NUDGE, "iteration_time": time.monotonic() - started}
                conversation.append({"role": "user", "content": R2E_NO_CODE_NUDGE})
                continue
            asked = len(query_tokens)
            cell = await repl.run_cell(code)
            calls = [c | {"prompt_tokens": p, "completion_tokens": n}
                     for c, (p, n) in zip(cell.llm_calls, query_tokens[asked:], strict=False)]
            turn |= {"code_blocks": [code_block(code, cell.stdout,
                                                cell.stderr + (f"\n{cell.error}" if cell.error else ""),
                                                cell.locals, cell.execution_time, calls, ctx.model.name)],
                     "final_answer": cell.final, "iteration_time": time.monotonic() - started}
            if cell.final is not None:
                finished = True
                break
            turn["observation"] = r2e_observation(cell.stdout, cell.stderr, cell.error)
            conversation.append({"role": "user", "content": turn["observation"]})
        await repl.close()
        changed = changed_files(workdir, original)
        reward, breakdown = 0.0, {"tests_expected": float(len(scenario.data["expected"])), "tests_matching": 0.0}
        # The service's own rule, applied here too: when it would drop every changed file, nothing of the model's
        # reaches the tests, and that scores as no change (0, no call), not as the untouched repo's partial share.
        kept, ignored = split_changes(changed, scenario.data["test_cmd"], {p.name for p in original.iterdir()})
        if not kept and ignored:
            trajectory.log("every changed file is the task's to own (ignored, scored as no change): "
                           + "; ".join(f"{p} ({why})" for p, why in ignored.items())[:1000])
        if kept:
            result = await settings.tests.test(TestRequest(
                docker_image=scenario.data["docker_image"], instance_id=scenario.id,
                files_tar_b64=tar_b64(workdir, changed), test_cmd=scenario.data["test_cmd"],
                timeout=settings.test_timeout_s))
            reward, breakdown = REWARDS[settings.reward](scenario.data["expected"], result.test_output)
            breakdown["test_timed_out"] = float(result.timed_out)
            ignored = result.ignored_files
            if ignored:  # tests, runner or test config the model changed: the task's own were used
                trajectory.log("ignored changed files (the task's own were used): "
                               + "; ".join(f"{p} ({why})" for p, why in ignored.items())[:1000])
            trajectory.log(f"tests (exit {result.exit_code}):\n{result.test_output[-3000:]}")
    finally:
        await repl.close()
        shutil.rmtree(workdir, ignore_errors=True)
    trajectory.reward = reward
    trajectory.metrics.update(breakdown | {
        "agent_steps": float(turns), "finished": float(finished), "changed_files": float(len(changed)),
        "repl_restarts": float(repl.restarts), "llm_queries": float(queries["n"]), "trimmed_messages": float(trimmed),
        "context_exhausted": float(context_exhausted), "ignored_files": float(len(ignored)),
    })
    trajectory.metadata["changed_files"] = ",".join(changed)[:500]
    trajectory.metadata["ignored_files"] = ",".join(ignored)[:500]
    trajectory.logs.extend(f"cell {i}: {t['code_blocks'][0]['code'][:200]!r}"
                           for i, t in enumerate(turn_log, 1) if t["code_blocks"])
    attach_turns(trajectory, turn_log)
    return trajectory
