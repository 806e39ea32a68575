"""One `openspiel` rollout: a single move scored legal/outcome, or (`--game-mode game`) a whole game.

Move mode: the model sees the task's state and answers one move; the reward is `legal` (instant) or `outcome`
(seeded playouts in the env's process pool). Game mode: a multi-turn agent loop from the task's state to the end
of the game, one model turn per own move; the opponent's moves come back as the next observation. An illegal or
unparsable answer is an observation with a bounded number of retries; past them the game is forfeited (reward 0).
If the turn budget (`--max-steps`, our moves) runs out first, the game is scored by playouts from where it stands.

Every seed here is a function of the task and the position, so the rollouts of a group that play the same
moves meet the same opponent moves and get the same score: reward differences in a group come from the model.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import art
import openai

from agent.budget import approx_tokens
from agent.sent_context import SentConversation
from envs.openspiel.cases import load_game
from envs.openspiel.moves import SYSTEM_PROMPT, ParsedMove, describe_state, legal_actions, parse_move, retry_prompt
from envs.openspiel.options import GameOptions
from envs.openspiel.playouts import PlayoutPool
from envs.openspiel.reward import choose, game_reward, legal_reward, mapped_return, outcome_reward
from envs.openspiel.tasks import replay
from envs.options import options_for
from rollouts.context import RolloutContext
from rollouts.logs import attach_turns, code_block
from rollouts.scenario import Scenario


@dataclass
class GameRuntime:
    """What every openspiel rollout of a run shares: its options and the playout pool."""

    options: GameOptions
    pool: PlayoutPool


def options_of(cfg: Any) -> GameOptions:
    return options_for(cfg, GameOptions)


@contextlib.asynccontextmanager
async def services(cfg: Any) -> AsyncIterator[dict[str, Any]]:
    options = options_of(cfg)
    pool = PlayoutPool(options.playout_workers)
    try:
        if options.reward_mode == "outcome" or options.opponent == "mcts":
            await pool.start()
        yield {"openspiel": GameRuntime(options, pool)}
    finally:
        pool.close()


def _position_seed(case: str, history: list[int]) -> int:
    """A stable seed for a position (crc32, not Python's salted hash)."""
    return zlib.crc32(f"{case}|{','.join(map(str, history))}".encode())


def _turn(prompt: list[dict[str, Any]], reply: str, parsed: ParsedMove, observation: str, seconds: float
          ) -> dict[str, Any]:
    """One model turn in the RLM visualizer's shape: the answer as the 'code', what it did as the result."""
    return {"prompt": prompt, "response": reply, "iteration_time": seconds, "observation": observation,
            "final_answer": parsed.text if parsed.legal else None,
            "code_blocks": [code_block(f"move: {parsed.text}", observation, "",
                                       {"status": parsed.status, "action": repr(parsed.action)}, seconds)]}


async def rollout(ctx: RolloutContext, scenario: Scenario) -> art.Trajectory:
    runtime: GameRuntime = ctx.services["openspiel"]
    if runtime.options.game_mode == "game":
        return await _game(ctx, scenario, runtime)
    return await _move(ctx, scenario, runtime)


async def _move(ctx: RolloutContext, scenario: Scenario, runtime: GameRuntime) -> art.Trajectory:
    case, history, seat = scenario.data["case"], list(scenario.data["history"]), int(scenario.data["player"])
    legal = legal_actions(replay(case, history))
    messages: list = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": scenario.prompt}]
    started = time.monotonic()
    choice = await ctx.complete(messages, ctx.settings.max_tokens_per_turn)
    reply = choice.message.content or ""
    parsed = parse_move(reply, legal)
    if runtime.options.reward_mode == "legal" or not parsed.legal:
        reward, breakdown = (legal_reward(parsed.status) if runtime.options.reward_mode == "legal"
                             else outcome_reward(parsed.status, []))
    else:
        values = await runtime.pool.playouts(case, [*history, int(parsed.action or 0)], seat, runtime.options,
                                             int(scenario.data["seed"]) * 1000)
        reward, breakdown = outcome_reward(parsed.status, values)
    observation = f"{parsed.status}: {legal[parsed.action]}" if parsed.legal else parsed.status
    trajectory = art.Trajectory(messages_and_choices=[*messages, choice], reward=reward,
                                metrics=breakdown | {"finished": breakdown["parsed"], "agent_steps": 1.0},
                                metadata={"scenario_id": scenario.id, "env": "openspiel", "case": case})
    trajectory.log(f"{case}: answer {parsed.text!r} -> {observation}, reward {reward:.3f}")
    attach_turns(trajectory, [_turn(messages, reply, parsed, observation, time.monotonic() - started)])
    return trajectory


async def _opponents(state: Any, case: str, seat: int, runtime: GameRuntime) -> list[str]:
    """Plays the other seats (and chance) until it is our turn or the game ends; returns their moves as text."""
    moves = []
    options = runtime.options
    while not state.is_terminal() and state.current_player() != seat:
        history = [int(a) for a in state.history()]
        seed = _position_seed(case, history)
        player = state.current_player()
        if options.opponent == "mcts" and not state.is_chance_node():
            action = await runtime.pool.move(case, history, "mcts", seed, options.mcts_simulations)
        else:  # a random move or a chance outcome is microseconds: no need to leave the loop
            action = choose(case, state, "random", seed, options.mcts_simulations)
        if player >= 0:
            moves.append(f"player {player} played {state.action_to_string(player, action)}")
        state.apply_action(action)
    return moves


async def _game(ctx: RolloutContext, scenario: Scenario, runtime: GameRuntime) -> art.Trajectory:
    case, seat, options = scenario.data["case"], int(scenario.data["player"]), runtime.options
    game, state = load_game(case), replay(case, list(scenario.data["history"]))
    trajectory = art.Trajectory(messages_and_choices=[{"role": "system", "content": SYSTEM_PROMPT}], reward=0.0,
                                metadata={"scenario_id": scenario.id, "env": "openspiel", "case": case})
    conversation = SentConversation(trajectory)  # each reply trained in the (trimmed) context it was sampled in
    turns = answers_legal = illegal_total = moves = trimmed = 0
    forfeit = truncated = context_exhausted = False
    turn_log: list[dict[str, Any]] = []
    observation = scenario.prompt
    while True:
        news = await _opponents(state, case, seat, runtime)
        if state.is_terminal():
            if turn_log:  # the log's last turn shows how the game ended
                turn_log[-1]["observation"] = "; ".join([*news, f"game over, returns {state.returns()}"])
            break
        if moves:
            observation = ("; ".join(news) + ".\n" if news else "") + describe_state(case, game, state)
            turn_log[-1]["observation"] = observation
        if moves >= ctx.settings.max_steps:
            truncated = True
            break
        conversation.append({"role": "user", "content": observation})
        legal = legal_actions(state)
        for _attempt in range(options.max_illegal_retries + 1):
            budget = ctx.settings.max_context_tokens - ctx.settings.max_tokens_per_turn
            messages, dropped = conversation.prompt(budget, ctx.count_tokens or approx_tokens)
            trimmed = max(trimmed, dropped)
            started = time.monotonic()
            try:
                choice = await ctx.complete(messages, ctx.settings.max_tokens_per_turn)
            except openai.BadRequestError as exc:  # the context is full: the game ends here, unfinished
                trajectory.log(f"turn {turns + 1}: context exhausted ({exc.message[:200]})")
                context_exhausted = True
                break
            turns += 1
            conversation.append(choice)
            reply = choice.message.content or ""
            parsed = parse_move(reply, legal)
            if parsed.legal:
                answers_legal += 1
                turn_log.append(_turn(messages, reply, parsed,
                                      f"played {legal[parsed.action or 0]}", time.monotonic() - started))
                break
            illegal_total += 1
            note = retry_prompt(parsed, legal)
            turn_log.append(_turn(messages, reply, parsed, note, time.monotonic() - started))
            conversation.append({"role": "user", "content": note})
        else:
            forfeit = True
        if forfeit or context_exhausted:
            break
        state.apply_action(int(parsed.action or 0))
        moves += 1
    if state.is_terminal():
        value: float | None = mapped_return(case, state.returns(), seat)
    elif truncated or context_exhausted:
        history = [int(a) for a in state.history()]
        value = statistics.fmean(await runtime.pool.playouts(case, history, seat, options,
                                                            _position_seed(case, history)))
    else:
        value = None
    trajectory.reward, breakdown = game_reward(value, forfeit)
    trajectory.metrics.update(breakdown | {
        "legal": answers_legal / turns if turns else 0.0, "parsed": 1.0 if turns else 0.0,
        "illegal_answers": float(illegal_total), "moves": float(moves), "agent_steps": float(turns),
        "finished": float(state.is_terminal()), "truncated": float(truncated), "trimmed_messages": float(trimmed),
        "context_exhausted": float(context_exhausted)})
    ending = "forfeit" if forfeit else "end" if state.is_terminal() else "cut"
    trajectory.log(f"{case}: {moves} move(s), {illegal_total} illegal answer(s), {ending}, "
                   f"reward {trajectory.reward:.3f}")
    attach_turns(trajectory, turn_log)
    return trajectory


def game_metrics(groups: list[art.TrajectoryGroup]) -> dict[str, float]:
    """The env's own figures: legal-move and parse rates; with outcomes, the mean outcome and win rate."""
    trajectories = [t for g in groups for t in g.trajectories]
    figures: dict[str, float] = {}
    for key, name in (("legal", "legal_rate"), ("parsed", "parsed_rate"), ("outcome", "outcome_mean"),
                      ("won", "win_rate"), ("forfeit", "forfeit_rate"), ("illegal_answers", "illegal_answers")):
        values = [float(t.metrics[key]) for t in trajectories if key in t.metrics]
        if values:
            figures[f"openspiel/{name}"] = statistics.fmean(values)
    return figures


def load_scenarios(cfg: Any, split: str = "train") -> list[Scenario]:
    from envs.openspiel.tasks import load_tasks

    scenarios = load_tasks(options_of(cfg), cfg.seed, split)
    return scenarios[: cfg.dataset_size] if cfg.dataset_size and split == "train" else scenarios


def write_demos(cfg: Any, out: Path) -> None:
    from envs.openspiel.export import write_demos as write

    write(out, options_of(cfg), cfg.seed, "train")
