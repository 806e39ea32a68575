"""One gmsh rollout: the model writes a meshing script, the gmsh service runs it, the reward scores the mesh.

Single turn by default; with `--max-steps K` the service's answer goes back as an observation so the model can
repair its script, and the last run is scored. A reply without code scores the low end and is logged as such.
"""

from __future__ import annotations

import base64
import functools
from pathlib import Path

import art

from agent.code import extract_code
from agent.prompts import GMSH_SYSTEM_PROMPT, gmsh_feedback
from envs.gmsh.client import GmshClient, ServiceUnavailable
from envs.gmsh.reward import LOW_END, gmsh_reward
from envs.gmsh.wire import RunRequest
from rollouts.context import RolloutContext
from rollouts.logs import attach_turns, code_block
from rollouts.scenario import Scenario

SCRIPT_TIMEOUT_S = 30.0
NO_CODE_NUDGE = "No code found. Reply with one ```python block."


@functools.lru_cache(maxsize=256)
def _geometry_b64(path: str) -> str:
    """Geometry travels with each request, so a remote service needs no copy of the task store."""
    return base64.b64encode(Path(path).read_bytes()).decode()


def _summary(stats: dict) -> str:
    if not stats.get("elements_by_dim"):
        return "no mesh"
    groups = ", ".join(f"{g['name'] or '?'}(dim {g['dim']})" for g in stats.get("physical_groups", [])) or "none"
    quality = stats.get("quality", {}).get("min")
    return (f"{stats.get('nodes', 0)} nodes, elements by dimension {stats['elements_by_dim']}, "
            f"min quality {quality if quality is None else round(quality, 3)}, physical groups: {groups}")


async def rollout(ctx: RolloutContext, scenario: Scenario) -> art.Trajectory:
    client: GmshClient = ctx.services["gmsh"]
    geometry_name = "geometry" + Path(scenario.data["geometry_file"]).suffix
    messages: list = [{"role": "system", "content": GMSH_SYSTEM_PROMPT}, {"role": "user", "content": scenario.prompt}]
    trajectory = art.Trajectory(messages_and_choices=messages, reward=LOW_END,
                                metadata={"scenario_id": scenario.id, "env": "gmsh"})
    breakdown: dict[str, float] = {"no_code": 1.0}
    turns = 0
    turn_log: list[dict] = []
    for turns in range(1, ctx.settings.max_steps + 1):  # noqa: B007 - turns is reported below
        sent = trajectory.messages()
        choice = await ctx.complete(sent, ctx.settings.max_tokens_per_turn)
        trajectory.messages_and_choices.append(choice)
        script = extract_code(choice.message.content or "")
        turn = {"prompt": sent, "response": choice.message.content or "",
                "code_blocks": [], "final_answer": None, "iteration_time": 0.0, "observation": None}
        turn_log.append(turn)  # every turn is logged, a reply without code too
        if script is None:
            trajectory.log(f"turn {turns}: reply held no code")
            breakdown = {"no_code": 1.0}
            if turns < ctx.settings.max_steps:
                turn["observation"] = NO_CODE_NUDGE
                trajectory.messages_and_choices.append({"role": "user", "content": NO_CODE_NUDGE})
            continue
        geometry = _geometry_b64(str(Path(scenario.data["task_store"]) / scenario.data["geometry_file"]))
        request = RunRequest(script=script, geometry_b64=geometry, geometry_name=geometry_name,
                             timeout=SCRIPT_TIMEOUT_S)
        try:
            result = (await client.run(request)).model_dump()
        except ServiceUnavailable as exc:  # recorded on the group by the gather; never a crash of the run
            raise RuntimeError(f"gmsh service unavailable: {exc}") from exc
        trajectory.reward, breakdown = gmsh_reward(scenario.data["requirements"], scenario.data["bbox"], result)
        turn |= {"code_blocks": [code_block(script, result["stdout"], result["stderr"],
                                            {"stats": _summary(result["stats"]), "error": repr(result["error"])},
                                            result["elapsed"])],
                 "iteration_time": result["elapsed"]}
        breakdown["no_code"] = 0.0
        trajectory.log(f"turn {turns}: error={result['error']!r} {_summary(result['stats'])}")
        if (result["ok"] and breakdown.get("groups_missing", 1) == 0) or turns == ctx.settings.max_steps:
            break
        tail = (result["stderr"] or result["stdout"])[-1500:]
        turn["observation"] = gmsh_feedback(result["error"], _summary(result["stats"]), tail)
        trajectory.messages_and_choices.append({"role": "user", "content": turn["observation"]})
    trajectory.metrics.update(breakdown | {"agent_steps": float(turns), "finished": 1.0 - breakdown["no_code"]})
    attach_turns(trajectory, turn_log)
    return trajectory


def validation_metrics(groups: list[art.TrajectoryGroup]) -> dict[str, float]:
    """The figures envs/gmsh/REWARD.md lists: success rate (valid mesh), physical-group rate, mean reward, density."""
    trajectories = [t for g in groups for t in g.trajectories]
    if not trajectories:
        return {}
    ratios = sorted(t.metrics["density_ratio"] for t in trajectories if t.metrics.get("mesh_generated"))
    figures = {
        "gmsh/success_rate": sum(bool(t.metrics.get("mesh_generated")) for t in trajectories) / len(trajectories),
        "gmsh/physical_group_rate": sum(t.metrics.get("groups_missing", 1) == 0 for t in trajectories)
        / len(trajectories),
        "gmsh/mean_reward": sum(t.reward for t in trajectories) / len(trajectories),
    }
    if ratios:
        for name, q in (("p10", 0.1), ("p50", 0.5), ("p90", 0.9)):
            figures[f"gmsh/density_ratio_{name}"] = ratios[min(int(q * len(ratios)), len(ratios) - 1)]
    return figures
