"""One `toy` rollout: a single turn, scored by the share of the target character in the reply."""

from __future__ import annotations

import art

from agent.prompts import TOY_SYSTEM_PROMPT
from envs.toy.reward import target_share
from rollouts.context import RolloutContext
from rollouts.scenario import Scenario


async def rollout(ctx: RolloutContext, scenario: Scenario) -> art.Trajectory:
    messages = [
        {"role": "system", "content": TOY_SYSTEM_PROMPT},
        {"role": "user", "content": scenario.prompt},
    ]
    choice = await ctx.complete(messages, ctx.settings.toy_max_tokens)
    reply = choice.message.content or ""
    reward, breakdown = target_share(reply, scenario.data["target"])
    return art.Trajectory(
        messages_and_choices=[*messages, choice],
        reward=reward,
        metrics={**breakdown, "finished": float(choice.finish_reason == "stop"), "agent_steps": 1.0},
        metadata={"scenario_id": scenario.id, "env": "toy"},
    )
